"""Batched (torch) degradations against the NumPy operators they reproduce.

Exact where the image is deterministic given the draws (kernels, haze, JPEG, and rain/snow given
their seed maps); the same distribution where it is not (noise and seed maps come from torch).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage import data
from torch.utils.data import DataLoader

from instruct_ipt.data.batched import BatchDegrader, BatchedNoise, BatchedRain, BatchedSnow, batched, collate_device
from instruct_ipt.data.batched.base import gaussian_filter, gaussian_kernel1d
from instruct_ipt.data.degradations import JPEG, Haze, MotionBlur, Noise, Rain, Snow, convolve_reflect
from instruct_ipt.data.degradations.base import sample
from instruct_ipt.data.synthetic import SyntheticDataset

OPS = {"denoise": Noise(), "deblur": MotionBlur(), "derain": Rain(), "dehaze": Haze(), "desnow": Snow(), "jpeg": JPEG()}
P, N = 64, 300  # parity: 300 crops of 64 px per task


@functools.cache
def photos() -> tuple[np.ndarray, ...]:
    return data.astronaut(), data.coffee(), data.chelsea()


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    """A non-square float crop (40 x 56): a transposed axis cannot pass."""
    return data.astronaut()[200:240, 180:236].astype(np.float32) / 255.0


def nchw(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())


def stack(draws: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([d[k] for d in draws])) for k in draws[0]}


def seeds(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.long)


def test_factory_and_checks():
    assert isinstance(batched(Noise()), BatchedNoise) and batched(MotionBlur(kernel_size=31)).margin == 15
    assert batched(Rain.heavy()).max_layers == 3 and batched(Rain()).line_size == 43

    class Sharpen:
        task = "sharpen"

    with pytest.raises(TypeError, match="no batched counterpart for Sharpen"):
        batched(Sharpen())
    with pytest.raises(ValueError, match="more margin than 4"):
        BatchDegrader({"deblur": batched(MotionBlur(kernel_size=31))}, patch_size=16, margin=4)
    with pytest.raises(ValueError, match="synthesis"):
        SyntheticDataset(list(photos()), {"denoise": Noise()}, synthesis="gpu")


@pytest.mark.parametrize("h,w", [(48, 48), (37, 61), (128, 96)])
def test_zoom_is_bilinear_with_aligned_corners(h, w):
    coarse = ndimage.gaussian_filter(np.random.default_rng(h).random((8, 8)).astype(np.float32), 1.0)
    ref = ndimage.zoom(coarse, (h / 8, w / 8), order=1)[:h, :w]
    ours = F.interpolate(torch.from_numpy(coarse)[None, None], size=(h, w), mode="bilinear", align_corners=True)
    np.testing.assert_allclose(ours[0, 0].numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("shape", [(37, 50), (5, 7)])  # (5, 7): radius 12 > the image, the padding folds
def test_gaussian_filter_matches_scipy(shape):
    sigmas = [0.3, 0.75, 0.8, 1.6, 3.0]  # rain widths and snow radii; one kernel per map, zero-padded
    maps = np.random.default_rng(0).random((len(sigmas), *shape)).astype(np.float32)
    radius = int(4 * max(sigmas) + 0.5)
    kernels = torch.from_numpy(np.stack([gaussian_kernel1d(s, radius) for s in sigmas]))
    ours = gaussian_filter(torch.from_numpy(maps)[None], kernels[None])[0].numpy()
    ref = np.stack([ndimage.gaussian_filter(m, s) for m, s in zip(maps, sigmas)])
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_blur_is_a_true_convolution_with_reflect_padding(img):
    bop = batched(MotionBlur(kernel_size=15))
    kernels = [bop.draw(img, np.random.default_rng(s))["kernel"] for s in (0, 1)]
    assert all(not np.allclose(k, k[::-1, ::-1], atol=1e-3) for k in kernels)  # a missed flip shows
    other = np.ascontiguousarray(img[::-1])
    out = bop.apply(
        nchw([img, other]), {"kernel": torch.from_numpy(np.stack(kernels)), "sigma": torch.zeros(2)}, seeds(2)
    )
    ref = [np.clip(convolve_reflect(x, k), 0, 1) for x, k in zip([img, other], kernels)]
    np.testing.assert_allclose(out.numpy(), nchw(ref).numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "op,same_image",
    [
        (MotionBlur(kernel_size=15, trajectory_prob=0.5), "allclose"),  # trajectory and linear kernels
        (Haze(depth_scale=(0.5, 2.0)), "allclose"),
        (JPEG(), "equal"),
    ],
    ids=["blur", "haze", "jpeg"],
)
def test_deterministic_ops_make_the_ops_image_from_the_same_generator(op, same_image, img):
    bop, n = batched(op), 6
    ref = nchw([op(img, np.random.default_rng(s)).image for s in range(n)])
    draws = stack([bop.draw(img, np.random.default_rng(s)) for s in range(n)])
    out = bop.apply(nchw([img] * n), draws, seeds(n))
    assert torch.equal(out, ref) if same_image == "equal" else torch.allclose(out, ref, atol=1e-5)


def replay_rain(op: Rain, bop: BatchedRain, h: int, w: int, seed: int) -> tuple[dict, np.ndarray]:
    """Rain.streaks' draws, in its order: the layers for ``pack`` and the seed maps it makes."""
    rng = np.random.default_rng(seed)
    n_layers, angle = round(sample(rng, op.layers)), sample(rng, op.angle)
    layers, maps = [], np.zeros((bop.max_layers, h, w), np.float32)
    for i in range(max(1, n_layers)):
        density, length, width, bright = [sample(rng, r) for r in (op.density, op.length, op.width, op.brightness)]
        maps[i] = (rng.random((h, w)) < density) * rng.uniform(0.6, 1.0, (h, w))
        layers.append((density, length, width, bright, angle + (rng.uniform(-5, 5) if i else 0.0)))
    return bop.pack(layers), maps


@pytest.mark.parametrize("op", [Rain.heavy(), Rain(width=0.5, layers=(0.6, 3.0))], ids=["heavy", "thin-1to3"])
def test_rain_makes_the_ops_image_given_its_seed_maps(op, img):
    bop, n = batched(op), 6
    ref = nchw([op(img, np.random.default_rng(s)).image for s in range(n)])
    draws, maps = zip(*[replay_rain(op, bop, *img.shape[:2], s) for s in range(n)])
    out = bop.render(nchw([img] * n), stack(list(draws)), torch.from_numpy(np.stack(maps)))
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5)


def test_snow_makes_the_ops_image_given_its_seed_maps(img):
    op, n = Snow(density=(1.0, 3.0)), 8
    bop: BatchedSnow = batched(op)
    h, w = img.shape[:2]
    ref = nchw([op(img, np.random.default_rng(s)).image for s in range(n)])
    draws, maps = [], []
    for s in range(n):  # Snow.__call__'s draws, in its order
        rng = np.random.default_rng(s)
        params = [sample(rng, r) for r in (op.density, op.streak, op.angle, op.opacity, op.veil)]
        maps.append([(rng.random((h, w)) < p * params[0]) * rng.uniform(0.5, 1.0, (h, w)) for _, p in op.scales])
        draws.append(bop.pack(*params, float(rng.uniform(0.9, 1.0))))
    lines = np.stack([d["line"] for d in draws])
    identity = (lines > 0).sum(axis=(-2, -1)) == 1
    assert identity.any() and (~identity).any()  # both short (no streak) and streaked scales are covered
    out = bop.render(nchw([img] * n), stack(draws), torch.from_numpy(np.asarray(maps, np.float32)))
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("op", [Rain(), Rain.heavy(), Snow()], ids=["rain", "heavy-rain", "snow"])
def test_seed_maps_have_the_ops_density_and_strengths(op):
    """The one random part of rain and snow on the device: how many pixels seed a streak or flake
    (density; snow: per scale) and how strong (uniform in [0.6, 1) rain, [0.5, 1) snow). Counted
    over ~10^4 seeded pixels, so a density off by 5 % is ~5 standard errors out (the PSNR parity below only
    catches ~30 %)."""
    bop, n, side = batched(op), 40, 256
    blank = np.zeros((side, side, 3), np.float32)
    draws = stack([bop.draw(blank, np.random.default_rng(s)) for s in range(n)])
    maps = bop.seed_maps(draws, seeds(n), side, side, torch.device("cpu")).double()
    if isinstance(op, Rain):
        p, low = draws["density"].double()[..., None, None].expand_as(maps), 0.6  # (padded layers: density 0)
    else:
        per_px = torch.tensor([q for _, q in op.scales], dtype=torch.float64)
        p, low = (per_px[:, None, None] * draws["density"].double()[:, None, None, None]).expand_as(maps), 0.5
    seeded = maps > 0
    expected, sd = p.sum().item(), (p * (1 - p)).sum().sqrt().item()
    assert expected > 5000 and abs(seeded.sum().item() - expected) <= 4 * sd, (seeded.sum().item(), expected, sd)
    values = maps[seeded]
    assert values.min() >= low and values.max() <= 1  # (float32 rounding may reach 1)
    spread = (1 - low) / math.sqrt(12)  # uniform on [low, 1)
    assert abs(values.mean().item() - (1 + low) / 2) <= 4 * spread / math.sqrt(values.numel())


def test_poisson_noise_grows_with_brightness():
    x = torch.cat([torch.full((1, 3, 64, 64), 0.1), torch.full((1, 3, 64, 64), 0.9)], dim=3)
    bop = batched(Noise(sigma=0, poisson_peak=30))
    out = bop.apply(x, stack([bop.draw(np.zeros((64, 128, 3), np.float32), np.random.default_rng(0))]), seeds(1))
    dark, bright = (out - x)[..., :64].var().item(), (out - x)[..., 64:].var().item()
    assert bright > 5 * dark and dark == pytest.approx(0.1 / 30, rel=0.15)  # Var(Poisson(x p) / p) = x / p


# --- the whole path: SyntheticDataset("device") + collate_device + BatchDegrader vs the worker path


@functools.cache
def run(task: str) -> dict[str, torch.Tensor]:
    """N samples of one task through both paths (same dataset seed, so the same crops)."""
    old = SyntheticDataset(list(photos()), {task: OPS[task]}, patch_size=P, length=N, seed=11)
    new = SyntheticDataset(list(photos()), {task: OPS[task]}, patch_size=P, length=N, seed=11, synthesis="device")
    samples = [new[i] for i in range(N)]
    degrade = new.degrader()
    inp, tgt = zip(*[degrade(collate_device(samples[i : i + 50]), "cpu")[:2] for i in range(0, N, 50)])
    old_samples = [old[i] for i in range(N)]
    return {
        "old_input": torch.stack([s["input"] for s in old_samples]),
        "old_target": torch.stack([s["target"] for s in old_samples]),
        "input": torch.cat(inp),
        "target": torch.cat(tgt),
        "draws": stack([s["draws"] for s in samples]),
    }


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(((x - y) ** 2).flatten(1).mean(1).clamp_min(1e-6))  # capped at 60 dB (no streak drawn)


def grad_ratio(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    def grad(z: torch.Tensor) -> torch.Tensor:
        return (z.diff(dim=-1).abs().flatten(1).mean(1) + z.diff(dim=-2).abs().flatten(1).mean(1)) / 2

    return grad(x) / grad(y)


SECOND = {
    "denoise": lambda x, y: (x - y).flatten(1).std(1),
    "deblur": grad_ratio,
    "derain": lambda x, y: (x - y).flatten(1).mean(1),
    "dehaze": lambda x, y: x.flatten(1).mean(1),
    "desnow": lambda x, y: (x - y).flatten(1).mean(1),
    "jpeg": lambda x, y: (x - y).abs().flatten(1).mean(1),
}


@pytest.mark.parametrize("task", list(OPS))
def test_distribution_parity_with_the_worker_path(task):
    r = run(task)
    assert torch.equal(r["target"], r["old_target"])  # task, photo, crop and flip are drawn as before
    for stat in (psnr, SECOND[task]):
        old, new = stat(r["old_input"], r["old_target"]).double(), stat(r["input"], r["target"]).double()
        # Both paths see the same crops, so the test is paired: |mean difference| within 4 standard
        # errors of that mean (a false alarm ~6e-5 of the time) plus 1e-4 for float32 rounding where
        # the paths coincide (blur, haze, jpeg: same draws, deterministic). A gross defect (a wrong
        # brightness, width, gain, sigma scale) moves a mean by many standard errors; a density off by
        # 10 % moves rain's and snow's by less than that, so their seed maps are counted exactly above.
        diff = old - new
        tol = 4 * diff.std().item() / math.sqrt(N) + 1e-4
        assert abs(diff.mean().item()) <= tol, f"{task}: old {old.mean():.4f}, new {new.mean():.4f}, tol {tol:.4f}"
    if task in ("deblur", "dehaze", "jpeg"):  # deterministic given the draws, which are the op's own
        torch.testing.assert_close(r["input"], r["old_input"], atol=1e-5, rtol=0)


def test_noise_sigma_is_the_ops_draw_and_the_noise_has_that_std():
    recorded = []

    class Recording:
        task = "denoise"

        def __call__(self, clean, rng):
            d = OPS["denoise"](clean, rng)
            recorded.append(d.params["sigma"])
            return d

    old = SyntheticDataset(list(photos()), {"denoise": Recording()}, patch_size=P, length=N, seed=11)
    for i in range(N):
        old[i]  # records the op's sigma of each sample
    r = run("denoise")
    sigma = r["draws"]["sigma"].double().numpy()
    np.testing.assert_allclose(sigma, recorded, rtol=1e-6)  # the op's own draw (as float32)
    std = (r["input"] - r["target"]).flatten(1).double().std(1).numpy()
    # the std of n Gaussian values has standard error sigma / sqrt(2 (n - 1)); all 300 within 5 of
    # them (a false alarm ~2e-4 of the time), i.e. about 3 % at n = 3 * 64 * 64
    se = sigma / 255 / math.sqrt(2 * (3 * P * P - 1))
    assert np.all(np.abs(std - sigma / 255) <= 5 * se + 1e-7)


# --- determinism


def mixed(seed: int = 5, length: int = 24) -> SyntheticDataset:
    return SyntheticDataset(list(photos()), OPS, patch_size=32, length=length, seed=seed, synthesis="device")


def leaves(tree) -> list:
    return [leaf for v in tree.values() for leaf in leaves(v)] if isinstance(tree, dict) else [tree]


def test_device_samples_hold_the_crop_centred():
    ops = {"denoise": Noise(), "deblur": MotionBlur(kernel_size=9)}
    new = SyntheticDataset(list(photos()), ops, patch_size=16, length=20, seed=2, synthesis="device")
    old = SyntheticDataset(list(photos()), ops, patch_size=16, length=20, seed=2)
    assert new.margin == 4
    names = set()
    for i in range(20):
        s = new[i]
        names.add(s["task_name"])
        assert s["clean"].shape == (3, 24, 24) and s["clean"].dtype == torch.uint8
        assert torch.equal(s["clean"][:, 4:20, 4:20].float() / 255, old[i]["target"])
        if s["task_name"] == "denoise":  # margin 0: its crop is the patch, the rest zero
            assert s["clean"].sum() == s["clean"][:, 4:20, 4:20].sum()
    assert names == {"denoise", "deblur"}


def test_same_sample_same_input_whatever_the_batch():
    ds = mixed()
    samples = [ds[i] for i in range(len(ds))]
    assert {s["task_name"] for s in samples} == set(OPS)
    batch = collate_device(samples)
    assert all(isinstance(v, torch.Tensor) for v in leaves(batch))  # pin_memory can walk it
    whole, target, ids = ds.degrader()(batch, "cpu")
    assert whole.shape == target.shape == (24, 3, 32, 32) and whole.dtype == torch.float32
    assert ids.tolist() == [s["task"] for s in samples]
    again = mixed()  # same (seed, epoch, index): bit-identical
    assert torch.equal(again.degrader()(collate_device([again[i] for i in range(24)]), "cpu")[0], whole)
    for chunk in np.array_split(np.random.default_rng(0).permutation(24), 5):
        part = ds.degrader()(collate_device([samples[i] for i in chunk]), "cpu")[0]
        torch.testing.assert_close(part, whole[torch.from_numpy(chunk)], atol=1e-6, rtol=0)
    other = mixed(seed=6)
    assert not torch.equal(other.degrader()(collate_device([other[i] for i in range(24)]), "cpu")[0], whole)


def test_independent_of_the_worker_count():
    ds = mixed(length=32)
    degrade = ds.degrader()

    def inputs(workers: int) -> list[torch.Tensor]:
        loader = DataLoader(ds, batch_size=8, num_workers=workers, collate_fn=collate_device)
        return [degrade(b, "cpu")[0] for b in loader]

    assert all(torch.equal(a, b) for a, b in zip(inputs(0), inputs(2), strict=True))
