"""Masks and conditioning of the diffusion tasks inpaint / outpaint (issue 20 item 2)."""

import numpy as np
import pytest
import torch

from instruct_ipt.diffusion import CONDITIONED_CHANNELS, MaskError, check_mask, draw_mask
from instruct_ipt.diffusion.model import condition


def masks(task, n=40, h=64, w=96):
    return [draw_mask(task, h, w, np.random.default_rng((7, i))) for i in range(n)]


def test_masks_are_seeded_binary_and_leave_something_known():
    for task in ("inpaint", "outpaint"):
        a = draw_mask(task, 64, 96, np.random.default_rng((3, 1)))
        np.testing.assert_array_equal(a, draw_mask(task, 64, 96, np.random.default_rng((3, 1))))
        for m in masks(task):
            assert m.shape == (64, 96) and m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
            assert 0 < m.mean() < 1
    assert len({m.tobytes() for m in masks("inpaint")}) > 30  # different seeds, different holes


def test_inpaint_holes_sit_inside_and_outpaint_reaches_the_border():
    inside = [m for m in masks("inpaint") if not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())]
    assert len(inside) >= 10  # boxes never touch the border; many strokes do not either
    for m in masks("outpaint"):
        border = np.concatenate([m[0], m[-1], m[:, 0], m[:, -1]])
        assert border.mean() >= 0.25  # a band all round, or a half: at least a quarter of the border
        assert m.mean() <= 0.5 + 1e-6


def test_conditioning_and_bad_masks():
    image = np.random.default_rng(0).random((32, 48, 3), dtype=np.float32)
    mask = np.zeros((32, 48), np.float32)
    mask[8:16, 10:30] = 1
    x = torch.from_numpy(image).permute(2, 0, 1)[None] * 2 - 1  # the model's [-1, 1]
    cond = condition(x, torch.from_numpy(check_mask(image, mask))[None, None])[0].permute(1, 2, 0).numpy()
    assert cond.shape == (32, 48, 4) and CONDITIONED_CHANNELS == 3 + cond.shape[2]
    assert not cond[8:16, 10:30, :3].any() and np.array_equal(cond[0, 0, :3], x[0, :, 0, 0].numpy())
    np.testing.assert_array_equal(cond[..., 3], mask)
    rgb_mask = np.repeat(mask[..., None], 3, axis=2)  # a mask file read as RGB
    np.testing.assert_array_equal(check_mask(image, rgb_mask), mask)
    with pytest.raises(MaskError, match="the mask is 48x16 but the image 48x32"):
        check_mask(image, mask[:16])
    with pytest.raises(MaskError, match="all zero: there is nothing to fill"):
        check_mask(image, np.zeros((32, 48)))
    with pytest.raises(MaskError, match="all one: no pixel of the image is kept"):
        check_mask(image, np.ones((32, 48)))
    with pytest.raises(ValueError, match="no mask for task 'deblur'; mask tasks: inpaint, outpaint"):
        draw_mask("deblur", 8, 8, np.random.default_rng(0))
