import numpy as np
import pytest
import torch
from conftest import randomize_task_biases
from skimage import data

from instruct_ipt import InstructIPT
from instruct_ipt.data.degradations import make_degradation
from instruct_ipt.eval.grid_span import SpanChoice, apply_choices, compare_grid_spans
from instruct_ipt.eval.metrics import psnr
from instruct_ipt.eval.runner import Case
from instruct_ipt.inference import restore_array
from instruct_ipt.models import IPTConfig


def cases(tasks):
    clean = data.astronaut()[100:164, 200:264].astype(np.float32) / 255  # larger than the span: grouping matters
    for task in tasks:
        d = make_degradation(task)(clean, np.random.default_rng(0))
        yield Case(task, "t", "astronaut", d.image, clean)


def test_compare_measures_both_groupings_and_restores_the_model():
    torch.manual_seed(0)
    model = InstructIPT("tiny", tasks=["denoise", "dehaze"], task_grid_spans={"dehaze": None})
    randomize_task_biases(model.modulation, scale=0.2)
    choices = compare_grid_spans(model, cases(["denoise", "dehaze"]), span=32)
    assert [c.task for c in choices] == ["denoise", "dehaze"] and all(c.images == 1 for c in choices)
    assert model.config.grid_span is None and model.task_grid_spans == {"dehaze": None}  # left as it was
    case = next(cases(["dehaze"]))
    with torch.no_grad():
        wide = psnr(np.round(np.clip(restore_array(model, case.input, "dehaze", tile=0), 0, 1) * 255) / 255, case.target)
        model.backbone.set_grid_span(32)
        model.task_grid_spans.clear()
        bounded = psnr(np.round(np.clip(restore_array(model, case.input, "dehaze", tile=0), 0, 1) * 255) / 255, case.target)
    assert choices[1].psnr_image_wide == pytest.approx(wide) and choices[1].psnr_span == pytest.approx(bounded)
    assert wide != pytest.approx(bounded)


def test_apply_choices_keeps_image_wide_groups_where_they_won():
    model = InstructIPT("tiny", tasks=["denoise", "dehaze"])
    apply_choices(model, [SpanChoice("denoise", 2, 30.0, 30.5, 32), SpanChoice("dehaze", 2, 20.0, 19.0, 32)])
    assert model.config.grid_span == 32 and model.task_grid_spans == {"dehaze": None}
    apply_choices(model, [SpanChoice("denoise", 2, 30.0, 30.0, 32)])  # a tie keeps the trained grouping
    assert model.task_grid_spans == {}
    with pytest.raises(ValueError, match="different spans"):
        apply_choices(model, [SpanChoice("denoise", 2, 1, 2, 32), SpanChoice("dehaze", 2, 1, 2, 64)])
    assert IPTConfig.tiny().grid_span is None


def test_synthetic_cases_limit_keeps_the_folder_seeds(tmp_path):
    from PIL import Image

    from instruct_ipt.eval.runner import synthetic_cases

    for i in range(5):
        Image.fromarray(data.astronaut()[i * 40 : i * 40 + 32, :32]).save(tmp_path / f"p{i}.png")
    every = {c.name: c for c in synthetic_cases(tmp_path, ["denoise"])}
    some = list(synthetic_cases(tmp_path, ["denoise"], limit=3))
    assert [c.name for c in some] == ["p0", "p2", "p4"]
    assert all(np.array_equal(c.input, every[c.name].input) for c in some)


def test_choose_grid_spans_script_writes_the_choice(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()[:64, :96]).save(photos / "a.png")
    torch.manual_seed(0)
    model = InstructIPT("tiny", tasks=["denoise", "dehaze"])
    randomize_task_biases(model.modulation, scale=0.2)
    model.save_pretrained(tmp_path / "m")
    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    script = Path(__file__).resolve().parent.parent / "scripts" / "choose_grid_spans.py"
    r = subprocess.run([sys.executable, str(script), "--model", str(tmp_path / "m"), "--photos", str(photos),
                        "--span", "32", "--write"], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.startswith(("denoise", "dehaze"))}
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["backbone"]["grid_span"] == 32
    wide = sorted(t for t, row in rows.items() if row[-1] == "image-wide")
    assert sorted(cfg["task_grid_spans"]) == wide
    assert all(float(rows[t][1]) > float(rows[t][2]) for t in wide)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == weights
    assert InstructIPT.from_pretrained(tmp_path / "m").config.grid_span == 32
