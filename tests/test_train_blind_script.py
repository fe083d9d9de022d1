"""scripts/train_blind_classifier.py's walks key: the walks file is reused for the same calibration only."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("train_blind_classifier", ROOT / "scripts/train_blind_classifier.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def test_the_walks_key_changes_with_the_weights_the_grid_alignment_and_the_photos(tmp_path):
    from types import SimpleNamespace

    import torch
    from torch import nn

    from instruct_ipt.instruct.blind import DegradationClassifier

    clf, model = DegradationClassifier(["denoise", "derain"], width=4), nn.Linear(2, 2)
    pipe = SimpleNamespace(model=model)
    photo = tmp_path / "a.png"
    photo.write_bytes(b"one")
    args = SimpleNamespace(calibration_seeds=2, region=384)
    key = script.walks_key(args, clf, pipe, [photo])
    assert script.walks_key(args, clf, pipe, [photo]) == key
    with torch.no_grad():
        model.weight[0, 0] += 1
    assert script.walks_key(args, clf, pipe, [photo]) != key
    key = script.walks_key(args, clf, pipe, [photo])
    assert "align_blocks" not in key  # walks written before the option read as before
    clf.align_blocks = True
    assert script.walks_key(args, clf, pipe, [photo]) != key
    clf.align_blocks = False
    clf.min_positions = 3
    assert script.walks_key(args, clf, pipe, [photo]) != key
    clf.min_positions = 1
    assert script.walks_key(args, clf, pipe, [photo]) == key
    photo.write_bytes(b"two")
    assert script.walks_key(args, clf, pipe, [photo]) != key


@pytest.mark.parametrize("args, message", [
    (["--clean-class", "--composite-share", "0.2"], "--composite-share goes with --multilabel"),
    (["--clean-share", "0.2"], "--clean-share goes with --multilabel or --clean-class"),
    (["--walks", "w.npz"], "--walks go with --peel"),
    (["--suggest", "dehaze"], "--suggest, --no-gate, --model and --walks go with --peel"),
    (["--peel", "packaged", "--exclude", "x.png", "--suggest", "fog"], "--suggest fog: not a task"),
    (["--peel", "packaged", "--exclude", "x.png", "--tone", "0.5"], "--peel calibrates .* or --tone"),
])
def test_options_that_would_be_ignored_are_refused(monkeypatch, tmp_path, args, message):
    monkeypatch.setattr("sys.argv", ["train_blind_classifier.py", "--out", str(tmp_path / "c.safetensors"), *args])
    with pytest.raises(SystemExit, match=message):
        script.main()
    assert not (tmp_path / "c.safetensors").exists()
