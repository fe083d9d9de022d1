import math

import pytest
import torch
import torch.nn.functional as F

from instruct_ipt.models import IPTV2, FocalContextAttention, GridAttention, IPTConfig, LayerNorm2d


@pytest.mark.parametrize("size", [(37, 53), (1, 1), (5, 3), (16, 24)])
def test_any_input_size_round_trips(size):
    model = IPTV2(IPTConfig.tiny()).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_global_residual_output_layer_zero_is_identity():
    model = IPTV2(IPTConfig.tiny())
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.zero_()
    x = torch.rand(1, 3, 19, 21)
    assert torch.equal(model(x), x)


def test_named_sizes_parameter_budgets():
    def params(cfg):
        return sum(p.numel() for p in IPTV2(cfg).parameters())

    assert params(IPTConfig.tiny()) < 0.5e6
    assert 2e6 <= params(IPTConfig.small()) <= 5e6
    assert 24e6 <= params(IPTConfig.base()) <= 28e6


def test_layer_names_are_explicit():
    names = dict(IPTV2(IPTConfig.tiny()).named_modules())
    for n in ["embed", "encoders.0", "downsamples.2.conv", "bottleneck", "upsamples.0.conv", "reduces.1",
              "decoders.2", "refine", "output", "encoders.0.blocks.0.attn.qkv", "decoders.1.blocks.0.grid.proj",
              "refine.blocks.0.ffn.expand"]:
        assert n in names, n


def test_config_round_trip_and_errors():
    cfg = IPTConfig.small()
    assert IPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown backbone config keys: bogus"):
        IPTConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="heads"):
        IPTConfig(heads=(1, 2))
    with pytest.raises(ValueError, match="unknown model size"):
        IPTConfig.named("huge")


def test_wrong_channels_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        IPTV2(IPTConfig.tiny())(torch.rand(1, 1, 8, 8))


def test_layernorm2d_matches_layer_norm_over_channels():
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 5, 7)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), ref, rtol=1e-5, atol=1e-5)
    fast = norm(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert fast.is_contiguous(memory_format=torch.channels_last)  # keeps the faster conv layout


def test_channels_last_input_gives_the_same_output():
    torch.manual_seed(0)
    net = IPTV2(IPTConfig.tiny()).eval()
    x = torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last)), net(x), rtol=1e-5, atol=1e-5)


def reference_window_channel_attention(attn: FocalContextAttention, x: torch.Tensor) -> torch.Tensor:
    """Loop-based reference: channel attention in each (shifted, clipped) window."""
    b, c, h, w = x.shape
    qkv = attn.qkv_dw(attn.qkv(x))
    wh, ww = min(attn.window_size, h), min(attn.window_size, w)
    sh, sw = (wh // 2, ww // 2) if attn.shift else (0, 0)
    qkv = torch.roll(qkv, (-sh, -sw), (2, 3))
    out = torch.zeros(b, c, h, w)
    d = c // attn.heads
    for top in range(0, h, wh):
        for left in range(0, w, ww):
            win = qkv[:, :, top:top + wh, left:left + ww]  # edge windows are smaller: zero padding is neutral
            q, k, v = win.flatten(2).chunk(3, dim=1)
            for hd in range(attn.heads):
                sl = slice(hd * d, (hd + 1) * d)
                qh, kh = F.normalize(q[:, sl], dim=-1), F.normalize(k[:, sl], dim=-1)
                a = (qh @ kh.transpose(1, 2) * attn.temperature[hd]).softmax(-1)
                out[:, sl, top:top + wh, left:left + ww] = (a @ v[:, sl]).view(b, d, *win.shape[2:])
    return attn.proj(torch.roll(out, (sh, sw), (2, 3)))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("size", [(8, 8), (11, 6), (3, 13)])
def test_focal_context_attention_matches_reference(shift, size, channels_last):
    attn = FocalContextAttention(8, heads=2, window_size=4, shift=shift)
    with torch.no_grad():
        attn.temperature.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, *size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = attn(x.contiguous(memory_format=fmt))
    torch.testing.assert_close(out, reference_window_channel_attention(attn, x), rtol=1e-4, atol=1e-5)
    assert out.is_contiguous(memory_format=fmt)  # the layout is kept for the convolutions that follow


@pytest.mark.parametrize("channels_last", [False, True])
def test_focal_context_attention_gradient_is_finite_for_a_zero_window(channels_last):
    # channels-last takes the norms from Gram diagonals; a window whose q/k are all 0 must not give NaN
    attn = FocalContextAttention(8, heads=2, window_size=4)
    x = torch.zeros(1, 8, 12, 12)
    x[..., 8:, 8:] = torch.randn(1, 8, 4, 4)  # the top-left window (and its 3x3 neighbourhood) stays 0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    attn(x).square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())
    assert torch.isfinite(x.grad).all()


def _grid_groups(n: int, g: int, span: int | None) -> list[list[int]]:
    """Indices along one axis that share a grid group: same block of ``span``, same offset in a cell."""
    if span is None or n <= span:
        cell, block = math.ceil(n / min(g, n)), n
    else:
        cell, block = span // g, span
    keys: dict[tuple[int, int], list[int]] = {}
    for r in range(n):
        keys.setdefault((r // block, r % cell), []).append(r)
    return list(keys.values())


def reference_grid_attention(attn: GridAttention, x: torch.Tensor, span: int | None = None) -> torch.Tensor:
    """Loop-based reference: tokens at the same offset of every grid cell (of one block) attend to each other."""
    b, c, h, w = x.shape
    q, k, v = attn.qkv(x).chunk(3, dim=1)
    d = c // attn.heads
    out = torch.zeros(b, c, h, w)
    for rows in _grid_groups(h, attn.grid_size, span):
        for cols in _grid_groups(w, attn.grid_size, span):
            idx = [(r, cc) for r in rows for cc in cols]
            for hd in range(attn.heads):
                sl = slice(hd * d, (hd + 1) * d)
                tq = torch.stack([q[:, sl, r, cc] for r, cc in idx], 1)  # (b, n, d)
                tk = torch.stack([k[:, sl, r, cc] for r, cc in idx], 1)
                tv = torch.stack([v[:, sl, r, cc] for r, cc in idx], 1)
                o_ = ((tq @ tk.transpose(1, 2)) / math.sqrt(d)).softmax(-1) @ tv
                for n, (r, cc) in enumerate(idx):
                    out[:, sl, r, cc] = o_[:, n]
    return attn.proj(out)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(16, 24), (13, 19), (8, 20)])
def test_grid_attention_with_span_matches_reference(size, channels_last):
    attn = GridAttention(8, heads=2, grid_size=4)
    x = torch.randn(2, 8, *size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = attn(x.contiguous(memory_format=fmt), span=8)
    torch.testing.assert_close(out, reference_grid_attention(attn, x, span=8), rtol=1e-4, atol=1e-5)
    assert out.is_contiguous(memory_format=fmt)


def test_grid_span_processes_blocks_independently():
    # on a map tiled exactly by span x span blocks, each block is what the unbounded attention gives it alone
    torch.manual_seed(0)
    attn = GridAttention(8, heads=2, grid_size=4)
    x = torch.randn(1, 8, 16, 24)
    out = attn(x, span=8)
    for i in range(0, 16, 8):
        for j in range(0, 24, 8):
            torch.testing.assert_close(out[..., i : i + 8, j : j + 8], attn(x[..., i : i + 8, j : j + 8]))
    assert not torch.allclose(out, attn(x), atol=1e-3)
    with pytest.raises(ValueError, match="grid span 6 must be a multiple of the grid size 4"):
        attn(x, span=6)


def test_grid_span_leaves_training_sized_inputs_unchanged():
    torch.manual_seed(0)
    config = IPTConfig.tiny()
    unbounded = IPTV2(config).eval()
    bounded = IPTV2(IPTConfig.from_dict({**config.to_dict(), "grid_span": 32})).eval()
    bounded.load_state_dict(unbounded.state_dict())
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 24)
        torch.testing.assert_close(bounded(x), unbounded(x))
        y = torch.rand(1, 3, 64, 48)
        assert not torch.allclose(bounded(y), unbounded(y), atol=1e-4)
        # a span passed to one call is that call's only: the same as the config's, nothing kept
        torch.testing.assert_close(unbounded(y, grid_span=32), bounded(y))
        torch.testing.assert_close(bounded(y, grid_span=None), unbounded(y))
        assert unbounded.config.grid_span is None and bounded.config.grid_span == 32
        with pytest.raises(ValueError, match="grid_span 16 must be a multiple"):
            unbounded(y, grid_span=16)


@pytest.mark.parametrize("span", [16, 40, 0])
def test_grid_span_must_fit_every_level(span):
    with pytest.raises(ValueError, match="grid_span"):
        IPTConfig.from_dict({**IPTConfig.tiny().to_dict(), "grid_span": span})


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(8, 8), (12, 10), (3, 5)])
def test_grid_attention_matches_reference(size, channels_last):
    attn = GridAttention(8, heads=2, grid_size=4)
    x = torch.randn(2, 8, *size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = attn(x.contiguous(memory_format=fmt))
    torch.testing.assert_close(out, reference_grid_attention(attn, x), rtol=1e-4, atol=1e-5)
    assert out.is_contiguous(memory_format=fmt)
