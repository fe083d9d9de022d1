"""scripts/train_blind_classifier.py's walks file: reused for the same calibration, refused for another."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("train_blind_classifier", ROOT / "scripts/train_blind_classifier.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def test_walks_round_trip_and_a_file_for_other_settings_is_refused(tmp_path):
    from instruct_ipt.instruct.blind import WALK_KEYS

    rng = np.random.default_rng(0)
    walks = {"first": np.array([0, 2, 1]), "first_prob": rng.random(3), "first_change": rng.random(3), "second": np.array([1, 0, 2]),
             "second_change": rng.random(3), "first_clean": np.full(3, np.nan), "second_beats": np.array([True, False, True]),
             "present": rng.random((3, 3)) > 0.5}
    path = tmp_path / "walks.npz"
    script.write_walks(path, walks, key='{"seeds": 2}')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walks.npz"]  # written whole, no temporary left
    back = script.read_walks(path, '{"seeds": 2}')
    assert set(back) == set(WALK_KEYS)
    for k in WALK_KEYS:
        np.testing.assert_array_equal(back[k], walks[k])
    with pytest.raises(ValueError, match="walks for another classifier"):
        script.read_walks(path, '{"seeds": 3}')
    np.savez(tmp_path / "other.npz", key=np.array('{"seeds": 2}'), first=walks["first"])  # keys missing
    (tmp_path / "text.npz").write_text("not numpy at all")
    np.save(tmp_path / "array.npy", walks["first"])  # a plain array, no key
    for other in ("text.npz", "array.npy"):
        with pytest.raises(ValueError, match="not a walks file"):
            script.read_walks(tmp_path / other, '{"seeds": 2}')
    with pytest.raises(ValueError, match="older version .*first_prob"):
        script.read_walks(tmp_path / "other.npz", '{"seeds": 2}')
    np.savez(tmp_path / "nokey.npz", **walks)  # the arrays without their key
    with pytest.raises(ValueError, match="not a walks file"):
        script.read_walks(tmp_path / "nokey.npz", '{"seeds": 2}')


def test_the_walks_key_changes_with_the_weights_and_the_photos(tmp_path):
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
    photo.write_bytes(b"two")
    assert script.walks_key(args, clf, pipe, [photo]) != key


@pytest.mark.parametrize("args, message", [
    (["--clean-class", "--composite-share", "0.2"], "--composite-share goes with --multilabel"),
    (["--clean-share", "0.2"], "--clean-share goes with --multilabel or --clean-class"),
    (["--walks", "w.npz"], "--walks go with --peel"),
    (["--peel", "packaged", "--exclude", "x.png", "--tone", "0.5"], "--peel calibrates .* or --tone"),
])
def test_options_that_would_be_ignored_are_refused(monkeypatch, tmp_path, args, message):
    monkeypatch.setattr("sys.argv", ["train_blind_classifier.py", "--out", str(tmp_path / "c.safetensors"), *args])
    with pytest.raises(SystemExit, match=message):
        script.main()
    assert not (tmp_path / "c.safetensors").exists()
