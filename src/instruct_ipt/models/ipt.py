"""IPT-V2-style U-Net image-processing transformer.

Layer names are part of the API: weight modulation selects layers by name, and later
feature-adaptation modules hook into the explicit stages (``encoders[i]``, ``bottleneck``,
``decoders[i]``, ``refine``)::

    embed                       3x3 conv, in -> C                 (never modulated)
    encoders[i]                 Stage at width C*2**i
    downsamples[i].conv         3x3 conv + PixelUnshuffle(2)
    bottleneck                  Stage at width C*2**levels
    upsamples[i].conv           3x3 conv + PixelShuffle(2), width C*2**(i+1) -> C*2**i
    reduces[i]                  1x1 conv after the skip concat, 2*C*2**i -> C*2**i
    decoders[i]                 Stage at width C*2**i
    refine                      Stage at width C
    output                      3x3 conv, C -> in; output = input + residual
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Downsample, Stage, Upsample
from .config import IPTConfig


class ConfiguredSpan:
    """Type of :data:`CONFIGURED_SPAN`."""

    def __repr__(self) -> str:
        return "CONFIGURED_SPAN"


#: ``IPTV2.forward(x, grid_span=CONFIGURED_SPAN)``: the span in the model's config
CONFIGURED_SPAN = ConfiguredSpan()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the bottom/right so both sides are multiples; replicate where reflect can't."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


class IPTV2(nn.Module):
    """U-Net of transformer stages with a global residual; accepts any input size."""

    def __init__(self, config: IPTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        widths = [c.dim * 2**i for i in range(c.levels + 1)]

        def stage(level: int, depth: int) -> Stage:
            return Stage(
                widths[level], depth, c.heads[level], c.window_size, c.grid_size, c.ffn_expansion, c.grid_attention
            )

        self.embed = nn.Conv2d(c.in_channels, c.dim, 3, padding=1)
        self.encoders = nn.ModuleList(stage(i, d) for i, d in enumerate(c.encoder_depths))
        self.downsamples = nn.ModuleList(Downsample(widths[i]) for i in range(c.levels))
        self.bottleneck = stage(c.levels, c.bottleneck_depth)
        self.upsamples = nn.ModuleList(Upsample(widths[i + 1]) for i in range(c.levels))
        self.reduces = nn.ModuleList(nn.Conv2d(widths[i] * 2, widths[i], 1, bias=False) for i in range(c.levels))
        self.decoders = nn.ModuleList(stage(i, d) for i, d in enumerate(c.decoder_depths))
        self.refine = stage(0, c.refine_depth)
        self.output = nn.Conv2d(c.dim, c.in_channels, 3, padding=1)

    def stages(self) -> list[tuple[int, Stage]]:
        """Every transformer stage with its level (0: full resolution), in forward order."""
        levels = self.config.levels
        return (
            list(enumerate(self.encoders))
            + [(levels, self.bottleneck)]
            + [(i, self.decoders[i]) for i in reversed(range(levels))]
            + [(0, self.refine)]
        )

    def set_grid_span(self, span: int | None) -> None:
        """Make ``span`` the configured grid span (saved with the config; None: image-wide).

        Per-call spans (per task) are passed to :meth:`forward` instead; nothing is swapped.
        """
        self.config = dataclasses.replace(self.config, grid_span=span)  # validates the span

    def forward(self, x: torch.Tensor, grid_span: int | None | ConfiguredSpan = CONFIGURED_SPAN) -> torch.Tensor:
        """Restore ``x`` (``(B, C, H, W)``).

        ``grid_span`` bounds grid-attention groups to ``span`` x ``span`` input pixels (None:
        image-wide; default: the config's). No weight changes: it only decides which tokens attend
        to each other, so a model trained on patches can run a whole photo with the token spacing
        it was trained with.
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected a (batch, {self.config.in_channels}, height, width) tensor, got shape {tuple(x.shape)}"
            )
        span = self.config.grid_span if isinstance(grid_span, ConfiguredSpan) else grid_span
        if span is not None and span != self.config.grid_span:
            dataclasses.replace(self.config, grid_span=span)  # validates the span

        def at(level: int) -> int | None:
            return None if span is None else span >> level

        xp, (h, w) = pad_to_multiple(x, self.config.size_multiple)
        feats = self.embed(xp)
        skips = []
        for level, (encoder, down) in enumerate(zip(self.encoders, self.downsamples)):
            feats = encoder(feats, at(level))
            skips.append(feats)
            feats = down(feats)
        feats = self.bottleneck(feats, at(self.config.levels))
        for i in reversed(range(self.config.levels)):
            feats = self.upsamples[i](feats)
            feats = self.reduces[i](torch.cat([feats, skips[i]], dim=1))
            feats = self.decoders[i](feats, at(i))
        feats = self.refine(feats, at(0))
        out = xp + self.output(feats)
        return out[..., :h, :w]
