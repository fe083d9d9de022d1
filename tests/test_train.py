import json
import os
import random
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from PIL import Image
from skimage import data

from instruct_ipt import InstructIPT
from instruct_ipt.cli import main
from instruct_ipt.data.validation import ValidationSet
from instruct_ipt.train import ConfigError, Trainer, TrainingError, config_from_dict, load_config, plan_stages
from instruct_ipt.train import trainer as trainer_module
from instruct_ipt.train.budget import scaled_warmup
from instruct_ipt.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "photos").mkdir()
    (root / "val").mkdir()
    Image.fromarray(data.astronaut()[:96, :96]).save(root / "photos/a.png")
    Image.fromarray(data.coffee()[:80, :120]).save(root / "photos/b.png")
    Image.fromarray(data.chelsea()[:64, :64]).save(root / "photos/c.png")
    Image.fromarray(data.rocket()[:48, :64]).save(root / "val/r.png")
    return root


def make_cfg(folders, out, **over):
    d = {
        "mode": "sync",
        "tasks": {"denoise": {"degradation": {"sigma": [10, 40]}}, "deblur": {}, "dehaze": {"weight": 2}},
        "model": {"size": "tiny", "rank": 2},
        "data": {"train": [str(folders / "photos")], "val": [str(folders / "val")], "val_crop": 32,
                 "patch_size": 32, "batch_size": 2},
        "optim": {"lr": 2e-3, "warmup": 1},
        "iterations": 4,
        "log_every": 1,
        "val_every": 2,
        "ckpt_every": 2,
        "out": str(out),
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return config_from_dict(d)


def run(cfg, **kw):
    return Trainer(cfg, progress=False, **kw).run()


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_config_errors(folders, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        make_cfg(folders, tmp_path, optim={"lrr": 1})
    with pytest.raises(ConfigError, match="bias-only needs model.init"):
        make_cfg(folders, tmp_path, mode="bias-only")
    # a degradation parameter its operator does not have: named as a config key, not a TypeError mid-run
    with pytest.raises(ConfigError, match=r"unknown config key 'tasks.denoise.degradation.sigmaa' \(known here: clip, "
                                          r"poisson_peak, sigma\)"):
        make_cfg(folders, tmp_path, tasks={"denoise": {"degradation": {"sigmaa": 5}}, "deblur": {}})
    with pytest.raises(ConfigError, match="tasks.deblur.degradation: MotionBlur.kernel_size: an odd number >= 3, got 4"):
        make_cfg(folders, tmp_path, tasks={"denoise": {}, "deblur": {"degradation": {"kernel_size": 4}}})
    # a value out of its operator's range: refused before any step (the device path would flip the noise's sign)
    with pytest.raises(ConfigError, match=r"tasks.denoise.degradation: Noise.sigma: must be >= 0, got \[-10, 50\]"):
        make_cfg(folders, tmp_path, tasks={"denoise": {"degradation": {"sigma": [-10, 50]}}, "deblur": {}})
    # YAML 1.1 reads 1e-3 (no dot) as a string: a number for the operator, as for the config's own numbers
    cfg = make_cfg(folders, tmp_path, tasks={"denoise": {"degradation": {"sigma": ["1e1", 30]}},
                                              "deblur": {"degradation": {"exposure": "5e-1"}}})
    assert cfg.tasks["denoise"].degradation == {"sigma": [10.0, 30]} and cfg.tasks["deblur"].degradation == {"exposure": 0.5}
    with pytest.raises(ConfigError, match="tasks.deblur.degradation: MotionBlur.exposure: a number or a .* got 'long'"):
        make_cfg(folders, tmp_path, tasks={"denoise": {}, "deblur": {"degradation": {"exposure": "long"}}})
    with pytest.raises(ConfigError, match="train_tasks: 'derain' is not in tasks"):
        make_cfg(folders, tmp_path, train_tasks=["derain"])
    with pytest.raises(ConfigError, match="mode: 'fast' is not one of"):
        make_cfg(folders, tmp_path, mode="fast")
    with pytest.raises(ConfigError, match="batch_size 4 is larger than the data: the 3 clean images hold only 3 "):
        run(make_cfg(folders, tmp_path, data={"batch_size": 4, "patch_size": 64}))
    with pytest.raises(FileNotFoundError, match="data.train: .*nowhere: no such folder"):
        run(make_cfg(folders, tmp_path, data={"train": [str(folders / "nowhere")]}))
    with pytest.raises(FileNotFoundError, match="data.val: .*nowhere: no such folder"):  # before any step: no log of one
        run(make_cfg(folders, tmp_path / "v", data={"val": [str(folders / "nowhere")]}))
    assert not (tmp_path / "v" / "checkpoints").exists()
    path = tmp_path / "c.yaml"
    path.write_text("tasks: {denoise: {}}\noptim: {lr: 1e-3}\n")
    assert load_config(path).optim.lr == 1e-3
    path.write_bytes("tasks: {denoise: {}}  # caf\u00e9\n".encode("latin-1"))  # saved in another encoding
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML \('utf-8' codec"):
        load_config(path)


def test_stage_plans(folders, tmp_path):
    two = plan_stages(make_cfg(folders, tmp_path, mode="two-stage", iterations=10, two_stage_split=0.3))
    assert [(s.mode, s.iterations) for s in two] == [("plain", 3), ("bias-only", 7)]
    staged = plan_stages(make_cfg(folders, tmp_path, stages=[
        {"name": "elementary", "mode": "sync", "tasks": ["denoise", "deblur"]},
        {"name": "haze", "mode": "bias-only", "tasks": ["dehaze"], "iterations": 2, "lr": 1e-3},
    ]))
    assert [(s.name, s.mode, s.tasks, s.iterations, s.lr) for s in staged] == [
        ("elementary", "sync", ["denoise", "deblur"], 4, 2e-3), ("haze", "bias-only", ["dehaze"], 2, 1e-3)]
    grey = make_cfg(folders, tmp_path, stages=[
        {"name": "colour", "mode": "sync", "tasks": ["denoise"]},
        {"name": "grey", "mode": "sync", "tasks": ["denoise"], "grey_share": 0.3},
    ])
    grey.data.grey_share = 0.05
    assert [s.grey_share for s in plan_stages(grey)] == [0.05, 0.3]  # unset: the data section's share
    with pytest.raises(ConfigError, match=r"stages\[0\].grey_share: a share in \[0, 1\], got 1.5"):
        make_cfg(folders, tmp_path, stages=[{"name": "x", "mode": "sync", "tasks": ["denoise"], "grey_share": 1.5}])


def test_logged_loss_is_the_mean_since_the_previous_entry(folders, tmp_path):
    run(make_cfg(folders, tmp_path / "a", val_every=100))  # logs every step
    run(make_cfg(folders, tmp_path / "b", val_every=100, log_every=2))
    logs = [(tmp_path / run_dir / "log.jsonl").read_text().splitlines() for run_dir in ("a", "b")]
    losses = [[json.loads(x)["loss"] for x in lines if '"loss"' in x] for lines in logs]
    assert len(losses[0]) == 4 and len(losses[1]) == 2
    assert losses[1] == pytest.approx([(losses[0][0] + losses[0][1]) / 2, (losses[0][2] + losses[0][3]) / 2], abs=2e-6)


def test_sync_trains_backbone_and_task_biases_and_logs(folders, tmp_path):
    torch.manual_seed(0)
    init = state(InstructIPT("tiny", tasks=["denoise", "deblur", "dehaze"], modulation=make_mod()))
    model = run(make_cfg(folders, tmp_path))
    final = model.state_dict()
    assert model.tasks == ["denoise", "deblur", "dehaze"]
    assert not torch.equal(final["backbone.output.base_layer.weight"], init["backbone.output.base_layer.weight"])
    b1 = final["backbone.output.task_B1"]
    assert all(b1[t].abs().sum() > 0 for t in range(3))  # every task's bias left zero
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert [x["step"] for x in steps] == [1, 2, 3, 4] and all(x["samples_per_s"] > 0 for x in steps)
    vals = [x for x in lines if "val_psnr" in x]
    assert [x["step"] for x in vals] == [2, 4] and set(vals[0]["val_psnr"]) == {"denoise", "deblur", "dehaze"}
    saved = InstructIPT.from_pretrained(tmp_path / "model")
    assert all(torch.equal(saved.state_dict()[k], v) for k, v in final.items())


def make_mod():
    from instruct_ipt import ModulationConfig

    return ModulationConfig(rank=2)


def test_plain_and_single(folders, tmp_path):
    plain = run(make_cfg(folders, tmp_path / "p", mode="plain"))
    assert plain.modulation is None and plain.tasks == ["denoise", "deblur", "dehaze"]
    single = run(make_cfg(folders, tmp_path / "s", mode="single", train_tasks=["deblur"]))
    assert single.modulation is None and single.tasks == ["deblur"]


def test_two_stage_freezes_the_plain_backbone(folders, tmp_path):
    model = run(make_cfg(folders, tmp_path, mode="two-stage"))
    plain = InstructIPT.from_pretrained(tmp_path / "stages/0-plain")
    assert plain.modulation is None and model.modulated
    ours, theirs = model.backbone_state_dict(), plain.backbone_state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert model.state_dict()["backbone.output.task_B1"].abs().sum() > 0


def test_bias_only_adds_a_task_and_changes_nothing_else(folders, tmp_path):
    base = run(make_cfg(folders, tmp_path / "base", train_tasks=["denoise", "deblur"]))
    assert base.tasks == ["denoise", "deblur"]
    before = state(base)
    cfg = make_cfg(folders, tmp_path / "extend", mode="bias-only", model={"init": str(tmp_path / "base/model")},
                   optim={"weight_decay": 0.1}, ema=0.5)
    model = run(cfg)
    assert model.tasks == ["denoise", "deblur", "dehaze"]
    after = model.state_dict()
    for k, v in before.items():
        if "task_B" in k:
            assert torch.equal(after[k][:2], v), k
        else:
            assert torch.equal(after[k], v), k
    assert after["backbone.output.task_B1"][2].abs().sum() > 0
    assert InstructIPT.from_pretrained(tmp_path / "extend/model").tasks == ["denoise", "deblur", "dehaze"]


def test_paper_schedule_as_stages(folders, tmp_path):
    cfg = make_cfg(folders, tmp_path, stages=[
        {"name": "elementary", "mode": "sync", "tasks": ["denoise", "deblur"]},
        {"name": "haze", "mode": "bias-only", "tasks": ["dehaze"], "iterations": 2},
    ])
    model = run(cfg)
    assert model.tasks == ["denoise", "deblur", "dehaze"]
    stage0 = InstructIPT.from_pretrained(tmp_path / "stages/0-elementary")
    assert stage0.tasks == ["denoise", "deblur"]
    assert torch.equal(stage0.backbone_state_dict()["output.weight"], model.backbone_state_dict()["output.weight"])


@pytest.mark.parametrize("mode,stop,synthesis", [("sync", 3, "workers"), ("two-stage", 3, "workers"), ("sync", 3, "device")])
def test_killed_and_resumed_run_ends_with_the_same_weights(folders, tmp_path, mode, stop, synthesis):
    over = {"mode": mode, "ema": 0.8, "iterations": 5 if mode == "sync" else 6, "data": {"synthesis": synthesis}}
    full = run(make_cfg(folders, tmp_path / "full", **over))
    cfg = make_cfg(folders, tmp_path / "killed", **over)
    assert Trainer(cfg, progress=False).run(stop_after=stop) is None  # "killed" after `stop` steps
    with pytest.raises(ConfigError, match="already holds a run"):
        run(cfg)
    resumed = run(cfg, resume=True)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_different_config(folders, tmp_path):
    cfg = make_cfg(folders, tmp_path)
    Trainer(cfg, progress=False).run(stop_after=2)
    changed = make_cfg(folders, tmp_path, optim={"lr": 1e-3}, log_every=5)
    with pytest.raises(ConfigError, match=r"does not match the checkpoint: optim.lr: 0.002 in the checkpoint, 0.001 now"):
        run(changed, resume=True)


class _Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint could do with any callable."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(folders, tmp_path, capsys):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "run/checkpoints/last.pt"
    crafted.parent.mkdir(parents=True)
    torch.save({"format": "instruct-ipt-train", "stage": 0, "step": 2, "x": _Payload(marker)}, crafted)
    with pytest.raises(ValueError, match=r"last.pt is not a safe instruct-ipt training checkpoint \(.*\); refusing") as e:
        load_checkpoint(crafted)
    assert "\n" not in str(e.value) and not marker.exists()
    # through the command line: one line, exit 2, nothing run, nothing trained
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(make_cfg(folders, tmp_path / "run").to_dict()))
    assert main(["train", str(path), "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a safe instruct-ipt training checkpoint" in err[0] and str(crafted) in err[0]
    assert not marker.exists() and not (tmp_path / "run/model").exists()
    # the payload is real: the unsafe load the checkpoint code used to do runs it
    torch.load(crafted, weights_only=False)
    assert marker.exists()
    for name, content in (("garbage.pt", b"not a checkpoint"), ("hello.pt", b"hello\n")):  # ("h": torch's older reader)
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name} is not a safe instruct-ipt training checkpoint"):
            load_checkpoint(tmp_path / name)
    torch.save({"format": "instruct-ipt-train", "stage": 0}, tmp_path / "partial.pt")  # the tag, not the rest
    with pytest.raises(ValueError, match=r"partial\.pt is an incomplete training checkpoint \(no config, step, model_config, model\)"):
        load_checkpoint(tmp_path / "partial.pt")


def test_rng_state_round_trips_through_a_checkpoint_in_both_forms(tmp_path):
    def draws():
        return [random.random(), *np.random.rand(3), *np.random.randn(3), *torch.rand(3).tolist()]

    np.random.seed(7)
    np.random.randn()  # leaves a cached gaussian (has_gauss=1): part of the state
    legacy = np.random.get_state()
    save_checkpoint(tmp_path / "new.pt", {"rng": rng_state()})
    expected = draws()
    set_rng_state(load_checkpoint(tmp_path / "new.pt", required=("rng",))["rng"])
    assert draws() == expected
    np.random.set_state(legacy)
    old = rng_state()
    old["numpy"] = np.random.get_state()
    torch.save({"format": "instruct-ipt-train", "rng": old}, tmp_path / "old.pt")
    expected = draws()
    set_rng_state(load_checkpoint(tmp_path / "old.pt", required=("rng",))["rng"])
    assert draws() == expected


def test_a_checkpoint_from_before_the_tensor_only_rng_state_still_resumes_exactly(folders, tmp_path):
    """Checkpoints of runs started before the change hold ``np.random.get_state()`` (an ndarray)."""
    over = {"ema": 0.8, "iterations": 5}
    full = run(make_cfg(folders, tmp_path / "full", **over))
    cfg = make_cfg(folders, tmp_path / "killed", **over)
    assert Trainer(cfg, progress=False).run(stop_after=3) is None
    ckpt = tmp_path / "killed/checkpoints/last.pt"
    torch.load(ckpt, weights_only=True)  # a new checkpoint needs nothing beyond torch's own allowlist
    state = load_checkpoint(ckpt)
    new = state["rng"]["numpy"]
    state["rng"]["numpy"] = (new["bit_generator"], new["key"].numpy().astype(np.uint32), new["pos"],
                             new["has_gauss"], new["gauss"])
    torch.save(state, ckpt)  # as the trainer wrote it before
    with pytest.raises(Exception, match="numpy"):
        torch.load(ckpt, weights_only=True)
    assert isinstance(load_checkpoint(ckpt)["rng"]["numpy"][1], np.ndarray)
    resumed = run(cfg, resume=True)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_from_before_adamw_was_fused_on_the_cpu_resumes_fused_and_exactly(folders, tmp_path):
    """Its optimiser state says ``fused=None``, which loading would otherwise keep: the rest of the run
    would take AdamW's per-parameter loop, whose rounding differs from the uninterrupted run's."""
    full = run(make_cfg(folders, tmp_path / "full", iterations=5))
    cfg = make_cfg(folders, tmp_path / "killed", iterations=5)
    assert Trainer(cfg, progress=False).run(stop_after=3) is None
    ckpt = tmp_path / "killed/checkpoints/last.pt"
    state = load_checkpoint(ckpt)
    assert all(g["fused"] for g in state["optimizer"]["param_groups"])
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = None  # as the trainer wrote it before
    torch.save(state, ckpt)
    resumed = run(cfg, resume=True)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stages_not_yet_started_may_change_on_resume(folders, tmp_path):
    def stages(n):
        return [{"name": "elementary", "mode": "sync", "tasks": ["denoise", "deblur"], "iterations": 3},
                {"name": "haze", "mode": "bias-only", "tasks": ["dehaze"], "iterations": n}]

    straight = run(make_cfg(folders, tmp_path / "straight", stages=stages(3)))
    cfg = make_cfg(folders, tmp_path / "cut", stages=stages(5))
    assert Trainer(cfg, progress=False).run(stop_after=5) is None  # checkpoint at step 2 of the second stage
    with pytest.raises(ConfigError, match=r"stages\[1\].iterations: 5 in the checkpoint, 3 now"):
        run(make_cfg(folders, tmp_path / "cut", stages=stages(3)), resume=True)

    cfg = make_cfg(folders, tmp_path / "boundary", stages=stages(5))
    assert Trainer(cfg, progress=False).run(stop_after=3) is None  # the first stage just finished
    changed_first = stages(3)
    changed_first[0]["iterations"] = 4
    with pytest.raises(ConfigError, match=r"stages\[0\].iterations"):
        run(make_cfg(folders, tmp_path / "boundary", stages=changed_first), resume=True)
    resumed = run(make_cfg(folders, tmp_path / "boundary", stages=stages(3)), resume=True)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def nan_at(monkeypatch, call: int) -> dict:
    """Make the loss NaN at the ``call``-th step; returns the call counter."""
    real = trainer_module.compute_loss
    calls = {"n": 0}

    def flaky(out, target, kind):
        calls["n"] += 1
        loss = real(out, target, kind)
        return loss * float("nan") if calls["n"] == call else loss

    monkeypatch.setattr(trainer_module, "compute_loss", flaky)
    return calls


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(folders, tmp_path, monkeypatch):
    nan_at(monkeypatch, 3)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3 of stage 0 .*last.pt"):
        run(make_cfg(folders, tmp_path))
    ckpt = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert ckpt["step"] == 2


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_a_non_finite_gradient_under_a_finite_loss_stops_before_its_weights_are_saved(folders, tmp_path, monkeypatch,
                                                                                     grad_clip):
    # 0 * sqrt(0 * sum): the loss stays finite, its gradient is 0 * inf = NaN in every weight the step updates
    real = trainer_module.compute_loss
    calls = {"n": 0}

    def bad_gradient(out, target, kind):
        calls["n"] += 1
        loss = real(out, target, kind)
        return loss + 0 * torch.sqrt(0 * out.sum()) if calls["n"] == 4 else loss

    monkeypatch.setattr(trainer_module, "compute_loss", bad_gradient)
    with pytest.raises(TrainingError, match=r"the gradient became non-finite \(loss [0-9.e-]+\) at step 4 of stage 0 .*last.pt"):
        run(make_cfg(folders, tmp_path, ckpt_every=2, optim={"grad_clip": grad_clip}))
    ckpt = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert ckpt["step"] == 2 and all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_nan_between_checks_is_caught_before_the_next_checkpoint(folders, tmp_path, monkeypatch):
    """The loss is checked only when a log line, validation or checkpoint is due (no per-step sync):
    a NaN at step 6 is reported as step 6 at the step-8 checkpoint, which is not written."""
    calls = nan_at(monkeypatch, 6)
    with pytest.raises(TrainingError, match=r"loss became nan at step 6 of stage 0"):
        run(make_cfg(folders, tmp_path, iterations=12, log_every=10, val_every=100, ckpt_every=4))
    assert calls["n"] == 8
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["step"] == 4


def test_a_failing_compile_falls_back_to_eager(folders, tmp_path, monkeypatch):
    class Broken(torch.nn.Module):
        def __init__(self, net, mode=None):
            super().__init__()
            self.net = net

        def forward(self, *args):
            raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", Broken)
    with pytest.warns(UserWarning, match=r"torch.compile\(mode='default'\) failed \(RuntimeError: no compiler here\)"):
        model = run(make_cfg(folders, tmp_path / "c", compile="default", iterations=3, log_every=1))
    eager = run(make_cfg(folders, tmp_path / "e", iterations=3, log_every=1))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), eager.state_dict().values()))


def test_cli_train(folders, tmp_path, capsys):
    cfg = make_cfg(folders, tmp_path / "run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["train", str(path), "--no-progress"]) == 0
    assert "validation PSNR (dB)" in capsys.readouterr().out
    assert main(["train", str(path), "--no-progress", "--resume"]) == 0  # finished: nothing left to do
    path.write_text("tasks: {denoise: {}}\nmodel: {sise: tiny}\n")
    assert main(["train", str(path)]) == 2
    assert "unknown config key 'model.sise'" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg_dict, out_file):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.manual_seed(0)
    model = Trainer(config_from_dict(cfg_dict), progress=False, device="cpu").run()
    torch.save(model.state_dict(), f"{out_file}.{rank}")


def test_ddp_two_processes_match_one_process(folders, tmp_path):
    """With degradations made on the device: each sample's noise is seeded by the sample, not the rank."""
    torch.set_num_threads(1)
    cfg = make_cfg(folders, tmp_path / "ddp", iterations=3, data={"synthesis": "device"})
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path / "w")), nprocs=2, join=True)
    s0, s1 = torch.load(f"{tmp_path / 'w'}.0"), torch.load(f"{tmp_path / 'w'}.1")
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    torch.manual_seed(0)
    single = run(make_cfg(folders, tmp_path / "one", iterations=3, data={"synthesis": "device"})).state_dict()
    for k in s0:  # same global batches, gradients averaged over ranks: the same training
        torch.testing.assert_close(s0[k], single[k], rtol=1e-3, atol=1e-4)
    logs = [json.loads(x) for x in (tmp_path / "ddp/log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logs if "loss" in x] == [1, 2, 3]  # rank 0 only
    val = [x for x in logs if "val_psnr" in x]
    assert val and set(val[-1]["val_psnr"]) == {"denoise", "deblur", "dehaze"}


def test_validation_images_do_not_depend_on_the_run_seed(folders, tmp_path):
    caches = []
    for seed in (3, 4):
        cfg = make_cfg(folders, tmp_path / f"s{seed}", iterations=2, seed=seed)
        run(cfg)
        caches.append(ValidationSet(tmp_path / f"s{seed}" / "val-cache"))
    for task in ("denoise", "deblur", "dehaze"):
        a, b = caches[0].by_task(task)[0].input, caches[1].by_task(task)[0].input
        assert np.array_equal(a, b), task
    other = make_cfg(folders, tmp_path / "v1", iterations=2, seed=3, data={"val_seed": 1})
    run(other)
    assert not np.array_equal(ValidationSet(tmp_path / "v1" / "val-cache").by_task("denoise")[0].input,
                              caches[0].by_task("denoise")[0].input)


@pytest.mark.parametrize("name", ["default", "cpu-small", "paper-base", "gpu", "gpu-finetune"])
def test_shipped_configs_load(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml")
    stages = plan_stages(cfg)
    assert stages[0].mode == "sync" and stages[0].tasks == ["denoise", "deblur"]
    assert stages[-1].mode == "bias-only" and stages[-1].tasks == ["derain", "dehaze", "desnow", "jpeg"]
    assert {s.mode for s in stages} == {"sync", "bias-only"}
    assert list(cfg.tasks) == ["denoise", "deblur", "derain", "dehaze", "desnow", "jpeg"]


def test_the_gpu_finetune_recipe_continues_the_shipped_model(folders, tmp_path, monkeypatch):
    """configs/gpu-finetune.yaml is configs/gpu.yaml started from the shipped weights: its sync stage
    moves the backbone and the denoise and deblur biases and leaves the downstream ones bit-identical."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    d = yaml.safe_load((root / "configs/gpu-finetune.yaml").read_text())
    gpu = yaml.safe_load((root / "configs/gpu.yaml").read_text())
    assert [(s["mode"], s["tasks"], s["iterations"]) for s in d["stages"]] == [
        (s["mode"], s["tasks"], s["iterations"]) for s in gpu["stages"]]
    assert d["model"]["init"] == "default"  # the shipped model, from any working directory
    monkeypatch.chdir(tmp_path)
    d["data"].update(train=[str(folders / "photos")], val=[], patch_size=32, batch_size=2, workers=0)
    d["stages"] = [dict(d["stages"][0], iterations=2, warmup=1)]
    d.update(log_every=1, out=str(tmp_path / "ft"), ema=None)
    shipped = InstructIPT.from_pretrained()
    model = run(config_from_dict(d))
    assert model.tasks == shipped.tasks
    a, b = shipped.state_dict(), model.state_dict()
    downstream = [shipped.tasks.index(t) for t in ("derain", "dehaze", "desnow", "jpeg")]
    for k in a:
        if "task_B" in k:
            assert torch.equal(a[k][downstream], b[k][downstream]), k
    assert not torch.equal(a["backbone.embed.weight"], b["backbone.embed.weight"])
    assert any(not torch.equal(a[k][:2], b[k][:2]) for k in a if "task_B" in k)


def test_default_config_is_the_shipped_models_whole_recipe():
    """One config holds the nine CPU sessions' stages (MODEL.md): 17200 sync + 7800 downstream steps."""
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "default.yaml")
    stages = plan_stages(cfg)
    assert sum(s.iterations for s in stages if s.mode == "sync") == 17200
    assert sum(s.iterations for s in stages if s.mode == "bias-only") == 7800
    # MODEL.md's history table, part by part: (mode, steps, lr, warm-up, grey share), in order
    sync, down = ("sync", ["denoise", "deblur"]), ("bias-only", ["derain", "dehaze", "desnow", "jpeg"])
    parts = [(sync, 3000, 5e-4, 200, 0.0), (sync, 3000, 3e-4, 100, 0.0),  # parts 1, 2
             (sync, 2500, 3e-4, 100, 0.0), (down, 1000, 1e-3, 100, 0.0),  # part 3
             (down, 2000, 1e-3, 100, 0.0), (down, 1200, 1e-3, 100, 0.0),  # parts 4, 5
             *[(kind, n, lr, 100, 0.0) for _ in range(3) for kind, n, lr in ((sync, 2400, 3e-4), (down, 900, 1e-3))],
             (sync, 1500, 3e-4, 100, 0.3), (down, 900, 1e-3, 100, 0.3)]  # part 9: grey samples
    assert [((s.mode, s.tasks), s.iterations, s.lr, s.warmup, s.grey_share) for s in stages] == parts
    assert cfg.grid_spans is None and cfg.model.init is None  # image-wide grid attention: no block seams


def _val_history(out):
    return [json.loads(x)["val_psnr"] for x in (out / "log.jsonl").read_text().splitlines() if "val_psnr" in x]


def test_ema_with_warmup_validates_no_worse_than_without(folders, tmp_path):
    """200 steps of `tiny` with the EMA at 0.999: with a fixed decay the average would still hold
    0.999**200 = 82 % of the untrained weights; the warmed-up decay follows the training. Both runs
    make the same updates, so only the averaging differs (seeds 0-2 measured +0.12, +0.03, -0.05 dB
    on these crops; the tolerance is that noise)."""
    val = tmp_path / "val"
    val.mkdir()
    for i, (name, top, left) in enumerate([("astronaut", 200, 200), ("coffee", 100, 300), ("chelsea", 100, 100),
                                           ("rocket", 200, 100)]):
        Image.fromarray(getattr(data, name)()[top : top + 64, left : left + 64]).save(val / f"v{i}.png")
    over = {"iterations": 200, "val_every": 200, "ckpt_every": 1000, "log_every": 100,
            "optim": {"lr": 2e-3, "warmup": 10}, "data": {"batch_size": 3, "val_crop": 64, "val": [str(val)]}}
    run(make_cfg(folders, tmp_path / "ema", ema=0.999, **over))
    run(make_cfg(folders, tmp_path / "plain", ema=None, **over))
    with_ema, without = _val_history(tmp_path / "ema")[-1], _val_history(tmp_path / "plain")[-1]
    mean = {k: sum(v.values()) / len(v) for k, v in (("ema", with_ema), ("plain", without))}
    assert mean["ema"] >= mean["plain"] - 0.1, (with_ema, without)


BUDGET_STAGES = [{"name": "elementary", "mode": "sync", "tasks": ["denoise", "deblur"], "iterations": 400, "warmup": 40},
                 {"name": "haze", "mode": "bias-only", "tasks": ["dehaze"], "iterations": 100, "lr": 1e-3}]


def budget_cfg(folders, out, ckpt_every=40):
    return make_cfg(folders, out, stages=BUDGET_STAGES, log_every=10, val_every=10**6, ckpt_every=ckpt_every, ema=0.9)


def test_the_budget_times_checkpoints_as_a_stage_writes_them(folders, tmp_path, monkeypatch):
    # with the optimiser and the average (a model alone is a quarter of the file), once per kind of stage
    saved = []
    real = trainer_module.save_checkpoint
    monkeypatch.setattr(trainer_module, "save_checkpoint", lambda path, state: saved.append(state) or real(path, state))
    with pytest.raises(ConfigError, match="too small for this run"):  # (refused after measuring: no training)
        Trainer(budget_cfg(folders, tmp_path / "b"), progress=False, max_minutes=0.001).run()
    assert [s["stage"] for s in saved] == [0, 1]
    assert all(s["optimizer"]["state"] and s["ema"] is not None for s in saved)


def test_time_budget_scales_every_stage_and_resume_continues_its_schedule(folders, tmp_path):
    import time

    budget = 0.25  # minutes: measuring the machine takes 4-6 s of it on 2 slow CPU cores
    t = time.perf_counter()
    model = Trainer(budget_cfg(folders, tmp_path / "b"), progress=False, max_minutes=budget).run()
    took = time.perf_counter() - t
    event = next(json.loads(x) for x in (tmp_path / "b/log.jsonl").read_text().splitlines() if "budget" in x)
    (n0, w0), (n1, w1) = event["stages"]
    from instruct_ipt.train.budget import MIN_STAGE_STEPS

    # one factor for every stage (400 and 100 steps: 4 to 1), a stage never below the floor (a slow
    # machine's 15-s budget gives the short stage fewer than MIN_STAGE_STEPS unfloored)
    assert n0 > MIN_STAGE_STEPS and abs(n1 - max(MIN_STAGE_STEPS, n0 / 4)) <= 1, (n0, n1)
    assert (w0, w1) == (scaled_warmup(40, 400, n0), scaled_warmup(1, 100, n1))
    assert took < budget * 60 * 1.5, took  # planned for 95 % of the budget; generous for a loaded machine
    steps = [json.loads(x) for x in (tmp_path / "b/log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [x["step"] for x in steps if x["stage"] == 0][-1] == n0 and [x["step"] for x in steps if x["stage"] == 1][-1] == n1
    written = load_config(tmp_path / "b/config.yaml")  # the scaled schedule: the run can be repeated without a budget
    assert [(s.iterations, s.warmup) for s in plan_stages(written)] == [(n0, w0), (n1, w1)]

    # killed half-way, resumed with another budget: the first schedule goes on, the same weights come out
    killed = budget_cfg(folders, tmp_path / "k", ckpt_every=4)
    assert Trainer(killed, progress=False, max_minutes=budget).run(stop_after=6) is None  # checkpoint at step 4
    schedule = [(s.iterations, s.warmup) for s in plan_stages(load_config(tmp_path / "k/config.yaml"))]
    resumed = Trainer(killed, progress=False, resume=True, max_minutes=10).run()
    assert [(s.iterations, s.warmup) for s in plan_stages(load_config(tmp_path / "k/config.yaml"))] == schedule
    again = load_config(tmp_path / "k/config.yaml")
    again.out = str(tmp_path / "again")
    straight = run(again)
    a, b = resumed.state_dict(), straight.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert model.tasks == ["denoise", "deblur", "dehaze"]


def test_the_budget_counts_a_compilation_once_not_again_in_every_stage_that_reuses_it(folders, tmp_path, monkeypatch):
    """torch.compile compiles once per process: the probe pays it while the budget is measured, and
    the real stage reuses the graphs. A stand-in compiler takes COMPILE seconds the first time it
    runs each kind of stage (sync and bias-only differ in which parameters need gradients, as real
    compilation's guards do), nothing after. The schedule plans each stage's start without it - it
    planned it twice (measured, then again per stage), ending a run early by that much."""
    import time

    compile_s = 2.0
    compiled_kinds = set()

    class Slow(torch.nn.Module):
        def __init__(self, net, mode=None):
            super().__init__()
            self.net = net

        def forward(self, *args):
            kind = tuple(p.requires_grad for p in self.net.parameters())
            if kind not in compiled_kinds:
                compiled_kinds.add(kind)
                time.sleep(compile_s)
            return self.net(*args)

    monkeypatch.setattr(torch, "compile", Slow)
    cfg = make_cfg(folders, tmp_path / "b", stages=[*BUDGET_STAGES, BUDGET_STAGES[1]], log_every=10, val_every=10**6,
                   ckpt_every=40, ema=0.9, compile="default")  # (a third stage of the second one's kind)
    assert Trainer(cfg, progress=False, max_minutes=30).run(stop_after=1) is None  # (the budget is fitted before any step)
    event = next(json.loads(x) for x in (tmp_path / "b/log.jsonl").read_text().splitlines() if "budget" in x)
    assert len(compiled_kinds) == 2
    assert all(start < compile_s / 2 for start in event["start_seconds"]), event
    # logged apart: the first start beyond a later one (the compilation, and the process's first-use costs
    # in the first), once per kind
    first, second, again = event["compile_seconds"]
    assert first >= compile_s * 0.9 and compile_s * 0.9 <= second < compile_s + 1 and again == 0, event


def test_a_restart_that_falls_back_to_eager_is_planned_at_the_eager_pace(folders, tmp_path, monkeypatch):
    """The budget's second start of a compiled stage (its graphs cached) may fail to compile and run
    eagerly; its warm-up steps then ran at the eager pace, and only what is left beyond them is the
    stage's start. A stand-in compiler works once (slowly), then fails; eager steps here are slower
    than compiled ones by EAGER seconds each, so a start that took off the warm-up at the compiled
    pace would plan about three of them as start-up."""
    import time

    from instruct_ipt.train.trainer import calibration_warmup

    eager_s, compile_s, made = 0.3, 2.0, []
    inside = {"compiled": False}
    forward = InstructIPT.forward

    def slow_when_eager(self, *args, **kwargs):
        if not inside["compiled"]:
            time.sleep(eager_s)
        return forward(self, *args, **kwargs)

    class OnceThenBroken(torch.nn.Module):
        def __init__(self, net, mode=None):
            super().__init__()
            self.net, self.first_call = net, True
            made.append(self)

        def forward(self, *args):
            if len(made) > 1:
                raise RuntimeError("no compiler this time")
            if self.first_call:
                self.first_call = False
                time.sleep(compile_s)
            inside["compiled"] = True
            try:
                return self.net(*args)
            finally:
                inside["compiled"] = False

    monkeypatch.setattr(InstructIPT, "forward", slow_when_eager)
    monkeypatch.setattr(torch, "compile", OnceThenBroken)
    cfg = make_cfg(folders, tmp_path / "b", stages=BUDGET_STAGES[:1], log_every=10, val_every=10**6, ckpt_every=40,
                   ema=0.9, compile="default")
    with pytest.warns(UserWarning, match="no compiler this time"):
        assert Trainer(cfg, progress=False, max_minutes=30).run(stop_after=1) is None
    event = next(json.loads(x) for x in (tmp_path / "b/log.jsonl").read_text().splitlines() if "budget" in x)
    assert len(made) >= 2 and event["seconds_per_step"][0] >= eager_s, event  # the stage will run eagerly
    assert event["start_seconds"][0] < eager_s * calibration_warmup(cfg.data.workers) / 2, event


def test_time_budget_too_small_or_added_on_resume_is_refused_before_any_step(folders, tmp_path):
    with pytest.raises(ConfigError, match=r"a budget of 0\.00 min is too small for this run: .* min of it to set up and measure"):
        Trainer(budget_cfg(folders, tmp_path / "small"), progress=False, max_minutes=0.001).run()  # (the budget given)
    log = tmp_path / "small/log.jsonl"
    assert not (tmp_path / "small/checkpoints/last.pt").exists()
    assert not log.exists() or '"loss"' not in log.read_text()
    cfg = make_cfg(folders, tmp_path / "plain")
    assert Trainer(cfg, progress=False).run(stop_after=2) is None
    with pytest.raises(ConfigError, match="started without --max-minutes"):
        Trainer(cfg, progress=False, resume=True, max_minutes=1).run()


def test_grid_span_choice_is_the_last_step_and_not_repeated(folders, tmp_path):
    spans = {"photos": [str(folders / "photos")], "span": 32, "limit": 2}
    cfg = make_cfg(folders, tmp_path, grid_spans=spans, iterations=2)
    model = run(cfg)
    saved = json.loads((tmp_path / "model/config.json").read_text())
    assert saved["backbone"]["grid_span"] == 32 and model.config.grid_span == 32
    events = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if "grid_spans" in x]
    assert len(events) == 1 and set(events[0]["choices"]) == {"denoise", "deblur", "dehaze"}
    image_wide = {t for t, c in events[0]["choices"].items() if c["chosen"] is None}
    assert set(saved["task_grid_spans"]) == image_wide
    run(cfg, resume=True)  # a finished run: nothing is trained or chosen again
    assert sum("grid_spans" in x for x in (tmp_path / "log.jsonl").read_text().splitlines()) == 1


def test_missing_folders_are_refused_before_any_step(folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="grid_spans.photos: .*nowhere: no such folder"):
        run(make_cfg(folders, tmp_path / "a", grid_spans={"photos": [str(folders / "nowhere")]}))
    with pytest.raises(ConfigError, match="grid_spans.span: grid_span 16 must be a multiple of .* 32"):
        run(make_cfg(folders, tmp_path / "c", grid_spans={"photos": [str(folders / "photos")], "span": 16}))
    with pytest.raises(FileNotFoundError, match="model.init: .*nomodel: no such model folder"):
        run(make_cfg(folders, tmp_path / "b", model={"init": str(folders / "nomodel")}))
    for out in ("a", "b", "c"):
        assert not (tmp_path / out / "checkpoints").exists()


def test_ctrl_c_saves_nothing_new_and_says_how_to_resume(folders, tmp_path, capsys, monkeypatch):
    real = trainer_module.compute_loss
    calls = {"n": 0}

    def interrupted(out, target, kind):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(out, target, kind)

    monkeypatch.setattr(trainer_module, "compute_loss", interrupted)
    cfg = make_cfg(folders, tmp_path / "run", iterations=8, ckpt_every=2)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["train", str(path), "--no-progress", "--set", "seed=3"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert f"Last checkpoint: {tmp_path / 'run/checkpoints/last.pt'} (stage 0, step 4)" in err[0]
    assert err[0].endswith(f"Continue with: instruct-ipt train {path} --resume --set seed=3")
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["step"] == 4
    monkeypatch.setattr(trainer_module, "compute_loss", real)
    assert main(["train", str(path), "--no-progress", "--set", "seed=3", "--resume"]) == 0  # the hint works


def test_ctrl_c_before_the_first_checkpoint_says_how_to_start_again(folders, tmp_path, capsys, monkeypatch):
    # the hint is the same command (a budget included), not a --resume that has nothing to resume
    real = trainer_module.compute_loss

    def interrupted(out, target, kind):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "compute_loss", interrupted)
    cfg = make_cfg(folders, tmp_path / "run", iterations=8, ckpt_every=100)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    for extra in (["--steps", "2"], ["--max-minutes", "0.5"]):
        assert main(["train", str(path), "--no-progress", "--set", "seed=3", *extra]) == 130
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"Start again with: instruct-ipt train {path} --set seed=3 {' '.join(extra)}"), err
    monkeypatch.setattr(trainer_module, "compute_loss", real)
    assert main(["train", str(path), "--no-progress", "--set", "seed=3", "--steps", "2"]) == 0  # the hint works


def test_cli_steps_and_set(folders, tmp_path, capsys):
    cfg = make_cfg(folders, tmp_path / "run", stages=BUDGET_STAGES)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["train", str(path), "--no-progress", "--steps", "3", "--set", "optim.lr=1e-3",
                 "--set", f"out={tmp_path / 'smoke'}"]) == 0
    written = load_config(tmp_path / "smoke/config.yaml")
    assert [s.iterations for s in plan_stages(written)] == [3, 3] and written.optim.lr == 1e-3
    assert main(["train", str(path), "--set", "optim.lrr=1"]) == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err


def test_torchrun_entry_point(folders, tmp_path):
    """The documented multi-process command, with 2 CPU processes (gloo)."""
    import subprocess
    import sys

    cfg = make_cfg(folders, tmp_path / "run", iterations=2, data={"val": []})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    logs = tmp_path / "ranks"  # each process's own output, kept apart from the launcher's traceback
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "--log-dir", str(logs), "--redirects", "3", "--tee", "3",
           "-m", "instruct_ipt.train", str(path), "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env)
    ranks = "\n".join(f"--- {f.relative_to(logs)}:\n{f.read_text()[-1500:]}" for f in sorted(logs.rglob("stderr.log")))
    assert r.returncode == 0, f"{r.stderr[-1000:]}\n{ranks}"
    assert (tmp_path / "run/model/model.safetensors").is_file()
    logs = [json.loads(x) for x in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logs if "loss" in x] == [1, 2]


def test_identity_share_reaches_the_training_samples(folders, tmp_path, monkeypatch):
    from instruct_ipt.train import trainer as trainer_module

    cfg = make_cfg(folders, tmp_path / "r", data={"identity": 0.5}, val_every=100)
    shares = []
    real = trainer_module.SyntheticDataset

    def spy(*a, **k):
        shares.append(k.get("identity_share"))
        return real(*a, **k)

    monkeypatch.setattr(trainer_module, "SyntheticDataset", spy)
    run(cfg)
    assert shares and set(shares) == {0.5}
    with pytest.raises(ConfigError, match=r"data.identity: a share in \[0, 1\], got 1.5"):
        make_cfg(folders, tmp_path, data={"identity": 1.5})


def test_composite_share_reaches_the_training_samples(folders, tmp_path, monkeypatch):
    from instruct_ipt.data.degradations import Composite
    from instruct_ipt.train.trainer import synthesis_for

    cfg = make_cfg(folders, tmp_path / "r", data={"composite": 0.5}, val_every=100)
    assert synthesis_for(cfg, torch.device("cuda")) == "workers"  # composites are made in the workers
    assert synthesis_for(make_cfg(folders, tmp_path / "x"), torch.device("cuda")) == "device"
    made = []
    real = Composite.apply
    monkeypatch.setattr(Composite, "apply", lambda self, clean, key, skip=(): made.append(self.task) or real(self, clean, key, skip))
    run(cfg)
    assert made  # about half of the 8 samples, each made twice (input, and target without the task's own)
    with pytest.raises(ConfigError, match=r"data.composite: a share in \[0, 1\], got 2"):
        make_cfg(folders, tmp_path, data={"composite": 2})
    with pytest.raises(ConfigError, match="set data.synthesis: workers"):
        make_cfg(folders, tmp_path, data={"composite": 0.3, "synthesis": "device"})


def test_a_checkpoint_whose_weights_do_not_fit_its_model_config_is_one_line(folders, tmp_path, capsys):
    cfg = make_cfg(folders, tmp_path / "run", iterations=4, ckpt_every=2, val_every=100)
    assert Trainer(cfg, progress=False).run(stop_after=2) is None  # killed after the step-2 checkpoint
    ckpt = tmp_path / "run/checkpoints/last.pt"
    state = load_checkpoint(ckpt)
    state["model_config"]["modulation"]["rank"] = 3  # hand-edited, or mixed from two runs
    save_checkpoint(ckpt, {k: v for k, v in state.items() if k != "format"})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["train", str(path), "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{ckpt} does not match its config: shape mismatch" in err[0], err
