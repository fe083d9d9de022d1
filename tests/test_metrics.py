import math

import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from instruct_ipt.eval import Protocol, default_protocol, psnr, rgb_to_y, ssim


@pytest.fixture(scope="module")
def pair():
    clean = data.astronaut()[:90, :110].astype(np.float64) / 255
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.08, clean.shape), 0, 1)
    return noisy, clean


def test_rgb_metrics_match_scikit_image(pair):
    noisy, clean = pair
    assert psnr(noisy, clean) == pytest.approx(peak_signal_noise_ratio(clean, noisy, data_range=1), abs=1e-10)
    ref = structural_similarity(noisy, clean, data_range=1, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert ssim(noisy, clean) == pytest.approx(ref, abs=1e-10)


def test_y_channel_is_matlab_bt601():
    px = np.array([[[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]], dtype=np.float64)
    np.testing.assert_allclose(rgb_to_y(px)[0], [16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966])
    a, b = np.full((12, 12, 3), 0.5), np.full((12, 12, 3), 0.6)
    diff = 0.1 * (65.481 + 128.553 + 24.966)  # 21.9 grey levels of Y
    assert psnr(a, b, y_channel=True) == pytest.approx(20 * math.log10(255 / diff), abs=1e-9)


def test_y_ssim_equals_ssim_of_the_y_images(pair):
    noisy, clean = pair
    ref = structural_similarity(rgb_to_y(noisy), rgb_to_y(clean), data_range=255, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert ssim(noisy, clean, y_channel=True) == pytest.approx(ref, abs=1e-10)


def test_crop_border_and_errors(pair):
    noisy, clean = pair
    assert psnr(noisy, clean, crop_border=4) == pytest.approx(psnr(noisy[4:-4, 4:-4], clean[4:-4, 4:-4]))
    assert psnr(clean, clean) == float("inf")
    with pytest.raises(ValueError, match="size mismatch"):
        psnr(noisy[:-1], clean)
    with pytest.raises(ValueError, match="11x11"):
        ssim(noisy[:8, :8], clean[:8, :8])


def test_protocols_are_explicit(pair):
    noisy, clean = pair
    assert default_protocol("derain").channel == "y"
    assert default_protocol("deblur").channel == "rgb"
    p = Protocol(channel="both", crop_border=2)
    res = p.measure(noisy + 0.3, clean)
    assert set(res) == {"psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y"}
    # clamped and quantised before measuring
    prepared = np.round(np.clip(noisy + 0.3, 0, 1) * 255) / 255
    assert res["psnr_rgb"] == pytest.approx(psnr(prepared, clean, crop_border=2))
    raw = Protocol(clamp=False, quantize=False).measure(noisy + 0.3, clean)["psnr_rgb"]
    assert raw == pytest.approx(psnr(noisy + 0.3, clean))
    assert "channel=both" in p.describe() and "uint8-quantised" in p.describe()
    u8 = Protocol(test_noise="uint8").prepare_noisy_input(np.array([-0.2, 0.50001, 1.4]))
    np.testing.assert_allclose(u8, [0, 128 / 255, 1], atol=1e-7)
    with pytest.raises(ValueError, match="channel"):
        Protocol(channel="lab")
