"""Small exact tests of the training parts that need no run: EMA warm-up, the time-budget fit,
config overrides, per-stage warm-ups."""

import copy

import pytest
import torch
from torch import nn

from instruct_ipt.train import ConfigError, config_from_dict, plan_stages
from instruct_ipt.train.budget import (
    MIN_STAGE_STEPS,
    PLAN_SHARE,
    BudgetError,
    Overheads,
    StageCost,
    fit_schedule,
    scaled_warmup,
    stage_seconds,
)
from instruct_ipt.train.config import apply_overrides
from instruct_ipt.train.ema import EMA, warmup_decay
from instruct_ipt.train.trainer import with_schedule


def test_ema_decay_warms_up_then_holds():
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 90) == pytest.approx(91 / 100)
    assert warmup_decay(0.999, 8989) < 0.999 and warmup_decay(0.999, 8990) == 0.999
    assert warmup_decay(0.5, 0) == 0.1 and warmup_decay(0.5, 10) == 0.5


def test_ema_update_is_the_warmed_up_average():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(net, 0.999)
    start = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(8, 3))  # moves the batch-norm buffers too
    ema.update()
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():  # decay 0.1 at the first update: 0.1 * old + 0.9 * new
            torch.testing.assert_close(v, 0.1 * start[k] + 0.9 * net.state_dict()[k])
        else:
            assert torch.equal(v, net.state_dict()[k]), k  # counters are copied
    ema.update()  # second update: decay 2/11
    w = ema.module[0].weight
    expected = 2 / 11 * (0.1 * start["0.weight"] + 0.9 * net[0].weight) + 9 / 11 * net[0].weight
    torch.testing.assert_close(w, expected.detach())
    again = EMA(net, 0.999)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 2 and torch.equal(again.module[0].weight, w)


def test_ema_reads_older_averaged_model_checkpoints():
    from torch.optim.swa_utils import AveragedModel

    net = nn.Linear(2, 2)
    old = AveragedModel(net)
    old.update_parameters(net)
    ema = EMA(nn.Linear(2, 2), 0.99)
    ema.load_state_dict(old.state_dict())
    assert ema.updates == 1 and torch.equal(ema.module.weight, net.weight)


COSTS = [StageCost(step=0.5, start=3.0), StageCost(step=0.2, start=1.0)]
OVER = Overheads(validation=2.0, checkpoint=0.5, final=4.0)


def predicted(lengths, val_every=100, ckpt_every=50):
    return sum(stage_seconds(n, c, OVER, val_every, ckpt_every) for n, c in zip(lengths, COSTS)) + OVER.final


def test_budget_fits_the_longest_schedule_that_fits():
    seconds = 600.0
    scale, lengths = fit_schedule([3000, 1000], COSTS, OVER, seconds, 100, 50)
    assert lengths == [round(scale * 3000), round(scale * 1000)]
    assert predicted(lengths) <= PLAN_SHARE * seconds
    longer = [round(scale * 1.01 * 3000), round(scale * 1.01 * 1000)]
    assert predicted(longer) > PLAN_SHARE * seconds  # 1 % more would not fit
    # the stage time counts steps, start-up, validations (every 100 and at the end) and checkpoints
    assert stage_seconds(250, COSTS[0], OVER, 100, 50) == 3.0 + 250 * 0.5 + 3 * 2.0 + 6 * 0.5


def test_budget_scales_up_as_well_as_down():
    _, short = fit_schedule([30, 10], COSTS, OVER, 10_000.0, None, 10**9)
    assert short[0] > 30 and short[0] / short[1] == pytest.approx(3, rel=0.01)


def test_budget_too_small_is_refused_with_what_it_needs():
    need = predicted([MIN_STAGE_STEPS, MIN_STAGE_STEPS]) / PLAN_SHARE
    with pytest.raises(BudgetError, match=r"too small for this run: its 2 stage\(s\) need at least"):
        fit_schedule([3000, 1000], COSTS, OVER, need - 1.0, 100, 50)
    fit_schedule([3000, 1000], COSTS, OVER, need + 1.0, 100, 50)
    # time already spent (measuring) counts in the budget named and in what the message asks for
    with pytest.raises(BudgetError) as e:
        fit_schedule([3000, 1000], COSTS, OVER, need - 1.0, 100, 50, spent=30.0)
    assert (f"a budget of {(need + 29.0) / 60:.2f} min is too small" in str(e.value)
            and f"need at least {(need + 30.0) / 60:.2f} min (0.50 min of it to set up and measure this machine first)" in str(e.value))


def test_warmup_scales_with_the_stage():
    assert scaled_warmup(200, 3000, 300) == 20
    assert scaled_warmup(200, 3000, 10) == 1 and scaled_warmup(0, 3000, 300) == 0
    assert scaled_warmup(100, 120, 12) == 10 and scaled_warmup(5, 5, 2) == 1


BASE = {"tasks": {"denoise": {}, "deblur": {}, "dehaze": {}}, "optim": {"lr": 1e-3, "warmup": 50},
        "stages": [{"mode": "sync", "tasks": ["denoise", "deblur"], "iterations": 300, "warmup": 20},
                   {"mode": "bias-only", "tasks": ["dehaze"], "iterations": 100, "lr": 2e-3}],
        "model": {"init": "somewhere"}}


def test_stage_warmups_and_explicit_schedules():
    cfg = config_from_dict(BASE)
    assert [(s.iterations, s.warmup, s.lr) for s in plan_stages(cfg)] == [(300, 20, 1e-3), (100, 50, 2e-3)]
    scaled = with_schedule(cfg, [(30, 2), (10, 5)])
    assert [(s.iterations, s.warmup, s.lr, s.tasks) for s in plan_stages(scaled)] == [
        (30, 2, 1e-3, ["denoise", "deblur"]), (10, 5, 2e-3, ["dehaze"])]
    two = with_schedule(config_from_dict({"mode": "two-stage", "tasks": {"denoise": {}}, "iterations": 10}), [(4, 1), (6, 1)])
    assert [(s.mode, s.iterations) for s in plan_stages(two)] == [("plain", 4), ("bias-only", 6)]
    with pytest.raises(ConfigError, match="schedule has 1 stages, the config 2"):
        with_schedule(cfg, [(1, 0)])
    with pytest.raises(ConfigError, match=r"stages\[0\].warmup: must be >= 0"):
        config_from_dict({**BASE, "stages": [{"mode": "sync", "warmup": -1}]})


def test_overrides():
    data = apply_overrides(BASE, ["data.train=[a, b]", "optim.lr=1e-4", "grid_spans=null", "ema=0.99"])
    assert data["data"]["train"] == ["a", "b"] and data["ema"] == 0.99 and data["grid_spans"] is None
    assert BASE["optim"]["lr"] == 1e-3  # the input is not changed
    cfg = config_from_dict(data)
    assert cfg.data.train == ["a", "b"] and cfg.optim.lr == 1e-4
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(BASE, ["optim.lr"])
    with pytest.raises(ConfigError, match="optim.lr is not a mapping"):
        apply_overrides(BASE, ["optim.lr.x=1"])
    with pytest.raises(ConfigError, match="grid_spans is null in the config; set it whole"):
        apply_overrides({**BASE, "grid_spans": None}, ["grid_spans.photos=[a]"])
    assert apply_overrides(BASE, ["grid_spans.photos=[a]"])["grid_spans"] == {"photos": ["a"]}  # absent: made
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        config_from_dict(apply_overrides(BASE, ["optim.lrr=1"]))
