import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from instruct_ipt.data.degradations import (
    DEGRADATIONS,
    JPEG,
    Haze,
    MotionBlur,
    Noise,
    Rain,
    Snow,
    convolve_reflect,
    degrade,
    linear_kernel,
    make_degradation,
)
from instruct_ipt.eval.metrics import psnr


@pytest.fixture(scope="module")
def clean():
    return data.astronaut()[100:196, 150:278].astype(np.float32) / 255.0  # 96 x 128


@pytest.mark.parametrize("task", list(DEGRADATIONS))
def test_seeded_shape_dtype_range(task, clean):
    a, b = degrade(clean, task, seed=5), degrade(clean, task, seed=5)
    c = degrade(clean, task, seed=6)
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == clean.shape and a.image.dtype == np.float32
    if task != "denoise":  # raw AWGN is unclipped by convention
        assert a.image.min() >= 0 and a.image.max() <= 1
    assert psnr(a.image, clean) < 45  # it really degrades


def test_noise_sigma_and_clipping(clean):
    d = Noise(sigma=25)(clean, np.random.default_rng(0))
    assert d.params["sigma"] == 25
    assert np.std(d.image - clean) == pytest.approx(25 / 255, rel=0.03)
    clipped = Noise(sigma=50, clip=True)(clean, np.random.default_rng(0)).image
    assert clipped.min() >= 0 and clipped.max() <= 1
    with pytest.raises(ValueError, match="uint8"):
        Noise()(data.astronaut(), np.random.default_rng(0))


def test_poisson_noise_grows_with_brightness():
    img = np.concatenate([np.full((64, 64, 3), 0.1), np.full((64, 64, 3), 0.9)], axis=1).astype(np.float32)
    d = Noise(sigma=0, poisson_peak=30)(img, np.random.default_rng(0))
    dark, bright = (d.image - img)[:, :64].var(), (d.image - img)[:, 64:].var()
    assert bright > 5 * dark
    assert dark == pytest.approx(0.1 / 30, rel=0.15)  # Var(Poisson(x p) / p) = x / p


def test_blur_kernel_is_normalised_centred_and_applied(clean):
    d = MotionBlur()(clean, np.random.default_rng(3))
    k = d.extras["kernel"]
    assert k.shape == (31, 31) and k.min() >= 0 and k.sum() == pytest.approx(1, abs=1e-5)
    ys, xs = np.mgrid[:31, :31]
    assert (ys * k).sum() == pytest.approx(15, abs=0.6) and (xs * k).sum() == pytest.approx(15, abs=0.6)
    expected = np.stack([ndimage.convolve(clean[..., c], k, mode="mirror") for c in range(3)], axis=2)
    np.testing.assert_allclose(d.image, np.clip(expected, 0, 1), atol=2e-5)


def test_linear_kernel_geometry_and_length_effect(clean):
    k = linear_kernel(11, 0, 15)
    rows, cols = np.nonzero(k > 1e-4)
    assert cols.max() - cols.min() in (10, 11, 12) and rows.max() - rows.min() <= 1
    short = MotionBlur(trajectory_prob=0, length=5)(clean, np.random.default_rng(1)).image
    long = MotionBlur(trajectory_prob=0, length=21)(clean, np.random.default_rng(1)).image
    assert psnr(long, clean) < psnr(short, clean) - 2
    with pytest.raises(ValueError, match="odd"):
        MotionBlur(kernel_size=10)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Noise(sigma=-5), r"Noise.sigma: must be >= 0, got -5"),
    (lambda: Noise(sigma=(30, 10)), r"Noise.sigma: range \(30, 10\) has high < low"),
    (lambda: Noise(sigma=[0, 25, 50]), r"Noise.sigma: a number or a \[low, high\] pair of numbers, got \[0, 25, 50\]"),
    (lambda: Noise(sigma="25"), r"Noise.sigma: a number or a \[low, high\] pair of numbers, got '25'"),
    (lambda: Noise(sigma=float("nan")), r"Noise.sigma: must be finite"),
    (lambda: Noise(sigma=0, poisson_peak=0), r"Noise.poisson_peak: must be > 0, got 0"),
    (lambda: MotionBlur(kernel_size=15.0), r"MotionBlur.kernel_size: an odd number >= 3, got 15.0"),
    (lambda: MotionBlur(trajectory_prob=1.5), r"MotionBlur.trajectory_prob: must be <= 1, got 1.5"),
    (lambda: MotionBlur(trajectory_prob=(0, 1)), r"MotionBlur.trajectory_prob: one number, got \(0, 1\)"),
    (lambda: MotionBlur(exposure=(0, 1)), r"MotionBlur.exposure: must be > 0, got \(0, 1\)"),
    (lambda: MotionBlur(length=-3), r"MotionBlur.length: must be >= 0"),
    (lambda: Haze(airlight=(0.7, 1.2)), r"Haze.airlight: must be <= 1, got \(0.7, 1.2\)"),
    (lambda: Haze(beta=-1), r"Haze.beta: must be >= 0"),
    (lambda: Rain(density=2), r"Rain.density: must be <= 1"),
    (lambda: Rain(brightness=(0.4, 1.5)), r"Rain.brightness: must be <= 1"),
    (lambda: Rain(layers=0), r"Rain.layers: must be > 0, got 0"),
    (lambda: Snow(opacity=True), r"Snow.opacity: a number or a \[low, high\] pair of numbers, got True"),
    (lambda: Snow(veil=-0.1), r"Snow.veil: must be >= 0"),
    (lambda: Snow(scales=()), r"Snow.scales: at least one"),
    (lambda: Snow(scales=((0.0, 0.01),)), r"Snow.scales radius: must be > 0"),
    (lambda: JPEG(quality=(0, 50)), r"JPEG.quality: must be >= 1, got \(0, 50\)"),
    (lambda: JPEG(quality=100), r"JPEG.quality: must be <= 95, got 100"),
    (lambda: make_degradation("rain+noise", noise={"sigma": -1}), r"Noise.sigma: must be >= 0, got -1"),
])
def test_operators_refuse_values_outside_their_ranges_when_made(make, message):
    """At construction, naming the parameter: not at the first sample, deep in a DataLoader worker."""
    with pytest.raises(ValueError, match=message):
        make()


def test_operators_accept_the_edges_of_their_ranges(clean):
    rng = np.random.default_rng(0)
    for op in (Noise(sigma=0), Noise(sigma=[0, 50], poisson_peak=(1, 30)), MotionBlur(trajectory_prob=0, length=0),
               MotionBlur(exposure=1, trajectory_prob=1), Haze(beta=0, airlight=(0, 1)), Rain(density=0, width=0),
               Rain(layers=(0.6, 3.0), brightness=1), Snow(density=0, opacity=(0, 1), veil=1), JPEG(quality=(1, 95))):
        assert op(clean, rng).image.shape == clean.shape


def test_convolve_reflect_matches_scipy():
    img = np.random.default_rng(0).random((20, 17)).astype(np.float32)
    k = np.random.default_rng(1).random((5, 7)).astype(np.float32)
    np.testing.assert_allclose(convolve_reflect(img, k), ndimage.convolve(img, k, mode="mirror"), atol=1e-5)


def test_rain_streaks_follow_parameters(clean):
    d = Rain(angle=0, layers=1)(clean, np.random.default_rng(0))
    s = d.extras["streaks"]
    np.testing.assert_allclose(d.image, np.clip(clean + s[..., None], 0, 1), atol=1e-6)
    # vertical streaks: neighbours along the streak are more alike than across it
    v = np.corrcoef(s[1:, :].ravel(), s[:-1, :].ravel())[0, 1]
    h = np.corrcoef(s[:, 1:].ravel(), s[:, :-1].ravel())[0, 1]
    assert v > h + 0.2
    sparse = Rain(density=0.001, layers=1)(clean, np.random.default_rng(0)).extras["streaks"].mean()
    dense = Rain(density=0.006, layers=1)(clean, np.random.default_rng(0)).extras["streaks"].mean()
    assert dense > 3 * sparse
    assert Rain.heavy().density != Rain.light().density


def test_haze_follows_scattering_model(clean):
    d = Haze(beta=1.2, airlight=0.9)(clean, np.random.default_rng(0))
    t = d.extras["transmission"]
    np.testing.assert_allclose(d.image, np.clip(clean * t[..., None] + 0.9 * (1 - t[..., None]), 0, 1), atol=1e-6)
    depth = d.extras["depth"]
    assert depth.min() == pytest.approx(0, abs=1e-6) and depth.max() == pytest.approx(1, abs=1e-6)
    assert depth[:10].mean() > depth[-10:].mean()  # far at the top
    thin = Haze(beta=0.6)(clean, np.random.default_rng(0)).extras["transmission"].mean()
    thick = Haze(beta=1.8)(clean, np.random.default_rng(0)).extras["transmission"].mean()
    assert thick < thin


def test_snow_mask_and_density(clean):
    none = Snow(density=0, veil=0)(clean, np.random.default_rng(0))
    assert np.abs(none.extras["mask"]).max() == 0
    np.testing.assert_allclose(none.image, clean, atol=1e-6)
    light = Snow(density=0.5)(clean, np.random.default_rng(0)).extras["mask"]
    heavy = Snow(density=3.0)(clean, np.random.default_rng(0)).extras["mask"]
    assert 0 <= light.min() and heavy.max() <= 1
    assert heavy.mean() > 2 * light.mean()


def test_jpeg_quality(clean):
    low = JPEG(quality=10)(clean, np.random.default_rng(0)).image
    high = JPEG(quality=90)(clean, np.random.default_rng(0)).image
    assert psnr(low, clean) < psnr(high, clean) - 5
    np.testing.assert_allclose(low * 255, np.round(low * 255), atol=1e-4)  # decoded 8-bit levels


def test_unknown_task_and_params():
    with pytest.raises(ValueError, match="no degradation for task 'sharpen'"):
        make_degradation("sharpen")
    op = make_degradation("denoise", sigma=15)
    assert isinstance(op, Noise) and op.sigma == 15


def test_as_grey_matches_a_grey_file_and_grey_degraded_copies_channel_zero():
    from PIL import Image

    from instruct_ipt.data.degradations import as_grey, grey_degraded

    rgb = data.astronaut()[:40, :50]
    grey = as_grey(rgb)
    assert grey.dtype == np.uint8 and np.array_equal(grey[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
    assert np.array_equal(grey[..., 0], grey[..., 2])
    as_float = as_grey(rgb.astype(np.float32) / 255)
    assert np.abs(as_float[..., 0] * 255 - grey[..., 0]).max() <= 1.0
    noisy = Noise(sigma=25)(as_float, np.random.default_rng(0)).image
    out = grey_degraded(noisy)
    assert np.array_equal(out[..., 1], noisy[..., 0]) and np.array_equal(out[..., 2], noisy[..., 0])


def test_composite_order_does_not_depend_on_how_it_is_written(clean):
    a, b = degrade(clean, "rain+noise", seed=3), degrade(clean, "noise+rain", seed=3)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.image, degrade(clean, "denoise+derain", seed=3).image)  # task names work too
    assert not np.array_equal(a.image, degrade(clean, "rain+noise", seed=4).image)
    assert make_degradation("noise+jpeg+haze").task == "haze+noise+jpeg"  # canonical: the physical order
    assert make_degradation("noise+jpeg+haze").tasks == ("dehaze", "denoise", "jpeg")


def test_composite_is_its_components_applied_by_hand_in_physical_order(clean):
    from instruct_ipt.data.degradations import PHYSICAL_ORDER, component_rng
    from instruct_ipt.instruct import PIPELINE_ORDER

    assert PHYSICAL_ORDER == ("dehaze", "desnow", "derain", "deblur", "denoise", "jpeg")  # scene, camera, sensor, file
    assert PIPELINE_ORDER == ("jpeg", "denoise", "deblur", "derain", "desnow", "dehaze")  # the last degradation undone first
    got = degrade(clean, "jpeg+noise+blur+haze", seed=7, noise={"sigma": 20}, jpeg={"quality": 30})
    key = int(np.random.default_rng(7).integers(2**63))
    y = Haze()(clean, component_rng(key, "dehaze")).image
    y = MotionBlur()(y, component_rng(key, "deblur")).image
    y = Noise(sigma=20)(y, component_rng(key, "denoise")).image
    y = JPEG(quality=30)(y, component_rng(key, "jpeg")).image
    assert np.array_equal(got.image, y)
    assert got.params["denoise.sigma"] == 20 and got.params["jpeg.quality"] == 30 and "dehaze.beta" in got.params
    assert "deblur.kernel" in got.extras and "dehaze.transmission" in got.extras
    # the other order is a different image: the order is not a detail
    wrong = Noise(sigma=20)(clean, component_rng(key, "denoise")).image
    wrong = Haze()(wrong, component_rng(key, "dehaze")).image
    assert not np.allclose(degrade(clean, "noise+haze", seed=7, noise={"sigma": 20}).image, wrong)


def test_composite_refuses_unknown_and_repeated_components():
    with pytest.raises(ValueError, match=r"unknown degradation 'fog' in 'rain\+fog'; known: haze \(dehaze\), .*noise \(denoise\)"):
        make_degradation("rain+fog")
    with pytest.raises(ValueError, match=r"'rain\+derain' names rain \(derain\) twice: a composite applies each degradation once"):
        make_degradation("rain+derain")
    with pytest.raises(ValueError, match=r"'blur' is not a component of 'rain\+noise'"):
        make_degradation("rain+noise", blur={"length": 9})
    with pytest.raises(TypeError, match="per component"):
        make_degradation("rain+noise", sigma=25)
