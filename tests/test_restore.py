import logging
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from instruct_ipt import InstructIPT, RestorationPipeline
from instruct_ipt.cli import main
from instruct_ipt.data.degradations import Degraded, make_degradation
from instruct_ipt.instruct.blind import BLIND_FILE, BlindDataset, DegradationClassifier, train_classifier, vary_tone

TASKS = ["denoise", "deblur", "derain", "dehaze", "desnow", "jpeg"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    InstructIPT("tiny", tasks=TASKS).save_pretrained(d)
    ops = {t: make_degradation(t) for t in TASKS}
    train_classifier([data.astronaut()[:64, :64]], ops, steps=2, batch_size=4, patch_size=32, context=48).save(d / BLIND_FILE)
    return d


@pytest.fixture(scope="module")
def pipe(model_dir):
    return RestorationPipeline.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def model(pipe):
    return pipe.model


def test_numpy_in_numpy_out(pipe):
    rgb = data.astronaut()[:40, :52]
    out, choice = pipe(rgb, task="denoise", return_choice=True)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert choice.tasks == ["denoise"] and choice.source == "task"
    f = pipe(rgb.astype(np.float32) / 255, task="deblur")
    assert f.dtype == np.float32 and f.shape == rgb.shape
    grey = pipe(data.camera()[:30, :30], task="denoise")
    assert grey.shape == (30, 30) and grey.dtype == np.uint8
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 77, np.uint8)])
    out4 = pipe(rgba, task="denoise")
    assert out4.shape == rgba.shape and (out4[..., 3] == 77).all()
    deep = pipe(data.camera()[:20, :20].astype(np.uint16) * 257, task="denoise")
    assert deep.dtype == np.uint16 and deep.shape == (20, 20)


def test_pil_in_pil_out_and_path_in_restored_out(pipe, tmp_path):
    im = Image.fromarray(data.coffee()[:33, :47])
    out = pipe(im, instruction="remove the rain")
    assert isinstance(out, Image.Image) and out.size == im.size and out.mode == "RGB"
    grey = pipe(Image.fromarray(data.camera()[:20, :24]), task="dehaze")
    assert grey.mode == "L" and grey.size == (24, 20)
    deep = pipe(Image.fromarray(data.camera()[:20, :24].astype(np.uint16) * 257), task="dehaze")
    assert deep.mode == "I;16" and np.asarray(deep).max() > 255  # 16-bit grey keeps its depth
    path = tmp_path / "x.png"
    Image.fromarray(data.coffee()[:20, :20]).convert("RGBA").save(path)
    out, choice = pipe(path, instruction="it was pouring and my hand shook", return_choice=True)
    assert out.to_pil().mode == "RGBA" and out.to_array().shape == (20, 20, 4)
    assert choice.tasks == ["deblur", "derain"] and choice.source == "instruction" and out.choice == choice


def test_blind_mode_uses_the_classifier(pipe):
    _out, choice = pipe(data.astronaut()[:64, :64], return_choice=True)
    assert choice.source == "blind" and choice.tasks[0] in TASKS and 0 < choice.confidences[0] <= 1


def test_bad_requests(pipe):
    with pytest.raises(ValueError, match="unknown task 'sharpen'"):
        pipe(data.astronaut()[:16, :16], task="sharpen")
    with pytest.raises(ValueError, match="not both"):
        pipe(data.astronaut()[:16, :16], task="denoise", instruction="remove the noise")
    with pytest.raises(TypeError, match="path, a PIL image or a NumPy array"):
        pipe([1, 2, 3], task="denoise")
    with pytest.raises(ValueError, match="overlap 16: must be >= 0 and smaller than the tile"):
        pipe(data.astronaut()[:16, :16], task="denoise", tile=16, overlap=16)
    with pytest.raises(ValueError, match="batch 0"):
        pipe(data.astronaut()[:16, :16], task="denoise", batch=0)


def _kinds(folder):
    """One file of each kind a user brings: 8-bit RGB, 16-bit RGB, 8-bit grey, RGBA, 16-bit grey."""
    import png

    folder.mkdir()
    Image.fromarray(data.astronaut()[:24, :32]).save(folder / "rgb8.png")
    deep = data.coffee()[:20, :28].astype(np.uint16) * 257 + 3
    with open(folder / "rgb16.png", "wb") as f:
        png.Writer(28, 20, greyscale=False, bitdepth=16).write(f, deep.reshape(20, 28 * 3))
    Image.fromarray(data.camera()[:18, :22]).save(folder / "grey8.png")
    Image.fromarray(np.dstack([data.coffee()[:16, :20], np.arange(320, dtype=np.uint8).reshape(16, 20)])).save(folder / "rgba.png")
    with open(folder / "grey16.png", "wb") as f:
        png.Writer(22, 18, greyscale=True, bitdepth=16).write(f, data.camera()[:18, :22].astype(np.uint16) * 257 + 5)
    return sorted(folder.iterdir())


def test_cli_and_python_give_the_same_pixels(pipe, model_dir, tmp_path):
    import png

    files = _kinds(tmp_path / "in")
    assert main(["restore", str(tmp_path / "in"), "--model", str(model_dir), "-t", "derain", "-o", str(tmp_path / "cli")]) == 0
    for f in files:
        cli = tmp_path / "cli" / f"{f.stem}.restored.png"
        restored = pipe(f, task="derain")
        py = restored.save(tmp_path / "py" / f"{f.stem}.png")
        assert py.read_bytes() == cli.read_bytes(), f.name  # the same file, byte for byte
        _, _, rows, info = png.Reader(filename=str(cli)).asDirect()
        pixels = np.vstack([np.asarray(r) for r in rows]).reshape(info["size"][1], info["size"][0], info["planes"]).squeeze()
        assert np.array_equal(restored.to_array(), pixels), f.name
        # the same pixels from the file's array as from the file
        _, _, rows, _ = png.Reader(filename=str(f)).asDirect()
        src = np.vstack([np.asarray(r) for r in rows]).reshape(pixels.shape[0], pixels.shape[1], -1).squeeze()
        src = src.astype(np.uint16 if info["bitdepth"] == 16 else np.uint8)
        assert np.array_equal(pipe(src, task="derain"), pixels), f.name


def test_a_pipeline_folder_travels_with_its_own_head_and_classifier(tmp_path):
    from instruct_ipt.instruct import InstructionHead
    from instruct_ipt.instruct.blind import BLIND_FILE
    from instruct_ipt.instruct.head import HEAD_FILE

    model = InstructIPT("tiny", tasks=["denoise", "sharpen"], task_grid_spans={"sharpen": None})
    head = InstructionHead(["denoise", "sharpen"], hidden=8)
    clf = DegradationClassifier(["denoise", "sharpen"], width=8)
    RestorationPipeline(model, head, clf).save_pretrained(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(["config.json", "model.safetensors", HEAD_FILE, BLIND_FILE])
    back = RestorationPipeline.from_pretrained(tmp_path / "p", device="cpu")
    assert back.tasks == ["denoise", "sharpen"] and back.model.task_grid_spans == {"sharpen": None}
    assert back.head.tasks == ["denoise", "sharpen"] and back.classifier.tasks == ["denoise", "sharpen"]
    torch.testing.assert_close(back.classifier.state_dict(), clf.state_dict())
    assert back.interpreter.head is back.head  # the head fits the model: no error
    # a bare model folder gets the shipped head, which does not know the new task: a clear error when used
    model.save_pretrained(tmp_path / "bare")
    bare = RestorationPipeline.from_pretrained(tmp_path / "bare", device="cpu")
    with pytest.raises(ValueError, match="instruct-ipt train-head --model DIR"):
        bare(data.astronaut()[:16, :16], instruction="remove the noise")
    assert bare(data.astronaut()[:16, :16], task="sharpen").shape == (16, 16, 3)  # tasks by name still run


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


def test_cli_restore_refuses_two_inputs_that_would_share_one_output(model_dir, tmp_path, capsys):
    photos = _photos(tmp_path / "in")
    Image.fromarray(data.coffee()[:20, :20]).save(photos / "a.jpg")  # a.png and a.jpg: both a.restored.png
    assert main(["restore", str(photos), "--model", str(model_dir), "-t", "denoise"]) == 2
    err = capsys.readouterr().err
    assert "two inputs would be written to one output" in err and "a.png" in err and "a.jpg" in err
    assert not list(photos.glob("*.restored.png"))  # nothing written, not even b's
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(data.coffee()[:20, :20]).save(other / "b.jpg")  # the same name from two folders into one -o
    assert main(["restore", str(photos / "b.jpg"), str(other / "b.jpg"), "--model", str(model_dir), "-t", "denoise",
                 "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    assert main(["restore", str(photos / "b.jpg"), str(other / "b.jpg"), "--model", str(model_dir), "-t", "denoise"]) == 0


def test_pixels_that_are_not_numbers_are_refused_with_the_reason(pipe, tmp_path, capsys, model_dir):
    from instruct_ipt.data.images import ImageReadError, load_image

    rgb = data.astronaut()[:32, :32].astype(np.float32) / 255
    rgb[3, 4, 1] = np.nan
    for kw in ({"task": "denoise"}, {}):  # a named task, and blind mode (whose thresholds NaN passed silently)
        with pytest.raises(ValueError, match="1 pixel.* not numbers"):
            pipe(rgb, **kw)
    with pytest.raises(ValueError, match="not numbers"):
        pipe.classifier.predict(rgb)
    grey = np.full((16, 16), 0.5, np.float32)
    grey[0, 0] = np.inf
    Image.fromarray(grey, mode="F").save(tmp_path / "f.tif")  # a float TIFF: np.clip would have kept the NaN
    with pytest.raises(ImageReadError, match="1 pixel"):
        load_image(tmp_path / "f.tif")
    assert main(["restore", str(tmp_path / "f.tif"), "--model", str(model_dir), "-t", "denoise"]) == 1
    assert "not numbers" in capsys.readouterr().err and not (tmp_path / "f.restored.png").exists()


def test_a_file_of_several_frames_is_restored_from_its_first_with_a_warning(pipe, model_dir, tmp_path, capsys):
    from instruct_ipt.data.images import load_image

    frames = [Image.fromarray(np.full((16, 20, 3), v, np.uint8)) for v in (40, 120, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:2])
    frames[0].save(tmp_path / "one.png")
    # a camera's JPEG with a preview (or a phone's with an HDR gain map) is one photo, not an animation
    frames[0].save(tmp_path / "camera.jpg", format="MPO", save_all=True, append_images=[frames[1].resize((8, 6))])
    assert Image.open(tmp_path / "camera.jpg").n_frames == 2
    names = ("anim.gif", "pages.tif", "one.png", "camera.jpg")
    assert [load_image(tmp_path / n).frames for n in names] == [3, 2, 1, 1]
    assert np.allclose(load_image(tmp_path / "anim.gif").rgb, 40 / 255)  # the first frame, not a later one
    assert main(["restore", str(tmp_path / "anim.gif"), str(tmp_path / "one.png"), str(tmp_path / "camera.jpg"),
                 "--model", str(model_dir), "-t", "denoise"]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "frames" in ln]
    assert warned == [(f"instruct-ipt restore: warning: {tmp_path / 'anim.gif'} has 3 frames (an animation or a "
                       "multi-page file); only the first is restored")]
    assert (tmp_path / "anim.restored.png").is_file()
    with pytest.warns(UserWarning, match=r"pages.tif has 2 frames .* only the first is restored"):
        pipe(tmp_path / "pages.tif", task="denoise")


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


def test_blind_tone_renders_the_clean_context_otherwise_before_degrading():
    plain, toned = _Recorder(), _Recorder()
    photo = data.astronaut()
    kw = {"length": 6, "patch": 16, "context": 48, "soften": 0.0, "seed": 2}
    plain_ds = BlindDataset([photo], {"a": plain}, tone=0.0, **kw)
    toned_ds = BlindDataset([photo], {"a": toned}, tone=1.0, **kw)
    for i in range(6):
        assert torch.equal(plain_ds[i]["labels"], toned_ds[i]["labels"])
    a, b = np.stack(plain.seen), np.stack(toned.seen)
    assert a.shape == b.shape and b.dtype == np.float32 and 0 <= b.min() and b.max() <= 1
    # what the operator degrades is the same square, rendered otherwise: each sample changed
    assert (np.abs(a - b).mean(axis=(1, 2, 3)) > 0.01).all()
    assert np.corrcoef(a[0].ravel(), b[0].ravel())[0, 1] > 0.8
    with pytest.raises(ValueError, match="tone"):
        BlindDataset([photo], {"a": plain}, length=1, tone=1.5)


def test_vary_tone_never_lifts_black():
    rng = np.random.default_rng(0)
    img = np.random.default_rng(1).random((8, 8, 3)).astype(np.float32)
    img[:2] = 0.0  # black rows: what haze's veil (A * (1 - t)) would lift
    outs = [vary_tone(img, rng) for _ in range(50)]
    assert all(np.array_equal(o[:2], img[:2]) for o in outs)
    means = [o[2:].mean() for o in outs]
    assert max(means) - min(means) > 0.2  # exposure and tone curve vary
    orange = np.full((2, 2, 3), (0.5, 0.3, 0.2), np.float32)  # colourfulness (max - min) / mean: 0.9
    colour = [(o.max() - o.min()) / o.mean() for o in (vary_tone(orange, rng)[0, 0] for _ in range(50))]
    assert min(colour) < 0.5 and max(colour) > 1.0  # muted as no tone curve alone makes it (>= 0.6), or richer


def test_tiling_blends_to_the_untiled_result(model):
    from instruct_ipt.inference import restore_array, run_tiled

    rgb = data.astronaut()[:96, :120].astype(np.float32) / 255
    # an exact per-pixel function: tiles and blending must reproduce it everywhere, batched or not
    for batch in (1, 4, 100):
        sizes = []

        def fn(t, sizes=sizes):
            sizes.append(len(t))
            return t * 2 + 1

        np.testing.assert_allclose(run_tiled(fn, rgb, tile=40, overlap=12, batch=batch), rgb * 2 + 1, atol=1e-5)
        assert sizes == {1: [1] * 12, 4: [4, 4, 4], 100: [12]}[batch]  # 3 x 4 tiles, grouped by `batch`
    calls = []
    tiled = restore_array(model, rgb, "denoise", tile=64, overlap=16, progress=lambda d, n: calls.append((d, n)))
    assert tiled.shape == rgb.shape and np.isfinite(tiled).all()
    assert calls[-1] == (6, 6)  # 2 x 3 tiles of 64 with stride 48 over 96 x 120
    batched = restore_array(model, rgb, "denoise", tile=64, overlap=16, batch=4)
    np.testing.assert_allclose(batched, tiled, atol=1e-5)  # one forward pass for 4 tiles: the same result
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


def test_the_colour_profile_of_a_photo_is_kept_where_it_fits_the_output(pipe, model_dir, tmp_path):
    """A Display P3 or Adobe RGB photo restored without its ICC profile shows other colours in every
    viewer: the output carries the source's profile (8- and 16-bit files, PIL images), but not one of
    another colour space (a CMYK JPEG's, whose pixels Pillow converted to RGB)."""
    import struct
    import zlib

    import png
    from PIL import ImageCms

    from instruct_ipt.data.images import load_image

    rgb_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert rgb_icc[16:20] == b"RGB "
    grey_icc, cmyk_icc = rgb_icc[:16] + b"GRAY" + rgb_icc[20:], rgb_icc[:16] + b"CMYK" + rgb_icc[20:]  # (headers only)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(data.coffee()[:16, :20]).save(src / "p3.jpg", icc_profile=rgb_icc)
    Image.fromarray(data.camera()[:16, :20]).save(src / "grey.png", icc_profile=grey_icc)
    Image.fromarray(data.coffee()[:16, :20]).convert("CMYK").save(src / "print.jpg", icc_profile=cmyk_icc)
    Image.fromarray(data.coffee()[:16, :20]).save(src / "plain.png")
    with open(src / "deep.png", "wb") as f:  # a 16-bit file (read and written with pypng) with the profile spliced in
        png.Writer(20, 16, greyscale=False, bitdepth=16).write(f, (data.coffee()[:16, :20].astype(np.uint16) * 257).reshape(16, 60))
    Image.open(src / "p3.jpg").save(tmp_path / "probe.png", icc_profile=rgb_icc)  # (Pillow's own iCCP chunk, to copy)
    chunk = next(c for c in png.Reader(filename=str(tmp_path / "probe.png")).chunks() if c[0] == b"iCCP")[1]
    raw = (src / "deep.png").read_bytes()
    (src / "deep.png").write_bytes(raw[:33] + struct.pack(">I", len(chunk)) + b"iCCP" + chunk
                                   + struct.pack(">I", zlib.crc32(b"iCCP" + chunk)) + raw[33:])
    assert [load_image(src / n).icc for n in ("p3.jpg", "grey.png", "print.jpg", "plain.png", "deep.png")] == [
        rgb_icc, grey_icc, None, None, rgb_icc]
    assert main(["restore", str(src), "--model", str(model_dir), "-t", "denoise", "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    kept = {n: Image.open(out / f"{n}.restored.png").info.get("icc_profile") for n in ("p3", "grey", "print", "plain", "deep")}
    assert kept == {"p3": rgb_icc, "grey": grey_icc, "print": None, "plain": None, "deep": rgb_icc}
    _, _, _, info = png.Reader(filename=str(out / "deep.restored.png")).asDirect()  # still 16-bit, and a valid PNG
    assert info["bitdepth"] == 16
    photo = Image.open(src / "p3.jpg")
    assert pipe(photo, task="denoise").info.get("icc_profile") == rgb_icc
    unsigned = rgb_icc[:36] + b"xxxx" + rgb_icc[40:]  # no "acsp" signature: not a profile
    Image.fromarray(data.coffee()[:16, :20]).save(src / "odd.png", icc_profile=unsigned)
    assert load_image(src / "odd.png").icc is None
    assert pipe(src / "p3.jpg", task="denoise").to_pil().info.get("icc_profile") == rgb_icc


def test_a_photos_exif_goes_with_it_upright(model_dir, tmp_path):
    """Camera, date and the rest of a photo's EXIF are kept in the output (8- and 16-bit), with the
    orientation reset: the pixels were turned upright when read, and a viewer must not turn them again."""
    from instruct_ipt.data.images import load_image, save_image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    exif[0x010F] = "Canon"
    exif.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"  # DateTimeOriginal, in the Exif sub-IFD
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(data.coffee()[:12, :30]).save(src / "camera.jpg", exif=exif)
    save_image(src / "deep.png", data.coffee()[:12, :30] / 255.0, bit_depth=16, exif=exif.tobytes())  # orientation 6 too
    Image.fromarray(data.coffee()[:12, :30]).save(src / "bare.png")
    assert load_image(src / "deep.png").rgb.shape == (30, 12, 3) and load_image(src / "bare.png").exif is None
    assert main(["restore", str(src), "--model", str(model_dir), "-t", "denoise", "-o", str(tmp_path / "out")]) == 0
    for name in ("camera", "deep"):
        out = Image.open(tmp_path / "out" / f"{name}.restored.png")
        kept = out.getexif()
        assert out.size == (12, 30) and kept.get(0x0112, 1) == 1, name  # upright, and said to be
        assert kept[0x010F] == "Canon" and kept.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05", name
    assert not Image.open(tmp_path / "out" / "bare.restored.png").getexif()


def test_16_bit_and_float_colour_tiffs_are_read_at_full_depth(model_dir, tmp_path, monkeypatch):
    """What raw converters and editors export: Pillow cut 16-bit RGB TIFFs to 8 bits (and could not
    open float ones); the restored file of a 16-bit source is a 16-bit PNG."""
    import tifffile

    from instruct_ipt.data.images import load_image

    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (12, 20, 3), dtype=np.uint16)
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "deep.tif", deep, photometric="rgb", compression="zlib", iccprofile=b"\0" * 16 + b"RGB " + b"\0" * 16 + b"acsp" + b"\0" * 88)
    planar = rng.integers(0, 65536, (4, 12, 20), dtype=np.uint16)  # RGBA, one plane per sample
    tifffile.imwrite(src / "planar.tif", planar, photometric="rgb", planarconfig="separate", extrasamples=["unassalpha"])
    hdr = rng.random((12, 20, 3)).astype(np.float32) * 1.5  # above 1: clipped, as float grey files are
    tifffile.imwrite(src / "float.tif", hdr, photometric="rgb", extratags=[(274, "H", 1, 6, True)])  # turned 90 degrees
    tifffile.imwrite(src / "eight.tif", deep.astype(np.uint8), photometric="rgb")  # 8-bit: Pillow's, as before
    tifffile.imwrite(src / "pages.tif", np.stack([deep, deep]), photometric="rgb")
    got = {n: load_image(src / f"{n}.tif") for n in ("deep", "planar", "float", "eight", "pages")}
    np.testing.assert_allclose(got["deep"].rgb, deep / 65535, atol=1e-6)
    assert got["deep"].bit_depth == 16 and got["deep"].icc[16:20] == b"RGB "
    np.testing.assert_allclose(got["planar"].rgb, np.moveaxis(planar[:3], 0, -1) / 65535, atol=1e-6)
    np.testing.assert_allclose(got["planar"].alpha, planar[3] / 65535, atol=1e-6)
    np.testing.assert_allclose(got["float"].rgb, np.rot90(np.clip(hdr, 0, 1), -1), atol=1e-6)  # upright
    assert got["eight"].bit_depth == 8 and got["pages"].frames == 2 and got["pages"].bit_depth == 16
    assert main(["restore", str(src / "deep.tif"), "--model", str(model_dir), "-t", "denoise", "-o", str(tmp_path / "out")]) == 0
    import png

    _, _, _, info = png.Reader(filename=str(tmp_path / "out" / "deep.restored.png")).asDirect()
    assert info["bitdepth"] == 16 and not info["greyscale"]
    kept = Image.open(tmp_path / "out" / "deep.restored.png").getexif()  # the TIFF's own tags, not its storage layout
    assert kept[305] == "tifffile.py" and not {256, 257, 258, 259, 273, 279} & set(kept)
    # a compression tifffile cannot decode without imagecodecs (LZW): Pillow reads it at 8 bits, and says so
    def needs_codecs(self, *args, **kwargs):
        raise KeyError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", needs_codecs)
    with pytest.warns(UserWarning, match=r"deep.tif: read at 8 bits: .*imagecodecs"):
        fallback = load_image(src / "deep.tif")
    assert fallback.bit_depth == 8 and np.abs(fallback.rgb - deep / 65535).max() <= 1 / 255


def test_a_damaged_16_bit_tiff_is_one_line_not_tifffiles_log(model_dir, tmp_path, capsys, caplog):
    """tifffile logs each damaged tag it meets (several lines on stderr for one file) before the one
    line that names the file: only that line is said."""
    import tifffile

    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint16), photometric="rgb")
    raw = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", raw, 4)[0]
    for k in range(struct.unpack_from("<H", raw, ifd)[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack_from("<H", raw, entry)[0] in (262, 273):  # photometric, strip offsets: a type that is none
            struct.pack_into("<H", raw, entry + 2, 21)
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.DEBUG):
        assert main(["restore", str(path), "--model", str(model_dir), "-t", "denoise"]) == 1
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]
    said = capsys.readouterr().err.strip().splitlines()
    assert said[0] == f"instruct-ipt restore: {path}: not a readable image (UnidentifiedImageError: cannot identify " \
                      f"image file '{path}')" and said[1:] == ["1 of 1 image(s) failed"]


def test_tifffile_is_quiet_only_in_the_thread_that_reads(caplog):
    """The demo reads files in several threads: one thread's read silences tifffile's log for itself
    only, and no interleaving of reads leaves tifffile silenced."""
    import threading

    from instruct_ipt.data.images import _tifffile_quiet

    log = logging.getLogger("tifffile")
    inside, logged = threading.Event(), threading.Event()

    def reader() -> None:
        with _tifffile_quiet():
            log.error("the reader's")
            inside.set()
            logged.wait(5)

    with caplog.at_level(logging.DEBUG, logger="tifffile"):
        t = threading.Thread(target=reader)
        t.start()
        inside.wait(5)
        log.error("another thread's")  # while the reader is inside
        logged.set()
        t.join()
        log.error("after")
    assert [r.getMessage() for r in caplog.records if r.name == "tifffile"] == ["another thread's", "after"]
    assert log.level in (logging.NOTSET, logging.DEBUG)


def test_exif_of_tiffs_and_bigtiffs_is_the_photos_own_and_deep_files_are_size_checked(tmp_path, monkeypatch):
    """A TIFF's EXIF is its first IFD: camera and date are kept, its storage layout and big blocks
    (Photoshop layers, XMP) are not; a BigTIFF's tags are written as plain EXIF (a BigTIFF header in a
    PNG's eXIf broke every reader, Pillow's too); and the 16-bit readers that decode without Pillow
    keep its decompression-bomb limit."""
    import tifffile

    from instruct_ipt.data.images import ImageReadError, load_image, save_image

    pixels = data.coffee()[:12, :20]
    tags = [(271, "s", 0, "Canon", True), (33432, "s", 0, "me", True), (37724, "B", 70000, b"L" * 70000, True),
            (274, "H", 1, 6, True)]
    tifffile.imwrite(tmp_path / "eight.tif", pixels, photometric="rgb", extratags=tags)
    tifffile.imwrite(tmp_path / "big.tif", pixels.astype(np.uint16) * 257, photometric="rgb", bigtiff=True,
                     extratags=tags)
    for name in ("eight", "big"):
        img = load_image(tmp_path / f"{name}.tif")
        assert img.rgb.shape == (20, 12, 3), name  # upright
        save_image(tmp_path / f"{name}.png", img.rgb, bit_depth=img.bit_depth, exif=img.exif)
        kept = Image.open(tmp_path / f"{name}.png").getexif()
        assert (kept[271], kept[33432], kept.get(0x0112, 1)) == ("Canon", "me", 1), name
        assert not {256, 273, 37724} & set(kept), name
        assert img.exif.removeprefix(b"Exif\0\0")[:4] in (b"II*\0", b"MM\0*") and len(img.exif) < 1000, name  # plain, small
        save_image(tmp_path / f"{name}.jpg", img.rgb, exif=img.exif)  # (fits a JPEG's one marker)
    with pytest.warns(UserWarning, match=r"big.jpg: the EXIF block \(70006 bytes\) is left out: a JPEG holds at most 65533"):
        save_image(tmp_path / "big.jpg", pixels / 255.0, exif=b"Exif\0\0" + b"\0" * 70000)
    assert not Image.open(tmp_path / "big.jpg").getexif()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 240 pixels: over twice the limit
    save_image(tmp_path / "deep.png", pixels / 255.0, bit_depth=16)
    for name in ("big.tif", "deep.png"):
        with pytest.raises(ImageReadError, match=rf"{name}: not a readable image \(DecompressionBombError: 240 pixels"):
            load_image(tmp_path / name)


def test_an_iphones_heic_photo_is_restored_with_its_profile_and_exif(model_dir, tmp_path, capsys):
    """HEIC, an iPhone's format (Display P3, with EXIF), through pillow-heif, the ``heif`` extra; in a
    folder beside a JPEG of its name (a phone's export) it is left out, said on stderr: both would be
    written to one output."""
    pytest.importorskip("pillow_heif")
    from PIL import ImageCms

    from instruct_ipt.data.images import heif_supported, list_images, load_image

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Apple"
    assert heif_supported()  # (so that Pillow can write one for the test)
    Image.fromarray(data.coffee()[:16, :24]).save(tmp_path / "IMG_0001.HEIC", exif=exif.tobytes(), icc_profile=icc,
                                                  quality=95)
    assert list_images(tmp_path) == [tmp_path / "IMG_0001.HEIC"]  # a folder's HEIC photos are found
    photo = load_image(tmp_path / "IMG_0001.HEIC")
    assert photo.rgb.shape == (24, 16, 3) and photo.icc == icc  # turned upright, once
    assert np.abs(photo.rgb - np.rot90(data.coffee()[:16, :24], -1) / 255).mean() < 0.03
    assert main(["restore", str(tmp_path / "IMG_0001.HEIC"), "--model", str(model_dir), "-t", "denoise"]) == 0
    out = Image.open(tmp_path / "IMG_0001.restored.png")
    assert out.size == (16, 24) and out.info.get("icc_profile") == icc and out.getexif()[0x010F] == "Apple"
    Image.fromarray(data.coffee()[:16, :24]).save(tmp_path / "IMG_0001.JPG")  # the same photo's other copy
    listed = list_images(tmp_path)
    assert tmp_path / "IMG_0001.JPG" in listed and tmp_path / "IMG_0001.HEIC" not in listed
    assert main(["restore", str(tmp_path), "--model", str(model_dir), "-t", "denoise", "-o", str(tmp_path / "o")]) == 0
    assert f"instruct-ipt restore: {tmp_path / 'IMG_0001.HEIC'} left out: a copy of another format has its name" \
        in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["IMG_0001.restored.png"]


def test_a_10_bit_heic_is_read_and_restored_at_full_depth(model_dir, tmp_path):
    """An iPhone's HDR photo or a camera's 10-bit .hif: read at its depth (pillow-heif's plugin opens
    every HEIF at 8 bits, banding a smooth sky), upright once, with its EXIF; restored to a 16-bit PNG."""
    pillow_heif = pytest.importorskip("pillow_heif")
    from instruct_ipt.data.images import ImageReadError, heif_supported, load_image

    ramp = np.linspace(0.40, 0.46, 64)  # a sky's gentle gradient: 16 steps at 8 bits, about 60 at 10
    rgb = np.stack([np.tile(ramp, (40, 1)) + d for d in (0.0, 0.05, 0.1)], axis=2)
    rgb[:8, :8] = 1.0  # white stays white (10 bits shifted up to 16 are 65472 at most)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Apple"
    path = tmp_path / "IMG_0002.HEIC"
    pillow_heif.from_bytes(mode="RGB;16", size=(64, 40), data=(rgb * 65535).astype(np.uint16).tobytes()).save(
        path, quality=-1, exif=exif.tobytes())  # (16-bit samples are written as a 10-bit HEIF)
    assert heif_supported()
    with Image.open(path) as im:
        eight = np.asarray(im.convert("RGB"))[..., 1]
    photo = load_image(path)
    assert photo.bit_depth == 16 and photo.rgb.shape == (64, 40, 3)  # turned upright, once
    assert np.abs(photo.rgb - np.rot90(rgb, -1)).mean() < 0.01 and photo.rgb.max() == 1.0
    assert len(np.unique(photo.rgb[..., 1])) >= 3 * len(np.unique(eight))
    assert main(["restore", str(path), "--model", str(model_dir), "-t", "denoise"]) == 0
    out = tmp_path / "IMG_0002.restored.png"
    assert out.read_bytes()[24] == 16  # IHDR's bit depth
    assert Image.open(out).getexif()[0x010F] == "Apple"
    (tmp_path / "vvc.heic").write_bytes(path.read_bytes().replace(b"hvc1", b"vvc1"))  # a codec without a decoder here
    with pytest.raises(ImageReadError, match="vvc.heic: not a readable image"):
        load_image(tmp_path / "vvc.heic")


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    """The start of an ISO-media file: its ftyp box (size, type, major brand, version, compatible brands)."""
    body = major + b"\0\0\0\0" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\0" * 32


def test_a_heif_photo_without_pillow_heif_says_what_to_install(tmp_path, monkeypatch):
    """Detected by its brands, so an iPhone's HEIC (or a camera's .hif) gets the install line - but an
    AVIF, which shares the generic brand mif1 and which Pillow reads itself, does not."""
    import sys

    from instruct_ipt.data.images import ImageReadError, _is_heif, load_image

    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed
    for name, head in (("a.heic", ftyp(b"heic", b"mif1", b"heic")), ("b.hif", ftyp(b"mif1", b"heic")),
                       ("c.heif", ftyp(b"mif1", b"miaf"))):
        (tmp_path / name).write_bytes(head)
        assert _is_heif((tmp_path / name).read_bytes()[:64]), name
        with pytest.raises(ImageReadError, match=rf"{name}: a HEIF/HEIC photo .* \(pip install 'instruct-ipt\[heif\]'\)"):
            load_image(tmp_path / name)
    for name, head in (("d.avif", ftyp(b"mif1", b"avif", b"miaf")), ("e.mp4", ftyp(b"isom", b"mp42"))):
        (tmp_path / name).write_bytes(head)
        assert not _is_heif((tmp_path / name).read_bytes()[:64]), name
        with pytest.raises(ImageReadError, match=rf"{name}: not a readable image"):
            load_image(tmp_path / name)


def test_restore_writes_the_format_asked_16_bit_tiffs_included(model_dir, tmp_path, capsys):
    """-f tif gives a 16-bit TIFF of a 16-bit source (what an editor round trip wants), with its
    profile and its EXIF's text tags (camera, date, copyright; tifffile writes no EXIF sub-IFD, so
    not exposure or lens); -f jpg an 8-bit JPEG at quality 95 with the photo's EXIF; a format not
    offered is refused."""
    import tifffile
    from PIL import ImageCms

    from instruct_ipt.data.images import load_image, save_image

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "in"
    src.mkdir()
    deep = np.random.default_rng(0).integers(0, 65536, (12, 20, 3), dtype=np.uint16)
    tifffile.imwrite(src / "deep.tif", deep, photometric="rgb", iccprofile=icc)
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0132] = "2026:11:30 09:15"  # (no seconds: tifffile's datetime argument refuses it)
    exif[0x8298] = "(c) Jo"
    exif[0x010E] = "Lake at dawn"
    exif.get_ifd(0x8769)[0x829A] = (1, 250)  # exposure time: in the EXIF sub-IFD
    save_image(src / "grey.png", np.repeat(data.camera()[:12, :20, None] / 255.0, 3, axis=2), np.full((12, 20), 0.5),
               grey=True, bit_depth=16, exif=exif.tobytes())
    for fmt in ("tif", "jpg"):
        assert main(["restore", str(src), "--model", str(model_dir), "-t", "denoise", "-f", fmt, "-o", str(tmp_path / fmt)]) == 0
    tif = load_image(tmp_path / "tif" / "deep.restored.tif")
    assert tif.bit_depth == 16 and tif.icc == icc and tifffile.imread(tmp_path / "tif" / "deep.restored.tif").dtype == np.uint16
    grey = load_image(tmp_path / "tif" / "grey.restored.tif")  # 16-bit grey + alpha: tifffile writes it, and reads it
    assert (grey.bit_depth, grey.grey) == (16, True) and np.abs(grey.alpha - 0.5).max() < 1e-4
    with tifffile.TiffFile(tmp_path / "tif" / "grey.restored.tif") as f:
        tags = {t.code: t.value for t in f.pages[0].tags}
    assert (tags[0x010F], tags[0x0132], tags[0x8298], tags[0x010E]) == ("Canon", "2026:11:30 09:15", "(c) Jo",
                                                                         "Lake at dawn")
    assert not {0x0131, 0x8769} & set(tags)  # (nor tifffile's name as the software)
    jpg = Image.open(tmp_path / "jpg" / "grey.restored.jpg")
    assert jpg.format == "JPEG" and jpg.mode == "L" and jpg.getexif()[0x010F] == "Canon"
    assert Image.open(tmp_path / "jpg" / "deep.restored.jpg").info.get("icc_profile") == icc
    with pytest.raises(SystemExit):
        main(["restore", str(src), "--model", str(model_dir), "-t", "denoise", "-f", "gif"])
    assert "invalid choice: 'gif'" in capsys.readouterr().err


def test_every_exif_orientation_and_16_bit_png_and_lab_read_upright_and_without_false_alpha(tmp_path):
    """A 16-bit PNG is read without Pillow, so its EXIF orientation is applied by hand: the same
    pixels as Pillow's own transpose of the 8-bit file, for each of the eight orientations. A LAB
    TIFF's band named 'A' is colour, not alpha."""
    import struct
    import zlib

    import png

    from instruct_ipt.data.images import load_image

    a = data.astronaut()[:20, :28]
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(a).save(tmp_path / "eight.png", exif=exif)
        with open(tmp_path / "deep.png", "wb") as f:
            png.Writer(28, 20, greyscale=False, bitdepth=16).write(f, (a.astype(np.uint16) * 257).reshape(20, -1))
        raw, blob = (tmp_path / "deep.png").read_bytes(), exif.tobytes()
        chunk = struct.pack(">I", len(blob)) + b"eXIf" + blob + struct.pack(">I", zlib.crc32(b"eXIf" + blob))
        at = raw.index(b"IDAT") - 4  # the eXIf chunk before the image data, as cameras write it
        (tmp_path / "deep.png").write_bytes(raw[:at] + chunk + raw[at:])
        eight, deep = load_image(tmp_path / "eight.png"), load_image(tmp_path / "deep.png")
        assert deep.bit_depth == 16 and (orientation > 1 or eight.rgb.shape == (20, 28, 3))
        np.testing.assert_array_equal(deep.rgb, eight.rgb, err_msg=f"orientation {orientation}")
    Image.fromarray(a).convert("LAB").save(tmp_path / "lab.tif")
    lab = load_image(tmp_path / "lab.tif")
    assert lab.alpha is None and np.abs(lab.rgb * 255 - a).mean() < 2  # LAB's round trip costs rounding only
    from instruct_ipt.data.images import ImageReadError

    bomb = Image.new("L", (8, 8))  # a header claiming ~2.7 gigapixels: refused as unreadable, not raised raw
    bomb.save(tmp_path / "bomb.png")
    raw = bytearray((tmp_path / "bomb.png").read_bytes())
    raw[16:24] = struct.pack(">II", 52000, 52000)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    (tmp_path / "bomb.png").write_bytes(bytes(raw))
    with pytest.raises(ImageReadError, match="bomb.png: not a readable image .*DecompressionBombError"):
        load_image(tmp_path / "bomb.png")


def test_shipped_classifier_sees_strong_degradations():
    clf = DegradationClassifier.default()
    assert clf.tasks == TASKS
    clean = data.astronaut()[::2, ::2].astype(np.float32) / 255
    rng = np.random.default_rng(0)
    for task, params in [("denoise", {"sigma": 40}), ("derain", {}), ("desnow", {"density": 2.0})]:
        degraded = make_degradation(task, **params)(clean, rng).image
        probs = clf.predict(degraded)
        assert max(probs, key=probs.get) == task, (task, probs)
    # it has a clean class: a clean photo gets nothing to do (its calibrated gate), a degraded one a task
    assert clf.clean_class and clf.peeling.clean is not None
    rocket = data.rocket().astype(np.float32) / 255
    assert clf.detect(rocket) == []
    assert [t for t, _ in clf.detect(make_degradation("derain")(rocket, rng).image)] == ["derain"]


def test_shipped_blind_mode_leaves_alone_a_clean_photo_it_takes_for_a_noisy_one():
    # scikit-image's printed text: the classifier's best guess is noise, not clean enough for the clean
    # gate; denoising it changes next to nothing, so blind mode with the shipped model does nothing
    clf, pipe = DegradationClassifier.default(), RestorationPipeline.from_pretrained(device="cpu")
    restore = lambda x, t: pipe.run(x, [t])
    text = np.repeat(data.text()[..., None], 3, axis=2).astype(np.float32) / 255
    probs = clf.predict(text)
    assert max(clf.tasks, key=probs.get) == "denoise" and probs["clean"] < clf.peeling.clean
    assert set(clf.peeling.first_change) == {"denoise"}
    assert clf.detect(text, probs, restore) == []
    noisy = make_degradation("denoise", sigma=15)(text, np.random.default_rng(0)).image
    assert [t for t, _ in clf.detect(noisy, restore=restore)][:1] == ["denoise"]


def test_shipped_blind_mode_suggests_the_haze_it_does_not_run():
    # haze after noise: not run (on a bright, flat clean photo it would cost single degradations:
    # docs/instructions.md), but mentioned; a photo with noise alone gets no suggestion
    clf, pipe = DegradationClassifier.default(), RestorationPipeline.from_pretrained(device="cpu")
    restore = lambda x, t: pipe.run(x, [t])
    assert set(clf.peeling.suggest) == {"dehaze"} and "dehaze" not in clf.peeling.further
    astronaut = data.astronaut().astype(np.float32) / 255
    both = clf.examine(make_degradation("haze+noise")(astronaut, np.random.default_rng(0)).image, restore=restore)
    assert [t for t, _ in both.found] == ["denoise"] and [t for t, _ in both.suggested] == ["dehaze"]
    noisy = clf.examine(make_degradation("denoise")(astronaut, np.random.default_rng(0)).image, restore=restore)
    assert [t for t, _ in noisy.found] == ["denoise"] and noisy.suggested == []


def test_shipped_blind_mode_runs_the_jpeg_left_after_the_main_degradation():
    # snow on a photo saved as JPEG: snow dominates, and once it is removed the blocks are what is left;
    # the snow alone gets no JPEG pass (docs/instructions.md: "JPEG after the main degradation")
    clf, pipe = DegradationClassifier.default(), RestorationPipeline.from_pretrained(device="cpu")
    restore = lambda x, t: pipe.run(x, [t])
    assert "jpeg" in clf.peeling.further
    cat = data.chelsea().astype(np.float32) / 255
    both = make_degradation("snow+jpeg")(cat, np.random.default_rng(0)).image
    assert [t for t, _ in clf.detect(both, restore=restore)] == ["desnow", "jpeg"]
    snowy = make_degradation("desnow")(cat, np.random.default_rng(0)).image
    assert [t for t, _ in clf.detect(snowy, restore=restore)] == ["desnow"]


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


def test_named_sequence_runs_in_the_order_given(pipe, model_dir, tmp_path, capsys, monkeypatch):
    rgb = data.astronaut()[:24, :24]
    # orders that order_tasks would turn round (derain before denoise, deblur before jpeg): kept as given
    _out, choice = pipe(rgb, task="denoise,derain", return_choice=True)
    assert (choice.tasks, choice.confidences, choice.source) == (["denoise", "derain"], [1.0, 1.0], "task")
    assert pipe.choose(task=["deblur", "jpeg"]).tasks == ["deblur", "jpeg"]  # a list works too, order kept
    runs = []
    real_run = RestorationPipeline.run
    monkeypatch.setattr(RestorationPipeline, "run", lambda self, rgb, tasks, **k: runs.append(list(tasks)) or real_run(self, rgb, tasks, **k))
    photos = _photos(tmp_path / "in")
    assert main(["restore", str(photos / "a.png"), "--model", str(model_dir), "-t", "denoise,derain", "-o", str(tmp_path / "o")]) == 0
    assert runs == [["denoise", "derain"]]
    assert capsys.readouterr().out.strip().endswith(": denoise, then derain [as asked]")
    with pytest.raises(ValueError, match="an empty task name"):
        pipe.choose(task="derain,")
    # an unknown name anywhere in the sequence: one error before any image
    assert main(["restore", str(photos / "a.png"), "--model", str(model_dir), "-t", "derain,sharpen"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task 'sharpen'" in err[0] and runs == [["denoise", "derain"]]


def test_the_classifier_follows_the_model_to_its_device(model_dir):
    # On a GPU, calibrate-blind judged every image with the classifier on the CPU; "meta" stands in for
    # a second device here (parameters without storage: only where they live is checked)
    pipe = RestorationPipeline.from_pretrained(model_dir, device="cpu")
    assert next(pipe.classifier.parameters()).device.type == "cpu"
    pipe.model.to("meta")
    assert next(pipe.classifier.parameters()).device.type == "meta"


def test_camera_raw_files_are_refused_with_what_to_do_not_restored_as_their_preview(model_dir, tmp_path, capsys):
    """A DNG (or NEF, ARW ...) is TIFF inside, whose first image is a small preview: Pillow read it as
    the photo, and restore wrote a restored thumbnail. Raw files are refused by name, saying to
    develop them first; a folder's are left out, said on stderr (a camera's RAW + JPEG pairs)."""
    import tifffile

    from instruct_ipt.data.images import ImageReadError, load_image, save_image

    src = tmp_path / "card"
    src.mkdir()
    with tifffile.TiffWriter(src / "IMG_0001.DNG") as w:  # a preview first, the sensor data in a later image
        w.write(np.zeros((24, 32, 3), np.uint8), photometric="rgb", subfiletype=1,
                extratags=[(50706, "B", 4, (1, 4, 0, 0), True)])
        w.write(np.zeros((240, 320), np.uint16), photometric="minisblack")
    (src / "IMG_0002.nef").write_bytes((src / "IMG_0001.DNG").read_bytes())
    save_image(src / "IMG_0001.jpg", data.astronaut()[:32, :48] / 255.0)
    with pytest.raises(ImageReadError, match=r"IMG_0001.DNG: a camera raw file: develop it to a 16-bit TIFF or PNG"):
        load_image(src / "IMG_0001.DNG")
    assert main(["restore", str(src / "IMG_0002.nef"), "--model", str(model_dir), "-t", "denoise"]) == 1
    assert "IMG_0002.nef: a camera raw file" in capsys.readouterr().err
    assert main(["restore", str(src), "--model", str(model_dir), "-t", "denoise", "-o", str(tmp_path / "o")]) == 0
    assert f"{src}: 2 camera raw file(s) left out (IMG_0001.DNG, IMG_0002.nef): develop them to TIFF or PNG first" \
        in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["IMG_0001.restored.png"]
    pattern = str(src / "IMG_*")  # a pattern too: the JPEG restored, the raw files said
    assert main(["restore", pattern, "--model", str(model_dir), "-t", "denoise", "-o", str(tmp_path / "p")]) == 0
    assert f"{pattern}: 2 camera raw file(s) left out (IMG_0001.DNG, IMG_0002.nef)" in capsys.readouterr().err


def test_skip_existing_goes_on_where_a_stopped_run_was(model_dir, tmp_path, capsys):
    """A folder's run stopped halfway (Ctrl-C, a closed laptop): --skip-existing leaves out the inputs
    whose output is already there (written atomically: whole), and restores the rest; without it
    every output is made again."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for name in ("a", "b"):
        Image.fromarray(data.astronaut()[:24, :32]).save(src / f"{name}.png")
    (out / "a.restored.png").write_bytes(b"made by the stopped run")
    args = ["restore", str(src), "--model", str(model_dir), "-t", "denoise", "-o", str(out)]
    assert main([*args, "--skip-existing"]) == 0
    assert (out / "a.restored.png").read_bytes() == b"made by the stopped run"
    assert Image.open(out / "b.restored.png").size == (32, 24)
    assert "1 of 2 image(s) left out: their output exists (--skip-existing)" in capsys.readouterr().err
    nothing_to_do = ["restore", str(src), "--model", str(tmp_path / "no-model"), "-t", "denoise", "-o", str(out)]
    assert main([*nothing_to_do, "--skip-existing"]) == 0  # nothing left to do: no model loaded (none there), no error
    assert "2 of 2 image(s) left out" in capsys.readouterr().err
    assert main(args) == 0
    assert Image.open(out / "a.restored.png").size == (32, 24)
    beside = ["restore", str(src / "*.png"), "--model", str(model_dir), "-t", "denoise", "--skip-existing"]
    assert main(beside) == 0 and main(beside) == 0  # a pattern beside the inputs: its outputs are not inputs
    assert sorted(p.name for p in src.iterdir()) == ["a.png", "a.restored.png", "b.png", "b.restored.png"]
    assert "2 of 2 image(s) left out" in capsys.readouterr().err


def test_detect_says_what_blind_mode_sees_without_restoring(model_dir, pipe, tmp_path, capsys):
    """``detect``: restore's blind choice for each image, in words or as JSON (with every class's
    probability), and no file written; an unreadable file is one line and the others still run."""
    import json

    from instruct_ipt.data.images import load_image

    src = tmp_path / "in"
    src.mkdir()
    rainy = make_degradation("derain")(data.astronaut()[:96, :128] / 255.0, np.random.default_rng(0)).image
    Image.fromarray((np.clip(rainy, 0, 1) * 255 + 0.5).astype(np.uint8)).save(src / "rainy.png")
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    choice = pipe.choose(load_image(src / "rainy.png").rgb)  # what restore would run
    assert main(["detect", str(src), "--model", str(model_dir), "--json"]) == 1
    out, err = capsys.readouterr()
    seen = json.loads(out)
    assert (seen["file"], seen["tasks"], seen["suggested"]) == (str(src / "rainy.png"), choice.tasks, choice.suggested)
    assert set(pipe.classifier.tasks) <= set(seen["probabilities"]) <= set(pipe.classifier.tasks) | {"clean"}
    assert abs(sum(seen["probabilities"].values()) - 1) < 1e-3
    assert f"instruct-ipt detect: {src / 'broken.jpg'}: not a readable image" in err and "1 of 2 image(s) failed" in err
    assert main(["detect", str(src / "rainy.png"), "--model", str(model_dir)]) == 0
    assert capsys.readouterr().out == f"{src / 'rainy.png'}: {choice.describe()}\n"
    assert sorted(p.name for p in src.iterdir()) == ["broken.jpg", "rainy.png"]  # nothing written
    assert main(["restore", str(src / "rainy.png"), "--model", str(model_dir), "-t", "derain"]) == 0
    capsys.readouterr()
    assert main(["detect", str(src / "*.png"), "--model", str(model_dir)]) == 0  # a restored file is an image to look at
    assert f"{src / 'rainy.restored.png'}: " in capsys.readouterr().out
    other = tmp_path / "other-tasks"
    InstructIPT("tiny", tasks=["lowlight"]).save_pretrained(other)
    assert main(["detect", str(src / "rainy.png"), "--model", str(other)]) == 2
    assert "blind mode knows none of this model's tasks (lowlight): its classifier names denoise" in capsys.readouterr().err


def test_a_large_image_shows_a_bar_over_its_tiles_for_all_its_tasks(model_dir, tmp_path, monkeypatch):
    """One large photo takes minutes on a CPU: restore shows a bar over its tiles, its total every
    task's tiles from the start (not full when the first task ends), labelled with the task running;
    an image that is not tiled shows none."""
    import io

    from instruct_ipt import cli

    bars: list[cli._TileBar] = []
    seen: list[tuple[int, int, str]] = []

    class Recorded(cli._TileBar):
        def __init__(self, name, tasks):
            super().__init__(name, tasks, file=io.StringIO(), disable=False)
            bars.append(self)

        def __call__(self, done, total):
            super().__call__(done, total)
            seen.append((self.bar.n, self.bar.total, self.bar.desc))

    monkeypatch.setattr(cli, "_TileBar", Recorded)
    Image.fromarray(data.astronaut()[:48, :64]).save(tmp_path / "big.png")
    args = ["restore", str(tmp_path / "big.png"), "--model", str(model_dir), "-t", "denoise,jpeg", "--overlap", "8"]
    assert main([*args, "--tile", "32", "--batch", "4"]) == 0  # 2 x 3 tiles a task, in batches of 4
    assert seen == [(4, 12, "big.png: denoise"), (6, 12, "big.png: denoise"), (10, 12, "big.png: jpeg"),
                    (12, 12, "big.png: jpeg")]
    assert main([*args, "--tile", "0"]) == 0 and bars[-1].bar is None  # not tiled: no bar


def test_restore_writes_heic_10_bit_from_a_16_bit_source_with_profile_and_exif(model_dir, tmp_path, monkeypatch, capsys):
    """-f heic: an iPhone user's format, 10 bits from a 16-bit source (in a fraction of a 16-bit PNG's
    size), 8 from an 8-bit one, with the colour profile and EXIF; without pillow-heif, one line before
    any image."""
    pillow_heif = pytest.importorskip("pillow_heif")
    import sys

    from PIL import ImageCms

    from instruct_ipt.data.images import load_image, save_image

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Apple"
    src = tmp_path / "in"
    src.mkdir()
    save_image(src / "deep.png", data.coffee()[:24, :32] / 255.0, bit_depth=16, icc=icc, exif=exif.tobytes())
    grey_icc = b"\0" * 16 + b"GRAY" + b"\0" * 16 + b"acsp" + b"\0" * 88
    save_image(src / "grey.png", np.repeat(data.camera()[:24, :32, None] / 255.0, 3, axis=2), np.full((24, 32), 0.5),
               grey=True, bit_depth=16, icc=grey_icc)  # grey + alpha at 16 bits: written as RGBA, without a grey profile
    Image.fromarray(data.astronaut()[:24, :32]).save(src / "eight.png")
    assert main(["restore", str(src), "--model", str(model_dir), "-t", "denoise", "-f", "heic", "-o", str(tmp_path / "o")]) == 0
    depth = {n: pillow_heif.open_heif(tmp_path / "o" / f"{n}.restored.heic", convert_hdr_to_8bit=False).info["bit_depth"]
             for n in ("deep", "grey", "eight")}
    assert depth == {"deep": 10, "grey": 10, "eight": 8}
    deep = load_image(tmp_path / "o" / "deep.restored.heic")
    assert deep.bit_depth == 16 and deep.icc == icc and deep.rgb.shape == (24, 32, 3)
    photo = data.coffee()[100:196, 200:328] / 255.0  # the pixels, encoded: channels in order, depth kept
    save_image(tmp_path / "photo.heic", photo, bit_depth=16)
    back = load_image(tmp_path / "photo.heic")
    assert np.abs(back.rgb - photo).mean() < 0.01 and np.abs(back.rgb - photo[..., ::-1]).mean() > 0.05
    assert not pillow_heif.open_heif(tmp_path / "o" / "grey.restored.heic").info.get("icc_profile")
    pano = tmp_path / "pano"  # wider than the HEVC encoder takes: that file's one line, before restoring it
    pano.mkdir()
    Image.fromarray(np.zeros((8, 16400, 3), np.uint8)).save(pano / "a-wide.png")
    Image.fromarray(data.astronaut()[:24, :32]).save(pano / "b-small.png")
    assert main(["restore", str(pano), "--model", str(model_dir), "-t", "denoise", "-f", "heic"]) == 1
    assert "a-wide.png: 16400x8 is too large for HEIC (the HEVC encoder takes at most 16384 px a side): write it as " \
        "png or tif" in capsys.readouterr().err
    assert sorted(p.name for p in pano.iterdir()) == ["a-wide.png", "b-small.png", "b-small.restored.heic"]
    with pytest.raises(ValueError, match="too large for HEIC"):
        save_image(tmp_path / "wide.heic", np.zeros((8, 16400, 3), np.float32))
    tags = Image.Exif()
    tags.load(deep.exif)
    assert tags[0x010F] == "Apple"
    assert np.abs(load_image(tmp_path / "o" / "grey.restored.heic").alpha - 0.5).max() < 0.01
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed
    assert main(["restore", str(src), "--model", str(model_dir), "-t", "denoise", "-f", "heic", "-o", str(tmp_path / "p")]) == 2
    assert "-f heic needs pillow-heif (pip install 'instruct-ipt[heif]')" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
