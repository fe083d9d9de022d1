"""benchmarks/train_throughput.py runs and prints its figures (a benchmark, not a timed test: the
figures themselves are not checked against any target here, only that they are measured)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "model.size=tiny", "--set", "data.patch_size=32", "--set", "data.batch_size=2",
        "--set", "data.workers=0", "--set", "data.skimage_photos=false"]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks/train_throughput.py"), "--device", "cpu", *args],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()[:96, :96]).save(folder / f"{name}.png")
    return folder


def test_prints_data_only_and_end_to_end_rates_per_variant(photos):
    r = bench("--steps", "12", "--repeats", "1", *TINY, "--set", f"data.train=[{photos}]",
              "--compare", "data.synthesis=device")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("configs/default.yaml stage 0: tiny, patch 32, batch 2, workers 0, device cpu, 12 steps")
    rows = {}
    for line in lines:
        m = re.match(r"(this tree|data\.synthesis=device)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+) GiB\s+n/a\s+(\d+)$", line)
        if m:
            rows[m[1]] = [float(x) for x in m.groups()[1:]]
    assert set(rows) == {"this tree", "data.synthesis=device"}, r.stdout
    for data_only, end_to_end, peak_gib, ops in rows.values():
        # the data alone outruns training on it; every figure is a measurement, not a placeholder
        assert data_only > end_to_end > 0 and peak_gib > 0 and ops > 100
    ratio = float(re.search(r"ratio this tree / data\.synthesis=device: ([\d.]+)", r.stdout)[1])
    a, b = rows["this tree"][1], rows["data.synthesis=device"][1]
    # the rates are printed to 0.01: the ratio of the unrounded ones lies within that rounding
    assert ratio == pytest.approx(a / b, abs=a / b * (0.005 / a + 0.005 / b) + 5e-4)


def test_a_bad_override_or_stage_is_one_line_before_any_run(photos):
    r = bench("--steps", "12", "--repeats", "1", *TINY, "--compare", "data.bogus=1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert re.fullmatch(r"variant data\.bogus=1: unknown config key 'data\.bogus' \(known here: [a-z_, ]+\)",
                        r.stderr.strip()), r.stderr
    assert "patch_size" in r.stderr  # the keys it lists are data's
    stages = len(yaml.safe_load((ROOT / "configs/default.yaml").read_text())["stages"])
    for stage in (stages, -1):
        r = bench("--stage", str(stage))
        assert r.returncode == 1 and r.stderr.strip() == (
            f"variant this tree: the config has no stage {stage}: it has stages 0-{stages - 1}"), r.stderr
    flat = photos / "flat.yaml"  # a config without stages is one stage: only --stage 0 runs it
    flat.write_text(yaml.safe_dump({"tasks": {"denoise": {}}, "data": {"train": [str(photos)]}}))
    r = bench("--config", str(flat), "--stage", "1")
    assert r.returncode == 1 and r.stderr.strip() == (
        "variant this tree: the config has no stage 1: it has no stages (give --stage 0)"), r.stderr


def test_step_ops_counts_a_forward_and_backward_in_float32_and_under_autocast():
    """benchmarks/step_ops.py: the float32 row casts nothing but the one-hot it builds once, and
    autocast adds casts alone - the rest of the step is the same operations in another type."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/step_ops.py"), "--size", "tiny", "--tasks", "3",
                        "--batch", "4", "--patch", "16"], check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0] == "tiny, 3 tasks, sync, batch 4 of 16 px, channels-last: one forward and backward"
    rows = {}
    for line in lines[2:]:
        m = re.match(r"(float32|bfloat16 autocast \(CPU\))\s+(\d+)\s+(\d+)\s+\S", line)
        assert m, line
        rows[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    (ops32, casts32), (ops16, casts16) = rows["float32"], rows["bfloat16 autocast (CPU)"]
    assert casts32 == 1 and casts16 > casts32
    assert ops16 - ops32 == casts16 - casts32
