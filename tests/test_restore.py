import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from instruct_ipt import InstructIPT
from instruct_ipt.cli import main
from instruct_ipt.data.degradations import Degraded, make_degradation
from instruct_ipt.instruct.blind import BLIND_FILE, BlindDataset, DegradationClassifier, train_classifier

TASKS = ["denoise", "deblur", "derain", "dehaze", "desnow", "jpeg"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    InstructIPT("tiny", tasks=TASKS).save_pretrained(d)
    ops = {t: make_degradation(t) for t in TASKS}
    train_classifier([data.astronaut()[:64, :64]], ops, steps=2, batch_size=4, patch_size=32, context=48).save(d / BLIND_FILE)
    return d


@pytest.fixture(scope="module")
def model(model_dir):
    return InstructIPT.from_pretrained(model_dir)


def test_numpy_in_numpy_out(model):
    rgb = data.astronaut()[:40, :52]
    out, choice = model.restore(rgb, task="denoise", return_choice=True)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert choice.tasks == ["denoise"] and choice.source == "task"
    f = model.restore(rgb.astype(np.float32) / 255, task="deblur")
    assert f.dtype == np.float32 and f.shape == rgb.shape
    grey = model.restore(data.camera()[:30, :30], task="denoise")
    assert grey.shape == (30, 30) and grey.dtype == np.uint8
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 77, np.uint8)])
    out4 = model.restore(rgba, task="denoise")
    assert out4.shape == rgba.shape and (out4[..., 3] == 77).all()


def test_pil_and_path_in_pil_out(model, tmp_path):
    im = Image.fromarray(data.coffee()[:33, :47])
    out = model.restore(im, instruction="remove the rain")
    assert isinstance(out, Image.Image) and out.size == im.size and out.mode == "RGB"
    grey = model.restore(Image.fromarray(data.camera()[:20, :24]), task="dehaze")
    assert grey.mode == "L" and grey.size == (24, 20)
    path = tmp_path / "x.png"
    Image.fromarray(data.coffee()[:20, :20]).convert("RGBA").save(path)
    out, choice = model.restore(path, instruction="it was pouring and my hand shook", return_choice=True)
    assert out.mode == "RGBA" and choice.tasks == ["deblur", "derain"] and choice.source == "instruction"


def test_blind_mode_uses_the_classifier(model):
    _out, choice = model.restore(data.astronaut()[:64, :64], return_choice=True)
    assert choice.source == "blind" and choice.tasks[0] in TASKS and 0 < choice.confidences[0] <= 1


def test_bad_requests(model):
    with pytest.raises(ValueError, match="unknown task 'sharpen'"):
        model.restore(data.astronaut()[:16, :16], task="sharpen")
    with pytest.raises(ValueError, match="not both"):
        model.restore(data.astronaut()[:16, :16], task="denoise", instruction="remove the noise")
    with pytest.raises(TypeError, match="path, a PIL image or a NumPy array"):
        model.restore([1, 2, 3], task="denoise")


def _photos(folder):
    folder.mkdir()
    Image.fromarray(data.astronaut()[:24, :24]).save(folder / "a.png")
    Image.fromarray(data.coffee()[:24, :30]).save(folder / "b.jpg")
    return folder


def test_cli_restore_beside_inputs_and_never_overwrites(model_dir, tmp_path, capsys):
    photos = _photos(tmp_path / "in")
    before = (photos / "a.png").read_bytes()
    assert main(["restore", str(photos / "a.png"), str(photos / "b.jpg"), "--model", str(model_dir), "-t", "denoise"]) == 0
    assert (photos / "a.restored.png").is_file() and (photos / "b.restored.png").is_file()
    assert (photos / "a.png").read_bytes() == before
    # the restored files are not picked up again from the folder, and an output never replaces an input
    assert main(["restore", str(photos), "--model", str(model_dir), "-t", "denoise", "-o", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.restored.png", "b.restored.png"]
    kept = (photos / "a.restored.png").read_bytes()
    rc = main(["restore", str(photos / "a.png"), str(photos / "a.restored.png"), "--model", str(model_dir), "-t", "denoise"])
    assert rc == 1 and "a.restored.png is an input; refusing to overwrite it" in capsys.readouterr().err
    assert (photos / "a.restored.png").read_bytes() == kept


def test_cli_restore_instruction_glob_and_corrupt_file(model_dir, tmp_path, capsys):
    photos = _photos(tmp_path / "in")
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    rc = main(["restore", str(photos / "*.png"), str(photos / "b.jpg"), "--model", str(model_dir),
               "-i", "remove the snow", "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 1
    done = [ln for ln in captured.out.splitlines() if " -> " in ln]  # one line per file, tasks on it
    assert len(done) == 2 and all(ln.endswith("[from the instruction]") and ": desnow (" in ln for ln in done)
    err_lines = [ln for ln in captured.err.splitlines() if "broken.png" in ln]
    assert len(err_lines) == 1 and "not a readable image" in err_lines[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.restored.png", "b.restored.png"]
    assert main(["restore", str(photos / "a.png"), "--model", str(model_dir), "-i", "crop it to a square"]) == 2
    assert "Supported tasks" in capsys.readouterr().err


def test_without_a_shipped_model_the_error_says_what_to_do(tmp_path, capsys, monkeypatch):
    import instruct_ipt.model as model_module

    monkeypatch.setattr(model_module, "default_model_dir", lambda: tmp_path / "none")
    assert main(["restore", str(tmp_path / "x.png"), "-t", "denoise"]) == 2
    assert "no default model is shipped" in capsys.readouterr().err


def test_classifier_round_trip(tmp_path):
    clf = DegradationClassifier(["a", "b"], width=8)
    clf.save(tmp_path / "c.safetensors")
    back = DegradationClassifier.load(tmp_path / "c.safetensors")
    probs = back.predict(np.random.default_rng(0).random((50, 70, 3)).astype(np.float32))
    assert set(probs) == {"a", "b"} and abs(sum(probs.values()) - 1) < 1e-5
    assert probs == clf.predict(np.random.default_rng(0).random((50, 70, 3)).astype(np.float32))


class _Recorder:
    """A degradation that keeps what it was given (and returns it unchanged)."""

    task = "a"

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def __call__(self, clean, rng):
        self.seen.append(clean)
        return Degraded(clean)


def test_blind_samples_are_crops_of_a_degraded_context():
    rec = _Recorder()
    photo = data.astronaut()
    ds = BlindDataset([photo], {"a": rec}, length=8, patch=24, context=64, soften=0.0, seed=3)
    sample = ds[5]
    assert sample["input"].shape == (3, 24, 24) and sample["task"] == 0
    context = rec.seen[-1]
    assert context.shape == (64, 64, 3)  # the whole context was degraded, not only the patch
    crop = sample["input"].numpy().transpose(1, 2, 0)
    windows = np.lib.stride_tricks.sliding_window_view(context, (24, 24, 3))[..., 0, :, :, :]
    assert np.abs(windows - crop).max(axis=(-3, -2, -1)).min() == 0  # the sample lies inside it
    assert np.array_equal(ds[5]["input"], sample["input"])  # deterministic per index
    with pytest.raises(IndexError):
        ds[8]


def test_blind_softening_blurs_the_clean_context():
    plain, soft, sharp = _Recorder(), _Recorder(), _Recorder()
    photo = data.astronaut()
    BlindDataset([photo], {"a": plain}, length=1, patch=16, context=48, soften=0.0, seed=0)[0]
    BlindDataset([photo], {"a": soft}, length=1, patch=16, context=48, soften=1.0, keep_sharp=(), seed=0)[0]
    BlindDataset([photo], {"a": sharp}, length=1, patch=16, context=48, soften=1.0, keep_sharp=("a",), seed=0)[0]
    a, b = plain.seen[0], soft.seen[0]
    assert abs(a.mean() - b.mean()) < 0.01  # same square
    assert np.abs(np.diff(b, axis=1)).mean() < 0.9 * np.abs(np.diff(a, axis=1)).mean()  # but smoother
    assert np.array_equal(sharp.seen[0], a)  # a blur task's samples are never softened


def test_tiling_blends_to_the_untiled_result(model):
    from instruct_ipt.inference import restore_array, run_tiled

    rgb = data.astronaut()[:96, :120].astype(np.float32) / 255
    # an exact per-pixel function: tiles and blending must reproduce it everywhere
    np.testing.assert_allclose(run_tiled(lambda t: t * 2 + 1, rgb, tile=40, overlap=12), rgb * 2 + 1, atol=1e-5)
    calls = []
    tiled = restore_array(model, rgb, "denoise", tile=64, overlap=16, progress=lambda d, n: calls.append((d, n)))
    assert tiled.shape == rgb.shape and np.isfinite(tiled).all()
    assert calls[-1] == (6, 6)  # 2 x 3 tiles of 64 with stride 48 over 96 x 120
    with pytest.raises(ValueError, match="overlap"):
        run_tiled(lambda t: t, rgb, tile=16, overlap=16)


def test_cli_keeps_16_bit_grey_alpha_and_applies_exif(model_dir, tmp_path):
    import png

    from instruct_ipt.data.images import load_image

    src = tmp_path / "in"
    src.mkdir()
    deep = (data.astronaut()[:20, :28].astype(np.uint16) * 257)
    with open(src / "deep.png", "wb") as f:
        png.Writer(28, 20, greyscale=False, bitdepth=16).write(f, deep.reshape(20, 28 * 3))
    Image.fromarray(data.camera()[:18, :22]).save(src / "grey.png")
    Image.fromarray(np.dstack([data.coffee()[:16, :16], np.full((16, 16), 9, np.uint8)])).save(src / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    Image.fromarray(data.coffee()[:12, :30]).save(src / "turned.jpg", exif=exif)
    Image.fromarray(data.coffee()[:1, :1]).save(src / "dot.png")
    assert load_image(src / "deep.png").bit_depth == 16
    assert main(["restore", str(src), "--model", str(model_dir), "-t", "denoise", "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    _, _, _, info = png.Reader(filename=str(out / "deep.restored.png")).asDirect()
    assert info["bitdepth"] == 16 and not info["greyscale"]
    assert load_image(out / "deep.restored.png").rgb.shape == (20, 28, 3)
    assert Image.open(out / "grey.restored.png").mode == "L"
    rgba = Image.open(out / "rgba.restored.png")
    assert rgba.mode == "RGBA" and np.asarray(rgba)[..., 3].max() == 9
    assert Image.open(out / "turned.restored.png").size == (12, 30)  # upright: EXIF applied
    assert Image.open(out / "dot.restored.png").size == (1, 1)


def test_shipped_classifier_sees_strong_degradations():
    clf = DegradationClassifier.default()
    assert clf.tasks == TASKS
    clean = data.astronaut()[::2, ::2].astype(np.float32) / 255
    rng = np.random.default_rng(0)
    for task, params in [("denoise", {"sigma": 40}), ("derain", {}), ("desnow", {"density": 2.0})]:
        degraded = make_degradation(task, **params)(clean, rng).image
        probs = clf.predict(degraded)
        assert max(probs, key=probs.get) == task, (task, probs)


def test_cli_restore_checks_its_arguments_before_any_image(model_dir, tmp_path, capsys, monkeypatch):
    from instruct_ipt.data import images

    photos = _photos(tmp_path / "in")
    reads = []
    real = images.load_image
    monkeypatch.setattr(images, "load_image", lambda *a, **k: reads.append(a) or real(*a, **k))
    args = [str(photos / "a.png"), str(photos / "b.jpg"), "--model", str(model_dir)]
    assert main(["restore", *args, "-t", "sharpen"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task 'sharpen'" in err[0] and "denoise" in err[0]  # once, naming the tasks
    assert main(["restore", *args, "-t", "denoise", "--tile", "32", "--overlap", "32"]) == 2
    assert "--overlap 32: must be >= 0 and smaller than the tile (32)" in capsys.readouterr().err
    assert main(["restore", *args, "-t", "denoise", "--tile", "-1"]) == 2
    assert not reads and not list(photos.glob("*.restored.png"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_one_line(model_dir, tmp_path, capsys):
    photos = _photos(tmp_path / "in")
    assert main(["restore", str(photos / "a.png"), "--model", str(model_dir), "-t", "denoise", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = ("instruct-ipt restore: error: --device cuda: CUDA is not available on this machine "
                f"(torch {torch.__version__}); use --device cpu or auto")
    assert err == [expected]
    assert main(["restore", str(photos / "a.png"), "-t", "denoise", "--device", "gpu"]) == 2
    assert "not a device name" in capsys.readouterr().err
