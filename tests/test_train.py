import json
import os
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
    with pytest.raises(ConfigError, match="train_tasks: 'derain' is not in tasks"):
        make_cfg(folders, tmp_path, train_tasks=["derain"])
    with pytest.raises(ConfigError, match="mode: 'fast' is not one of"):
        make_cfg(folders, tmp_path, mode="fast")
    with pytest.raises(ConfigError, match="batch_size 4 is larger than the data: the 3 clean images hold only 3 "):
        run(make_cfg(folders, tmp_path, data={"batch_size": 4, "patch_size": 64}))
    with pytest.raises(FileNotFoundError, match="data.train: .*nowhere: no such folder"):
        run(make_cfg(folders, tmp_path, data={"train": [str(folders / "nowhere")]}))
    path = tmp_path / "c.yaml"
    path.write_text("tasks: {denoise: {}}\noptim: {lr: 1e-3}\n")
    assert load_config(path).optim.lr == 1e-3


def test_stage_plans(folders, tmp_path):
    two = plan_stages(make_cfg(folders, tmp_path, mode="two-stage", iterations=10, two_stage_split=0.3))
    assert [(s.mode, s.iterations) for s in two] == [("plain", 3), ("bias-only", 7)]
    staged = plan_stages(make_cfg(folders, tmp_path, stages=[
        {"name": "elementary", "mode": "sync", "tasks": ["denoise", "deblur"]},
        {"name": "haze", "mode": "bias-only", "tasks": ["dehaze"], "iterations": 2, "lr": 1e-3},
    ]))
    assert [(s.name, s.mode, s.tasks, s.iterations, s.lr) for s in staged] == [
        ("elementary", "sync", ["denoise", "deblur"], 4, 2e-3), ("haze", "bias-only", ["dehaze"], 2, 1e-3)]


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


@pytest.mark.parametrize("mode,stop", [("sync", 3), ("two-stage", 3)])
def test_killed_and_resumed_run_ends_with_the_same_weights(folders, tmp_path, mode, stop):
    over = {"mode": mode, "ema": 0.8, "iterations": 5 if mode == "sync" else 6}
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


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(folders, tmp_path, monkeypatch):
    real = trainer_module.compute_loss
    calls = {"n": 0}

    def flaky(out, target, kind):
        calls["n"] += 1
        loss = real(out, target, kind)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(trainer_module, "compute_loss", flaky)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3 of stage 0 .*last.pt"):
        run(make_cfg(folders, tmp_path))
    ckpt = torch.load(tmp_path / "checkpoints/last.pt", weights_only=False)
    assert ckpt["step"] == 2


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
    torch.set_num_threads(1)
    cfg = make_cfg(folders, tmp_path / "ddp", iterations=3)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path / "w")), nprocs=2, join=True)
    s0, s1 = torch.load(f"{tmp_path / 'w'}.0"), torch.load(f"{tmp_path / 'w'}.1")
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    torch.manual_seed(0)
    single = run(make_cfg(folders, tmp_path / "one", iterations=3)).state_dict()
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


@pytest.mark.parametrize("name", ["default", "cpu-small", "paper-base"])
def test_shipped_configs_load(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml")
    stages = plan_stages(cfg)
    assert [s.mode for s in stages] == ["sync", "bias-only"]
    assert stages[0].tasks == ["denoise", "deblur"]
    assert stages[1].tasks == ["derain", "dehaze", "desnow", "jpeg"]
    assert list(cfg.tasks) == ["denoise", "deblur", "derain", "dehaze", "desnow", "jpeg"]


@pytest.mark.parametrize("name, modes", [("default-extend", ["sync", "bias-only"]),
                                         ("default-extend-2", ["sync", "bias-only"]),
                                         ("default-extend-3", ["bias-only"]),
                                         ("default-extend-4", ["bias-only"]),
                                         ("default-extend-5", ["sync", "bias-only"]),
                                         ("default-extend-6", ["sync", "bias-only"]),
                                         ("default-extend-7", ["sync", "bias-only"])])
def test_default_model_continuation_configs_load(name, modes):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml")
    stages = plan_stages(cfg)
    assert cfg.model.init and [s.mode for s in stages] == modes
    assert stages[-1].tasks == ["derain", "dehaze", "desnow", "jpeg"]


def test_torchrun_entry_point(folders, tmp_path):
    """The documented multi-process command, with 2 CPU processes (gloo)."""
    import subprocess
    import sys

    cfg = make_cfg(folders, tmp_path / "run", iterations=2, data={"val": []})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "instruct_ipt.train", str(path), "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run/model/model.safetensors").is_file()
    logs = [json.loads(x) for x in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logs if "loss" in x] == [1, 2]
