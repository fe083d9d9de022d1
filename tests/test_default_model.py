"""The shipped default model (src/instruct_ipt/weights/default) on real photos from scikit-image."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from instruct_ipt import RestorationPipeline
from instruct_ipt.cli import main
from instruct_ipt.data.bundled import write_bundled_photos
from instruct_ipt.data.degradations import degrade
from instruct_ipt.eval.metrics import psnr, seam_ratio
from instruct_ipt.eval.plan import EvalRequest, plan_eval
from instruct_ipt.eval.runner import evaluate
from instruct_ipt.inference import restore_array
from instruct_ipt.instruct import InstructionHead

TASKS = {"denoise", "deblur", "derain", "dehaze", "desnow", "jpeg"}


@pytest.fixture(scope="module")
def pipe():
    return RestorationPipeline.from_pretrained(device="cpu")


@pytest.fixture(scope="module")
def model(pipe):
    return pipe.model


def crop(img: np.ndarray, size: int = 96) -> np.ndarray:
    h, w = img.shape[:2]
    return img[(h - size) // 2 : (h - size) // 2 + size, (w - size) // 2 : (w - size) // 2 + size]


def test_ships_all_tasks_with_matching_instruction_head_and_classifier(pipe):
    from instruct_ipt.instruct.blind import BLIND_FILE
    from instruct_ipt.instruct.head import HEAD_FILE
    from instruct_ipt.model import default_model_dir

    assert set(pipe.tasks) == TASKS
    assert (default_model_dir() / HEAD_FILE).is_file() and (default_model_dir() / BLIND_FILE).is_file()  # one folder
    InstructionHead.default().check_tasks(pipe.tasks)
    pipe.head.check_tasks(pipe.tasks)
    assert set(pipe.classifier.tasks) == TASKS


def test_the_shipped_classifier_is_calibrated_for_the_shipped_model(pipe):
    """Blind mode's peeling thresholds measure the shipped model's restorations: a new default model
    ships with the classifier recalibrated for it (docs/instructions.md), or this fails."""
    from instruct_ipt.io import weights_digest

    assert pipe.classifier.peeling.model == weights_digest(pipe.model)


def _bundled_claims() -> dict[str, tuple[float, float]]:
    """MODEL.md's "Bundled photos" table: per row (task, or "denoise (grey)"), the input's and the
    model's PSNR."""
    text = (Path(__file__).resolve().parent.parent / "MODEL.md").read_text(encoding="utf-8")
    section = text.split("\n## Bundled photos", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in TASKS | {"denoise (grey)"}:
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    return rows


def test_bundled_photo_figures_are_those_model_md_claims(pipe, tmp_path):
    """The figures MODEL.md gives for the photos every install has, recomputed exactly as
    ``instruct-ipt eval --photos DIR --crop 192 --sigma 25 [--grey --tasks denoise]`` computes them."""
    claims = _bundled_claims()
    assert set(claims) == TASKS | {"denoise (grey)"}
    write_bundled_photos(tmp_path)
    model = pipe.model
    for grey in (False, True):
        request = EvalRequest(photos=tmp_path, sigma=25.0, crop=192, grey=grey, tasks=["denoise"] if grey else None)
        plan = plan_eval(request, model.tasks)
        for job in plan.jobs:
            key = f"psnr_{plan.protocols[job.task].channels[0]}"
            with model.merged(job.task):
                ours, _ = evaluate(job.make_cases(), lambda c: restore_array(model, c.input, None), protocols=plan.protocols)
            inputs, _ = evaluate(job.make_cases(), lambda c: c.input, protocols=plan.protocols)
            measured = (np.mean([r.metrics[key] for r in inputs]), np.mean([r.metrics[key] for r in ours]))
            claimed = claims["denoise (grey)" if grey else job.task]
            assert len(ours) == 3 and measured == pytest.approx(claimed, abs=0.05), (job.task, grey, measured, claimed)
    # issue 24: a grey photo gains within 1 dB of what its colour version gains at sigma 25 (the
    # figures just checked against a measurement; parts 1-8 gained 1.95 dB on grey against 12.92)
    colour, grey = claims["denoise"], claims["denoise (grey)"]
    assert grey[1] - grey[0] > (colour[1] - colour[0]) - 1.0


@pytest.mark.parametrize("task", ["denoise", "dehaze"])
def test_restores_better_than_the_input(pipe, task):
    # a bundled photograph the model was not trained on (its scikit-image photos: astronaut, chelsea,
    # coffee, rocket); MODEL.md has the full evaluation on the validation photos
    clean = crop(data.immunohistochemistry()).astype(np.float32) / 255
    kwargs = {"sigma": 25.0} if task == "denoise" else {}
    degraded = np.round(np.clip(degrade(clean, task, seed=1, **kwargs).image, 0, 1) * 255) / 255
    restored = np.clip(pipe(degraded.astype(np.float32), task=task), 0, 1)
    gain = psnr(restored, clean) - psnr(degraded, clean)
    assert gain > 1.0, f"{task}: {gain:.2f} dB"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_no_block_seams_on_a_smooth_image(pipe, model, task):
    """A smooth gradient (the sky, a wall) restored whole shows no 64-px block grid: the error jumps no
    more across every 64th pixel line than elsewhere. With grid attention bounded to 64 px blocks
    (the shipped config before) the ratio was 16 for denoise and 15 for jpeg (MODEL.md, Grid span)."""
    yy, xx = np.mgrid[0:256, 0:320] / 256.0
    clean = np.stack([0.3 + 0.32 * xx, 0.2 + 0.5 * yy, 0.5 + 0.2 * np.sin(2 * xx + yy)], axis=2).astype(np.float32)
    restored = np.clip(pipe(clean, task=task), 0, 1)
    assert seam_ratio(restored, clean, 64) < 1.5
    assert model.config.grid_span is None and not model.task_grid_spans


def test_tiles_match_the_whole_image(model):
    rgb = crop(data.astronaut(), 160).astype(np.float32) / 255
    noisy = np.clip(degrade(rgb, "denoise", seed=0, sigma=15.0).image, 0, 1).astype(np.float32)
    whole = restore_array(model, noisy, "denoise", tile=0)
    tiled = restore_array(model, noisy, "denoise", tile=96, overlap=32)
    assert tiled.shape == whole.shape
    # windowed attention sees other context at tile borders; the blend keeps that well below what eyes see
    assert psnr(np.clip(tiled, 0, 1), np.clip(whole, 0, 1)) > 40.0
    assert np.abs(tiled - whole).max() < 0.1


def test_cli_restore_with_the_shipped_model(tmp_path, capsys):
    clean = crop(data.coffee(), 96)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    src = tmp_path / "coffee.png"
    Image.fromarray(noisy).save(src)
    before = src.read_bytes()
    assert main(["restore", str(src), "-i", "the photo is grainy, remove the noise"]) == 0
    out = tmp_path / "coffee.restored.png"
    assert out.exists() and src.read_bytes() == before
    restored = np.asarray(Image.open(out))
    assert restored.shape == clean.shape
    assert psnr(restored, clean) > psnr(noisy, clean) + 2.0
    assert "denoise" in capsys.readouterr().out
