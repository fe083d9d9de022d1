"""Transformer building blocks of the IPT-V2-style backbone.

Every layer that weight modulation may target (``qkv``, ``proj``, ``ffn.expand``, ``ffn.reduce``)
is a 1x1 ``nn.Conv2d`` applied to the whole ``(B, C, H, W)`` map *before* tokens are regrouped
into windows or grid groups. That keeps dimension 0 equal to the sample index, which per-sample
task modulation relies on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """Layer norm over channels at each pixel (channel-normalised pre-norm).

    A channels-last input (how :mod:`instruct_ipt.inference` runs the model) goes through the
    fused ``F.layer_norm`` on its NHWC view and stays channels-last, which keeps the following
    convolutions on oneDNN's faster channels-last path; NCHW input (training) takes the plain
    formula. Both compute the same values.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=torch.channels_last):
            y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
            return y.permute(0, 3, 1, 2)
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class FocalContextAttention(nn.Module):
    """Focal context self-attention: channel self-attention inside non-overlapping windows.

    Q, K, V come from a 1x1 conv followed by a 3x3 depthwise conv. Inside each window the
    attention matrix is ``d x d`` over the channels of a head (as in Restormer's MDTA), so its
    cost is linear in the window area. ``shift=True`` rolls the map by half a window first
    (used by alternate blocks) so information crosses window borders. Windows larger than the
    map shrink to the map; maps that are not a multiple of the window are zero-padded, which is
    exactly neutral for channel attention (padded tokens add zero to every channel dot product).
    """

    def __init__(self, dim: int, heads: int, window_size: int, shift: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.window_size = window_size
        self.shift = shift
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dw = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv_dw(self.qkv(x))
        wh, ww = min(self.window_size, h), min(self.window_size, w)
        sh, sw = (wh // 2, ww // 2) if self.shift else (0, 0)
        if sh or sw:
            qkv = torch.roll(qkv, shifts=(-sh, -sw), dims=(2, 3))
        ph, pw = (-h) % wh, (-w) % ww
        if ph or pw:
            qkv = F.pad(qkv, (0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        nh, nw = hp // wh, wp // ww
        d, n, groups = c // self.heads, wh * ww, b * nh * nw
        t = qkv.view(b, 3, self.heads, d, nh, wh, nw, ww)
        cl = x.is_contiguous(memory_format=torch.channels_last)
        # One copy regroups the windows; its order follows the memory layout so that it reads
        # contiguous runs (channels when channels-last, as inference runs; pixels when NCHW).
        if cl:
            t = t.permute(1, 0, 4, 6, 2, 5, 7, 3).reshape(3, groups, self.heads, n, d)
        else:
            t = t.permute(1, 0, 4, 6, 2, 3, 5, 7).reshape(3, groups, self.heads, d, n).transpose(-2, -1)
        # unbind, not t[0], t[1], t[2]: its backward stacks the three gradients once instead of
        # zero-filling a full-size buffer for each (a tenth of a CPU training step)
        q, k, v = t.unbind(0)  # (B*nh*nw, heads, wh*ww, d) views
        attn = (_cosine_gram(q, k) * self.temperature).softmax(dim=-1)  # (.., d, d) channel attention
        out = v @ attn.transpose(-2, -1) if cl else (attn @ v.transpose(-2, -1)).transpose(-2, -1)
        out = out.view(b, nh, nw, self.heads, wh, ww, d)
        out = _merge_groups(out.permute(0, 1, 4, 2, 5, 3, 6), cl)[:, :, :h, :w]
        if sh or sw:
            out = torch.roll(out, shifts=(sh, sw), dims=(2, 3))
        return self.proj(out)


def _cosine_gram(q: torch.Tensor, k: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``normalize(q)^T @ normalize(k)``, each channel normalised over the tokens (dim -2).

    When the tokens are not the contiguous dimension (channels-last inference), the norms come
    from the diagonals of ``q^T q`` and ``k^T k``: these small batched matmuls are several times
    faster on CPU than a strided reduction, and scaling the ``d x d`` result replaces two
    divisions of the full maps. Otherwise (NCHW, training) the plain normalisation is as fast.
    """
    if q.stride(-2) == 1 and k.stride(-2) == 1:
        return F.normalize(q, dim=-2, eps=eps).transpose(-2, -1) @ F.normalize(k, dim=-2, eps=eps)
    # clamp before sqrt (same value as F.normalize's max(norm, eps)): a finite gradient at norm 0
    qn = (q.transpose(-2, -1) @ q).diagonal(dim1=-2, dim2=-1).clamp_min(eps * eps).sqrt()
    kn = (k.transpose(-2, -1) @ k).diagonal(dim1=-2, dim2=-1).clamp_min(eps * eps).sqrt()
    return (q.transpose(-2, -1) @ k) / (qn[..., :, None] * kn[..., None, :])


def _merge_groups(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(B, *H factors, *W factors, heads, d) -> (B, C, H, W), channels-last or NCHW in memory (one copy).

    Rows and columns are each split into the same number of factors (outermost first), e.g.
    (B, H1, H2, W1, W2, heads, d). Channels-last input stays channels-last through the attention,
    so the 1x1 projection that follows runs on oneDNN's channels-last path without a layout conversion.
    """
    n = (t.dim() - 3) // 2
    b, heads, d = t.shape[0], t.shape[-2], t.shape[-1]
    h, w = math.prod(t.shape[1 : 1 + n]), math.prod(t.shape[1 + n : 1 + 2 * n])
    if channels_last:
        return t.reshape(b, h, w, heads * d).permute(0, 3, 1, 2)
    return t.permute(0, t.dim() - 2, t.dim() - 1, *range(1, 1 + 2 * n)).reshape(b, heads * d, h, w)


class GridAttention(nn.Module):
    """Grid self-attention: spatial attention among tokens on a sparse grid spanning the map.

    As in MaxViT's grid attention, the map is split into a ``g x g`` grid of cells and tokens
    at the same offset inside every cell attend to each other, so each group spans the whole
    map. ``span`` (in this map's pixels) bounds that: a larger map is first split into
    ``span x span`` blocks and each block gets its own grid, with cells of ``span / g``.
    Why: a model trained on patches has only seen groups spread over a patch; on a whole photo
    an image-wide grid would put its tokens much further apart than in training (a train/test
    mismatch that costs accuracy, cf. Chu et al., "Improving Image Restoration by Revisiting
    Global Information Aggregation", 2022). Maps that do not fill their blocks and grids are
    zero-padded and the padded keys masked out.

    The span is an argument of each call, not state: the model decides it per forward pass (per
    task), so nothing is swapped in and out around a call.
    """

    def __init__(self, dim: int, heads: int, grid_size: int) -> None:
        super().__init__()
        self.heads = heads
        self.grid_size = grid_size
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1, bias=False)

    def _split(self, n: int, span: int | None) -> tuple[int, int, int]:
        """(blocks, grid cells, cell size) along one axis of length ``n``."""
        if span is None or n <= span:
            g = min(self.grid_size, n)
            return 1, g, -(-n // g)
        return -(-n // span), self.grid_size, span // self.grid_size

    def forward(self, x: torch.Tensor, span: int | None = None) -> torch.Tensor:
        """``span``: grid groups bounded to ``span`` x ``span`` pixels of this map (None: map-wide)."""
        if span is not None and (span < self.grid_size or span % self.grid_size):
            raise ValueError(f"grid span {span} must be a multiple of the grid size {self.grid_size}")
        b, c, h, w = x.shape
        (nh, gh, ch), (nw, gw, cw) = self._split(h, span), self._split(w, span)
        ph, pw = nh * gh * ch - h, nw * gw * cw - w
        qkv = self.qkv(x)
        if ph or pw:
            qkv = F.pad(qkv, (0, pw, 0, ph))
        d = c // self.heads
        # row index = (block * gh + i) * ch + a: grid position i, offset a. Groups are (block, offset).
        t = qkv.view(b, 3, self.heads, d, nh, gh, ch, nw, gw, cw)
        groups = b * nh * ch * nw * cw
        t = t.permute(1, 0, 4, 6, 7, 9, 2, 5, 8, 3).reshape(3, groups, self.heads, gh * gw, d)
        mask = None
        if ph or pw:
            dev = x.device
            rows = torch.arange(nh * gh * ch, device=dev).view(nh, gh, ch) < h
            cols = torch.arange(nw * gw * cw, device=dev).view(nw, gw, cw) < w
            # (nh, ch, nw, cw, gh, gw): for each group, which of its keys are real pixels
            valid = rows.permute(0, 2, 1)[:, :, None, None, :, None] & cols.permute(0, 2, 1)[None, None, :, :, None, :]
            mask = valid.reshape(1, nh * ch * nw * cw, 1, 1, gh * gw).expand(b, -1, -1, -1, -1)
            mask = mask.reshape(groups, 1, 1, gh * gw)
        out = F.scaled_dot_product_attention(*t.unbind(0), attn_mask=mask)
        out = out.view(b, nh, ch, nw, cw, self.heads, gh, gw, d).permute(0, 1, 6, 2, 3, 7, 4, 5, 8)
        cl = x.is_contiguous(memory_format=torch.channels_last)
        return self.proj(_merge_groups(out, cl)[:, :, :h, :w])


class FeedForward(nn.Module):
    """Gated FFN: 1x1 expand, 3x3 depthwise, GELU gate, 1x1 reduce."""

    def __init__(self, dim: int, expansion: float) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.expand = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.reduce = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.dwconv(self.expand(x)).chunk(2, dim=1)
        return self.reduce(F.gelu(g) * a)


class TransformerBlock(nn.Module):
    """Pre-norm residual block: focal context attention, global grid attention, gated FFN."""

    def __init__(
        self,
        dim: int,
        heads: int,
        window_size: int,
        grid_size: int,
        ffn_expansion: float,
        shift: bool = False,
        grid_attention: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = FocalContextAttention(dim, heads, window_size, shift=shift)
        self.norm2 = LayerNorm2d(dim) if grid_attention else None
        self.grid = GridAttention(dim, heads, grid_size) if grid_attention else None
        self.norm3 = LayerNorm2d(dim)
        self.ffn = FeedForward(dim, ffn_expansion)

    def forward(self, x: torch.Tensor, grid_span: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        if self.grid is not None:
            x = x + self.grid(self.norm2(x), grid_span)
        return x + self.ffn(self.norm3(x))


class Stage(nn.Module):
    """A run of transformer blocks at one resolution; odd blocks use shifted windows."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        window_size: int,
        grid_size: int,
        ffn_expansion: float,
        grid_attention: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                TransformerBlock(
                    dim, heads, window_size, grid_size, ffn_expansion, shift=bool(i % 2), grid_attention=grid_attention
                )
                for i in range(depth)
            )
        )

    def forward(self, x: torch.Tensor, grid_span: int | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, grid_span)
        return x


class Downsample(nn.Module):
    """3x3 conv halving the channels, then PixelUnshuffle(2): (C, H, W) -> (2C, H/2, W/2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False)
        self.shuffle = nn.PixelUnshuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class Upsample(nn.Module):
    """3x3 conv doubling the channels, then PixelShuffle(2): (C, H, W) -> (C/2, 2H, 2W)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))
