import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch.utils.data import DataLoader

from instruct_ipt.data import (
    LayoutError,
    SeededNoise,
    SyntheticDataset,
    TaskSampler,
    ValidationSet,
    detect_layout,
    load_clean_images,
)
from instruct_ipt.data.degradations import JPEG, Degraded, Haze, MotionBlur, Noise, degradation_margin

TASKS = ["denoise", "deblur", "dehaze", "jpeg"]


@pytest.fixture(scope="module")
def photos():
    return [data.astronaut()[:120, :100], data.coffee()[:90, :140], data.chelsea()[:64, :64]]


def make_ds(photos, **kw):
    ops = {"denoise": Noise(sigma=25), "dehaze": Haze(), "jpeg": JPEG()}
    return SyntheticDataset(photos, ops, patch_size=48, length=40, tasks=TASKS, **kw)


def test_samples_are_labelled_and_reproducible(photos):
    ds = make_ds(photos, seed=7)
    s = ds[3]
    assert s["input"].shape == (3, 48, 48) and s["target"].shape == (3, 48, 48)
    assert s["task"] == TASKS.index(s["task_name"]) and s["task_name"] in ("denoise", "dehaze", "jpeg")
    again = make_ds(photos, seed=7)[3]
    assert torch.equal(s["input"], again["input"]) and torch.equal(s["target"], again["target"])
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["target"], s["target"])


def test_same_batches_whatever_the_worker_count(photos):
    ds = make_ds(photos, seed=1)
    one = [b["input"] for b in DataLoader(ds, batch_size=8, num_workers=0)]
    two = [b["input"] for b in DataLoader(ds, batch_size=8, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_task_weights(photos):
    ds = make_ds(photos, task_weights={"denoise": 3, "dehaze": 1, "jpeg": 0})
    names = [ds[i]["task_name"] for i in range(len(ds))]
    assert "jpeg" not in names and names.count("denoise") > names.count("dehaze")
    sampler = TaskSampler(["a", "b"], {"a": 1, "b": 3})
    rng = np.random.default_rng(0)
    share = np.mean([sampler(rng) for _ in range(4000)])
    assert share == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError, match="unknown tasks: c"):
        TaskSampler(["a"], {"c": 1})
    with pytest.raises(ValueError, match="lacks: desnow"):
        SyntheticDataset(photos, {"desnow": Noise()}, tasks=TASKS)


def test_small_photos_are_padded_to_the_patch(photos):
    ds = SyntheticDataset([photos[2][:20, :30]], {"denoise": Noise()}, patch_size=48, length=2)
    assert ds[0]["input"].shape == (3, 48, 48)


class BorderArtefact:
    """Marks its input's outer ``margin`` px, as a blur's padding would corrupt them."""

    task = "deblur"

    def __init__(self, margin: int) -> None:
        self.margin, self.seen = margin, []

    def __call__(self, clean, rng):
        self.seen.append(clean.shape)
        out = clean.copy()
        m = max(self.margin, 3)
        out[:m], out[-m:], out[:, :m], out[:, -m:] = 1.0, 1.0, 1.0, 1.0
        return Degraded(out)


def test_operators_with_a_margin_are_degraded_with_real_context(photos):
    op = BorderArtefact(margin=4)
    sample = SyntheticDataset(photos, {"deblur": op}, patch_size=16, length=1, tasks=TASKS)[0]
    assert op.seen == [(24, 24, 3)] and sample["input"].shape == (3, 16, 16)
    assert torch.equal(sample["input"], sample["target"])  # the corrupted border was cut away
    plain = SyntheticDataset(photos, {"deblur": BorderArtefact(margin=0)}, patch_size=16, length=1, tasks=TASKS)
    assert not torch.equal(plain[0]["input"], plain[0]["target"])
    assert MotionBlur(kernel_size=31).margin == 15 and degradation_margin(Noise()) == 0


def save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def img(seed, h=24, w=24):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_load_clean_images(tmp_path, photos):
    save(tmp_path / "a.png", img(0))
    (tmp_path / "notes.txt").write_text("x")
    out = load_clean_images([tmp_path, photos[0], np.zeros((30, 30), np.float32)])
    assert len(out) == 3 and out[2].shape == (30, 30, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        load_clean_images([tmp_path / "empty"])
    with pytest.raises(ValueError, match="smaller than 100px"):
        load_clean_images([tmp_path], min_size=100)


@pytest.mark.parametrize(
    "layout,task,files",
    [
        ("gopro", "deblur", ["GOPR0384/blur/000001.png", "GOPR0384/sharp/000001.png", "GOPR0410/blur/000002.png", "GOPR0410/sharp/000002.png"]),
        ("rain100", "derain", ["rainy/rain-001.png", "norain/norain-001.png", "rainy/rain-002.png", "norain/norain-002.png"]),
        ("sots", "dehaze", ["hazy/0001_0.8_0.2.jpg", "hazy/0001_0.9_0.16.jpg", "clear/0001.png", "hazy/0002_1_0.2.jpg", "GT/0002.png"]),
        ("csd", "desnow", ["Snow/1.tif", "Gt/1.tif", "Snow/2.tif", "Gt/2.tif"]),
        ("generic", None, ["input/x.png", "target/x.png", "input/y.png", "target/y.png"]),
        ("clean-only", "denoise", ["test001.png", "test002.png"]),
    ],
)
def test_layouts_are_recognised(tmp_path, layout, task, files):
    if layout == "sots":  # clear/ and GT/ cannot both be the target folder: use one per test
        files = [f.replace("GT/", "clear/") for f in files]
    for i, f in enumerate(files):
        save(tmp_path / f, img(i))
    found = detect_layout(tmp_path)
    assert found.name == layout and found.task == task
    assert len(found.pairs) == 2 if layout != "sots" else len(found.pairs) == 3
    for p in found.pairs:
        if layout == "clean-only":
            assert p.input is None
        else:
            assert p.input.is_file() and p.target.is_file() and p.input != p.target
    if layout == "sots":
        assert {p.target.name for p in found.pairs} == {"0001.png", "0002.png"}


def test_unpaired_and_unrecognised(tmp_path):
    save(tmp_path / "input/a.png", img(0))
    save(tmp_path / "input/b.png", img(1))
    save(tmp_path / "target/a.png", img(2))
    found = detect_layout(tmp_path)
    assert [p.name for p in found.pairs] == ["a"] and [p.name for p in found.unpaired] == ["b.png"]
    (tmp_path / "other/deeper").mkdir(parents=True)
    with pytest.raises(LayoutError, match="unrecognised benchmark folder; expected one of: .*GoPro.*Rain100"):
        detect_layout(tmp_path / "other")
    with pytest.raises(FileNotFoundError):
        detect_layout(tmp_path / "missing")


def test_seeded_noise_matches_the_standard_scripts():
    clean = [np.zeros((4, 5, 3), np.float32), np.ones((3, 3, 3), np.float32) * 0.5]
    noise = SeededNoise(25)
    ours = [noise(c) for c in clean]
    np.random.seed(0)
    ref = [c + np.random.normal(0, 25 / 255.0, c.shape) for c in clean]
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_validation_set_is_cached_and_fixed(tmp_path):
    save(tmp_path / "photos/a.png", img(0, 40, 50))
    save(tmp_path / "photos/b.png", img(1, 30, 30))
    ops = {"denoise": Noise(sigma=25), "dehaze": Haze()}
    vs = ValidationSet.build([tmp_path / "photos"], ops, tmp_path / "val", crop=32)
    assert len(vs) == 4 and vs.tasks == ["denoise", "dehaze"]
    assert vs.by_task("denoise")[0].input.shape == (32, 32, 3)
    assert vs.by_task("denoise")[1].input.shape == (30, 30, 3)  # smaller than the crop: whole image
    stamp = (tmp_path / "val/denoise/a.npz").stat().st_mtime_ns
    again = ValidationSet.build([tmp_path / "photos"], ops, tmp_path / "val", crop=32)
    assert (tmp_path / "val/denoise/a.npz").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert np.array_equal(again.by_task("denoise")[0].input, vs.by_task("denoise")[0].input)
    changed = ValidationSet.build([tmp_path / "photos"], {"denoise": Noise(sigma=50)}, tmp_path / "val", crop=32)
    assert changed.tasks == ["denoise"]
    assert not np.array_equal(changed.by_task("denoise")[0].input, vs.by_task("denoise")[0].input)


def test_validation_photos_of_one_name_are_each_an_item_and_a_changed_photo_rebuilds(tmp_path):
    """x.jpg beside x.png, and X.png and x.bmp in another folder: four items, not one (the cache once
    named items by stem, so a later photo replaced an earlier one and validation ran photos short;
    names are told apart without case, as macOS and Windows do); and a photo edited to another of
    the same name and byte size (an uncompressed BMP) rebuilds the cache."""
    save(tmp_path / "a/x.png", img(0, 32, 32))
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "a/x.jpg", quality=95)  # (flat: JPEG keeps it)
    save(tmp_path / "b/X.png", img(1, 32, 32))
    save(tmp_path / "b/x.bmp", img(2, 32, 32))
    ops = {"denoise": Noise(sigma=0)}
    vs = ValidationSet.build([tmp_path / "a", tmp_path / "b"], ops, tmp_path / "val", crop=32)
    items = {i.name: i.target for i in vs}  # in source order: a's x.jpg, x.png, then b's X.png, x.bmp
    assert sorted(items) == ["X-3", "x", "x-2", "x-4"]
    np.testing.assert_allclose(items["x"], 200 / 255, atol=1.5 / 255)
    np.testing.assert_allclose(items["x-2"], img(0, 32, 32) / 255, atol=1e-6)
    np.testing.assert_allclose(items["X-3"], img(1, 32, 32) / 255, atol=1e-6)
    np.testing.assert_allclose(items["x-4"], img(2, 32, 32) / 255, atol=1e-6)
    size = (tmp_path / "b/x.bmp").stat().st_size
    save(tmp_path / "b/x.bmp", img(3, 32, 32))
    assert (tmp_path / "b/x.bmp").stat().st_size == size
    again = {i.name: i.target for i in ValidationSet.build([tmp_path / "a", tmp_path / "b"], ops, tmp_path / "val", crop=32)}
    np.testing.assert_allclose(again["x-4"], img(3, 32, 32) / 255, atol=1e-6)


def test_a_damaged_or_incomplete_validation_cache_is_built_again(tmp_path):
    """A cache a killed copy or a full disk left behind: a missing, empty or truncated item, or a
    damaged manifest, is rebuilt (validating on fewer items would score the run on other photos -
    a deleted item once scored its task 0.00 dB); opened directly, a damaged item is one ValueError."""
    save(tmp_path / "photos/a.png", img(0, 40, 50))
    save(tmp_path / "photos/b.png", img(1, 30, 30))
    ops = {"denoise": Noise(sigma=25)}
    first = ValidationSet.build([tmp_path / "photos"], ops, tmp_path / "val", crop=32)
    item, manifest = tmp_path / "val/denoise/a.npz", tmp_path / "val/manifest.json"
    whole, text = item.read_bytes(), manifest.read_text()
    for damage in (lambda: item.unlink(), lambda: item.write_bytes(b""), lambda: item.write_bytes(whole[: len(whole) // 2]),
                   lambda: manifest.write_text(text[: len(text) // 2]), lambda: manifest.write_text("[1]")):
        damage()
        again = ValidationSet.build([tmp_path / "photos"], ops, tmp_path / "val", crop=32)
        assert len(again) == 2 and item.read_bytes() == whole and manifest.read_text() == text
        assert all(np.array_equal(x.input, y.input) for x, y in zip(again, first))
    item.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"a\.npz: a damaged validation cache file .*remove .*val to build it again"):
        ValidationSet(tmp_path / "val")
    manifest.write_text("{")
    with pytest.raises(ValueError, match=r"manifest\.json: a damaged validation cache"):
        ValidationSet(tmp_path / "val")


def whole_batch(ds):
    """(inputs, targets, the collated batch or None) of every sample of ``ds``, made as training makes them."""
    from instruct_ipt.data.batched import collate_device

    if ds.synthesis == "device":
        batch = collate_device([ds[i] for i in range(len(ds))])
        x, y, _ = ds.degrader()(batch, "cpu")
        return x, y, batch
    return (torch.stack([ds[i]["input"] for i in range(len(ds))]),
            torch.stack([ds[i]["target"] for i in range(len(ds))]), None)


@pytest.mark.parametrize("synthesis", ["workers", "device"])
def test_grey_samples_are_grey_photos_degraded_alike_in_every_channel(photos, synthesis):
    ops = {"denoise": Noise(sigma=25), "dehaze": Haze(), "jpeg": JPEG()}
    ds = SyntheticDataset(photos, ops, patch_size=32, length=40, tasks=TASKS, grey_share=0.5, synthesis=synthesis)
    x, y, batch = whole_batch(ds)
    grey = batch["grey"] if batch else torch.tensor([torch.equal(t[0], t[1]) and torch.equal(t[1], t[2]) for t in y])
    assert 10 <= int(grey.sum()) <= 30  # about half of 40
    for xi, yi, g in zip(x, y, grey):
        same = torch.equal(xi[0], xi[1]) and torch.equal(xi[0], xi[2])
        assert same == bool(g)  # grey inputs: one degradation in every channel; colour ones: not
        if g:
            assert torch.equal(yi[0], yi[2])
    plain = SyntheticDataset(photos, ops, patch_size=32, length=4, tasks=TASKS, synthesis=synthesis)
    before = SyntheticDataset(photos, ops, patch_size=32, length=4, tasks=TASKS, synthesis=synthesis, grey_share=0.0)
    key = "clean" if synthesis == "device" else "input"
    assert all(torch.equal(plain[i][key], before[i][key]) for i in range(4))  # share 0: the samples of before
    with pytest.raises(ValueError, match="grey_share"):
        SyntheticDataset(photos, ops, tasks=TASKS, grey_share=1.5)


class _Veil:
    """A stand-in haze: adds 0.1 everywhere (deterministic, no margin)."""

    task = "dehaze"

    def __call__(self, clean, rng):
        return Degraded(clean + 0.1)


def test_composite_samples_keep_the_other_degradation_in_the_target(photos):
    ops = {"denoise": Noise(sigma=25), "dehaze": _Veil()}
    ds = SyntheticDataset(photos, ops, patch_size=32, length=24, tasks=TASKS, composite_share=1.0)
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        diff = (s["input"] - s["target"]).numpy()
        seen.add(s["task_name"])
        if s["task_name"] == "denoise":  # input: veil then noise; target: the veil only
            assert 0.07 < diff.std() < 0.13 and abs(diff.mean()) < 0.02
            assert float(s["target"].min()) >= 0.1 - 1e-6  # the veil stays in the target
        else:  # dehaze: the very same noise in input and target, only the veil removed
            assert np.allclose(diff, 0.1, atol=1e-5)
            assert s["target"].std() > 0.1  # noisy target: the noise stays
    assert seen == {"denoise", "dehaze"}
    plain = SyntheticDataset(photos, ops, patch_size=32, length=4, tasks=TASKS)
    zero = SyntheticDataset(photos, ops, patch_size=32, length=4, tasks=TASKS, composite_share=0.0)
    assert all(torch.equal(plain[i]["input"], zero[i]["input"]) for i in range(4))  # share 0: the samples of before
    # a blur companion widens the crop by its margin; samples keep the patch size
    blur = SyntheticDataset(photos, {"denoise": Noise(sigma=5)}, patch_size=32, length=3, tasks=TASKS,
                            composite_share=1.0, companions={"deblur": MotionBlur()})
    assert all(blur[i]["input"].shape == blur[i]["target"].shape == (3, 32, 32) for i in range(3))
    with pytest.raises(ValueError, match='synthesis="workers"'):
        SyntheticDataset(photos, ops, tasks=TASKS, composite_share=0.3, synthesis="device")
    with pytest.raises(ValueError, match="no companion degradation for denoise"):
        SyntheticDataset(photos, {"denoise": Noise()}, tasks=TASKS, composite_share=0.3)


@pytest.mark.parametrize("synthesis", ["workers", "device"])
def test_identity_samples_are_left_without_their_degradation(photos, synthesis):
    ops = {"denoise": Noise(sigma=25), "dehaze": Haze(), "jpeg": JPEG()}
    ds = SyntheticDataset(photos, ops, patch_size=32, length=40, tasks=TASKS, identity_share=0.5, synthesis=synthesis)
    x, y, batch = whole_batch(ds)
    same = torch.tensor([torch.equal(a, b) for a, b in zip(x, y)])
    assert 10 <= int(same.sum()) <= 30  # about half of 40; every other one degraded
    if batch:
        assert torch.equal(same, batch["identity"])
    # share 0 makes no draw (the samples of before): a share above 0 draws once more, which moves
    # every later draw - the noise, or the device's seeds - even when no sample is left clean
    plain = SyntheticDataset(photos, ops, patch_size=32, length=8, tasks=TASKS, synthesis=synthesis)
    tiny = SyntheticDataset(photos, ops, patch_size=32, length=8, tasks=TASKS, synthesis=synthesis,
                            identity_share=1e-12)
    if synthesis == "device":
        assert all(plain[i]["seed"] != tiny[i]["seed"] for i in range(8))
    else:
        assert all(not torch.equal(plain[i]["input"], tiny[i]["input"]) for i in range(8))
    # with a composite, the input is the target: the companion in both, the task's own in neither
    both = SyntheticDataset(photos, {"denoise": Noise(sigma=25), "dehaze": _Veil()}, patch_size=32, length=6,
                            tasks=TASKS, composite_share=1.0, identity_share=1.0)
    for i in range(6):
        s = both[i]
        assert torch.equal(s["input"], s["target"])
        if s["task_name"] == "denoise":  # the veil (the companion) is there, the noise (its own) is not
            assert float(s["target"].min()) >= 0.1 - 1e-6
            pixels = (s["target"] - 0.1) * 255  # a clean 8-bit crop under the veil: whole numbers
            assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    with pytest.raises(ValueError, match="identity_share"):
        SyntheticDataset(photos, ops, tasks=TASKS, identity_share=-0.1)


def test_tiles_cover_the_photo_without_overlap_and_are_written_with_their_photo(tmp_path):
    from instruct_ipt.data.images import read_rgb
    from instruct_ipt.data.validation import tile_photo, tiles, write_tiles

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    got = list(tiles(img, 20))
    assert [(t, l) for t, l, _ in got] == [(0, 0), (0, 20), (0, 40), (20, 0), (20, 20), (20, 40)]
    for top, left, tile in got:
        assert np.array_equal(tile, img[top:top + 20, left:left + 20])
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img[:10]).save(tmp_path / "small.png")  # no tile: left out
    owner = write_tiles([tmp_path / "a.png", tmp_path / "small.png"], 20, tmp_path / "out")
    assert owner == {f"a-{t:04d}-{l:04d}": "a" for t, l, _ in got}
    assert {tile_photo(name) for name in owner} == {"a"} and tile_photo("my-photo") == "my-photo"
    assert np.array_equal(read_rgb(tmp_path / "out" / "a-0020-0040.png"), read_rgb(tmp_path / "a.png")[20:40, 40:60])
    with pytest.raises(FileNotFoundError, match="40x40"):
        write_tiles([tmp_path / "small.png"], 40, tmp_path / "none")
    with pytest.raises(ValueError, match="positive"):
        list(tiles(img, 0))


def test_write_tiles_refuses_two_photos_of_one_name(tmp_path):
    from instruct_ipt.data.validation import write_tiles

    img = np.zeros((40, 40, 3), np.uint8)
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        Image.fromarray(img).save(tmp_path / folder / "a.png")
    with pytest.raises(ValueError, match="same name.*: a"):
        write_tiles([tmp_path / "x", tmp_path / "y"], 20, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before writing


def test_center_crop_takes_a_square_side_or_a_height_and_width():
    from instruct_ipt.data.validation import center_crop

    img = np.arange(7 * 10).reshape(7, 10, 1)
    np.testing.assert_array_equal(center_crop(img, 4), img[1:5, 3:7])
    np.testing.assert_array_equal(center_crop(img, (3, 6)), img[2:5, 2:8])
    np.testing.assert_array_equal(center_crop(img, (9, 4)), img[:, 3:7])  # a side longer than the image's: kept
    assert center_crop(img, 0) is img and center_crop(img, (0, 4)) is img
