"""Backbone configuration: one dataclass, named sizes, JSON round trip."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class IPTConfig:
    """Shape of an :class:`~instruct_ipt.models.IPTV2` backbone.

    Level ``i`` of the encoder works at width ``dim * 2**i``; the bottleneck works at
    ``dim * 2**len(encoder_depths)``. The decoder mirrors the encoder.
    """

    in_channels: int = 3
    dim: int = 32
    encoder_depths: tuple[int, ...] = (2, 2, 2)
    bottleneck_depth: int = 2
    decoder_depths: tuple[int, ...] = (2, 2, 2)
    refine_depth: int = 2
    #: attention heads per level, the last entry for the bottleneck
    heads: tuple[int, ...] = (1, 2, 4, 8)
    ffn_expansion: float = 2.0
    #: side of the focal-context windows (channel attention inside each window)
    window_size: int = 8
    #: side of the global grid: each grid group has grid_size**2 tokens spread over the image
    grid_size: int = 8
    #: use global grid attention in the encoder/bottleneck/decoder blocks
    grid_attention: bool = True
    #: side, in input pixels, of the largest square one grid group spans (None: the whole
    #: image). Set it to the training patch size so that whole photos are processed with the
    #: token spacing the model was trained on; a multiple of ``grid_size * 2**levels``.
    grid_span: int | None = None

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so configs stay hashable and comparable.
        for name in ("encoder_depths", "decoder_depths", "heads"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        levels = len(self.encoder_depths)
        if len(self.decoder_depths) != levels:
            raise ValueError("decoder_depths must have one entry per encoder level")
        if len(self.heads) != levels + 1:
            raise ValueError(f"heads needs {levels + 1} entries (one per level plus the bottleneck)")
        for i, h in enumerate(self.heads):
            if (self.dim * 2**i) % h:
                raise ValueError(f"width {self.dim * 2**i} of level {i} is not divisible by {h} heads")
        if self.dim % 2:
            raise ValueError("dim must be even (down-sampling halves it before PixelUnshuffle)")
        unit = self.grid_size * 2**levels
        if self.grid_span is not None and (self.grid_span < unit or self.grid_span % unit):
            raise ValueError(f"grid_span {self.grid_span} must be a multiple of grid_size * 2**levels = {unit}")

    @property
    def levels(self) -> int:
        return len(self.encoder_depths)

    @property
    def size_multiple(self) -> int:
        """Input sides are padded to this multiple (one factor 2 per down-sampling)."""
        return 2**self.levels

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown backbone config keys: {', '.join(unknown)}")
        return cls(**d)

    # Named sizes -----------------------------------------------------------------
    @classmethod
    def tiny(cls) -> IPTConfig:
        """0.21 M parameters: for tests."""
        return cls(
            dim=8,
            encoder_depths=(1, 1, 1),
            bottleneck_depth=1,
            decoder_depths=(1, 1, 1),
            refine_depth=1,
            heads=(1, 1, 2, 2),
            window_size=4,
            grid_size=4,
        )

    @classmethod
    def small(cls) -> IPTConfig:
        """3.25 M parameters (2.84 GMACs at 128x128): the CPU-trainable default."""
        return cls(
            dim=24,
            encoder_depths=(1, 2, 2),
            bottleneck_depth=3,
            decoder_depths=(1, 2, 2),
            refine_depth=1,
            heads=(1, 2, 4, 8),
            window_size=8,
            grid_size=8,
        )

    @classmethod
    def base(cls) -> IPTConfig:
        """Paper scale (25.8 M parameters, 39.3 GMACs at 128x128), for GPUs."""
        return cls(
            dim=48,
            encoder_depths=(8, 6, 6),
            bottleneck_depth=5,
            decoder_depths=(8, 6, 6),
            refine_depth=8,
            heads=(1, 2, 4, 8),
            ffn_expansion=2.66,
            window_size=8,
            grid_size=8,
        )

    @classmethod
    def named(cls, name: str) -> IPTConfig:
        sizes = {"tiny": cls.tiny, "small": cls.small, "base": cls.base}
        if name not in sizes:
            raise ValueError(f"unknown model size {name!r}; choose one of {', '.join(sizes)}")
        return sizes[name]()


SIZES = ("tiny", "small", "base")
