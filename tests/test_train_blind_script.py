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
    (["--suggest", "dehaze"], "--suggest, --no-gate, --jpeg-blocks, --keep-choices, --region, --model and --walks go with --peel"),
    (["--jpeg-blocks"], "--jpeg-blocks, --keep-choices, --region, --model and --walks go with --peel"),
    (["--peel", "packaged", "--exclude", "x.png", "--keep-choices", "--jpeg-blocks"], "--keep-choices takes"),
    (["--keep-choices"], "--keep-choices, --region, --model and --walks go with --peel"),
    (["--peel", "packaged", "--exclude", "x.png", "--keep-choices", "--further", "denoise"], "--keep-choices takes"),
    (["--peel", "packaged", "--exclude", "x.png", "--keep-choices", "--region", "256"], "--keep-choices takes"),
    (["--peel", "packaged", "--exclude", "x.png", "--suggest", "fog"], "--suggest fog: not a task"),
    (["--peel", "packaged", "--exclude", "x.png", "--tone", "0.5"], "--peel calibrates .*--tone"),
    (["--peel", "packaged", "--exclude", "x.png", "--downsamplings", "5"], "--peel calibrates .*--downsamplings or --width"),
    (["--peel", "packaged", "--exclude", "x.png", "--width", "48"], "--peel calibrates .* or --width"),
    (["--multilabel", "--exclude", "x.png", "--recalibrate", "m.safetensors", "--width", "48"],
     "--recalibrate trains nothing: not with .*--width"),
    (["--multilabel", "--exclude", "x.png", "--recalibrate", "m.safetensors", "--downsamplings", "5"],
     "--recalibrate trains nothing"),
    (["--multilabel", "--exclude", "x.png", "--recalibrate", "m.safetensors", "--init", "i.safetensors"],
     "--recalibrate trains nothing: not with .*--init"),
    (["--multilabel", "--exclude", "x.png", "--recalibrate", "m.safetensors", "--tone", "0.5"],
     "--recalibrate trains nothing: not with .*--tone"),
])
def test_options_that_would_be_ignored_are_refused(monkeypatch, tmp_path, args, message):
    monkeypatch.setattr("sys.argv", ["train_blind_classifier.py", "--out", str(tmp_path / "c.safetensors"), *args])
    with pytest.raises(SystemExit, match=message):
        script.main()
    assert not (tmp_path / "c.safetensors").exists()



def test_keep_choices_calibrates_the_same_blind_mode_for_another_model(monkeypatch, tmp_path, capsys):
    """--keep-choices asks the --peel file's questions again, and the file records the model it was
    calibrated with; the walk (restorations: minutes) is the stand-in scene of tests/test_blind.py."""
    from PIL import Image
    from skimage import data
    from test_blind import _scene

    from instruct_ipt import InstructIPT
    from instruct_ipt.instruct import blind
    from instruct_ipt.io import weights_digest

    scene = _scene()
    monkeypatch.setattr(script, "peel_walks", lambda clf, cases, restore, region: blind.peel_walks(
        scene.classifier(), [(scene.image(*present), present) for _, present in cases], scene.restore, 32))
    for name, img in (("a.png", data.astronaut()), ("b.png", data.chelsea())):
        Image.fromarray(img[100:148, 100:148]).save(tmp_path / name)
    tasks = list(scene.BITS)
    blind.DegradationClassifier(tasks, width=4).save(tmp_path / "c.safetensors")
    models = [InstructIPT("tiny", tasks=tasks).save_pretrained(tmp_path / f"model{i}") for i in (1, 2)]

    def run(*args: str) -> blind.DegradationClassifier:
        monkeypatch.setattr("sys.argv", ["train_blind_classifier.py", "--photos", str(tmp_path), "--exclude", "a.png",
                                         "--exclude", "b.png", "--calibration-seeds", "1", *args])
        script.main()
        return blind.DegradationClassifier.load(args[args.index("--out") + 1])

    first = run("--peel", str(tmp_path / "c.safetensors"), "--model", str(models[0]), "--further", "denoise",
                "--first", "denoise", "--suggest", "dehaze", "--walks", str(tmp_path / "w.npz"),
                "--out", str(tmp_path / "first.safetensors"))
    assert first.peeling.model == weights_digest(InstructIPT.from_pretrained(models[0]))
    assert first.peeling.further and first.peeling.first_change and first.peeling.suggest
    capsys.readouterr()
    again = run("--peel", str(tmp_path / "first.safetensors"), "--keep-choices", "--model", str(models[0]),
                "--walks", str(tmp_path / "w.npz"), "--out", str(tmp_path / "again.safetensors"))
    out = capsys.readouterr().out
    assert "walks read from" in out and "choices kept" in out  # the same weights, model and photos: the walk read back
    assert again.peeling == first.peeling
    other = run("--peel", str(tmp_path / "first.safetensors"), "--keep-choices", "--model", str(models[1]),
                "--out", str(tmp_path / "other.safetensors"))
    assert other.peeling.model == weights_digest(InstructIPT.from_pretrained(models[1])) != first.peeling.model
    assert other.peeling.choices() == first.peeling.choices()


def test_recalibrating_a_multilabel_file_keeps_its_primary(monkeypatch, tmp_path, capsys):
    from PIL import Image
    from skimage import data

    from instruct_ipt.data.degradations import DEGRADATIONS
    from instruct_ipt.instruct.blind import DegradationClassifier

    for name, img in (("a.png", data.astronaut()), ("b.png", data.chelsea())):
        Image.fromarray(img[100:164, 100:164]).save(tmp_path / name)
    tasks = list(DEGRADATIONS)
    multi = DegradationClassifier(tasks, width=4, multilabel=True)
    multi.attach_primary(DegradationClassifier(tasks, width=4))
    multi.save(tmp_path / "m.safetensors")
    monkeypatch.setattr("sys.argv", ["train_blind_classifier.py", "--photos", str(tmp_path), "--exclude", "a.png",
                                     "--exclude", "b.png", "--calibration-seeds", "1", "--multilabel",
                                     "--recalibrate", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "r.safetensors")])
    script.main()
    out = capsys.readouterr().out
    assert "recalibrated in" in out and "trained on" not in out and "training photos" not in out
    back = DegradationClassifier.load(tmp_path / "r.safetensors")
    assert back.primary is not None and "extra thresholds" in out
