"""benchmarks/blind_walks.py scores threshold choices of one classifier on one recorded walk: classifiers
whose walks would differ are refused before any walk (the minutes of restoring)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data

from instruct_ipt.instruct.blind import DegradationClassifier, Peeling

ROOT = Path(__file__).resolve().parent.parent


def walks(tmp_path: Path, *peelings: Peeling) -> subprocess.CompletedProcess:
    Image.fromarray(data.astronaut()[:64, :64]).save(tmp_path / "a.png")
    args = []
    for i, peeling in enumerate(peelings):
        torch.manual_seed(0)  # the same weights: the classifiers differ in their peeling only
        path = DegradationClassifier(["denoise", "deblur"], width=4, clean_class=True, peeling=peeling).save(tmp_path / f"c{i}.safetensors")
        args += ["--classifier", str(path)]
    return subprocess.run([sys.executable, str(ROOT / "benchmarks/blind_walks.py"), "--val", str(tmp_path / "a.png"),
                           "--walks", str(tmp_path / "w.npz"), "--model", str(tmp_path / "no-model"), *args],
                          check=False, capture_output=True, text=True, cwd=ROOT / "benchmarks", timeout=120)


@pytest.mark.parametrize(("second", "says"), [
    (Peeling({}, {"denoise": 0.1}, region=64, clean=0.5),
     "the classifiers' peelings judge crops of different sizes (48, 64 px): one walk serves one region"),
    (Peeling({}, {"denoise": 0.1}, region=48, max_tasks=3, clean=0.5),
     "c1.safetensors: peels up to 3 tasks, and a walk records two steps: it cannot score a third"),
], ids=["region", "max_tasks"])
def test_classifiers_a_walk_cannot_score_are_refused_before_walking(tmp_path, second, says):
    r = walks(tmp_path, Peeling({}, {"denoise": 0.2}, region=48, clean=0.5), second)
    assert r.returncode == 1 and r.stderr.strip().endswith(says), r.stderr[-2000:]
    assert not (tmp_path / "w.npz").exists()


def test_threshold_choices_of_one_classifier_pass_the_checks(tmp_path):
    # the same region and steps: past the checks, to the model (here a folder that is not there)
    r = walks(tmp_path, Peeling({}, {"denoise": 0.2}, region=48, clean=0.5), Peeling({}, {"denoise": 0.1}, region=48, clean=0.5))
    assert r.returncode != 0 and "no-model" in r.stderr and "peelings judge" not in r.stderr, r.stderr[-2000:]


def test_a_walk_is_keyed_by_every_photo_even_two_of_one_name(tmp_path):
    """Two folders may each hold an x.png: changing either one must walk again, not read back the old walk."""
    from instruct_ipt import InstructIPT

    InstructIPT("tiny", tasks=["denoise", "deblur"]).save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    clf = DegradationClassifier(["denoise", "deblur"], width=4, clean_class=True,
                                peeling=Peeling({}, {"denoise": 0.2}, region=48, clean=0.5)).save(tmp_path / "c.safetensors")
    for folder, crop in (("a", data.astronaut()), ("b", data.coffee())):
        (tmp_path / folder).mkdir()
        Image.fromarray(crop[:64, :64]).save(tmp_path / folder / "x.png")

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "benchmarks/blind_walks.py"), "--val", str(tmp_path / "a"),
                               "--val", str(tmp_path / "b"), "--composite", "blur+noise", "--walks", str(tmp_path / "w.npz"),
                               "--model", str(tmp_path / "model"), "--classifier", str(clf)],
                              check=False, capture_output=True, text=True, cwd=ROOT / "benchmarks", timeout=300)

    first = run()
    assert first.returncode == 0 and "walks written" in first.stdout and "photos: 2 (x.png, x.png)" in first.stdout, first.stderr[-2000:]
    again = run()
    assert again.returncode == 0 and "walks read from" in again.stdout, again.stderr[-2000:]
    Image.fromarray(data.chelsea()[:64, :64]).save(tmp_path / "a" / "x.png")  # the first of the two names changes
    changed = run()
    assert changed.returncode == 1 and "holds walks for another classifier, model, photos" in changed.stderr, changed.stdout
