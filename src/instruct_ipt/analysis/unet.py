"""Where a backbone layer sits in the U-Net: its stage and resolution level, in forward order.

The analyses plot layers "in network order" with the U-Net depth shaded. ``named_modules()`` gives
registration order, which lists every encoder before every down-sampling and every up-sampling
before every decoder, so the forward order is rebuilt here from the layer names (they are the
backbone's API, see :mod:`instruct_ipt.models.ipt`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class UNetPart:
    """One top-level piece of :class:`~instruct_ipt.models.IPTV2` and where it works."""

    #: module name prefix, e.g. ``"encoders.1"`` or ``"embed"``
    prefix: str
    #: ``embed``, ``encoder 1`` .. ``encoder n``, ``bottleneck``, ``decoder n`` .. ``decoder 1``, ``refine``, ``output``
    stage: str
    #: resolution level the part feeds: 0 at full resolution, ``levels`` at the bottleneck
    level: int


def unet_parts(levels: int) -> list[UNetPart]:
    """The backbone's parts in forward order.

    A down-sampling belongs to the encoder level whose output it shrinks; an up-sampling and the
    channel reduction after the skip concat belong to the decoder level they feed, so each stage
    is one contiguous run of layers.
    """
    parts = [UNetPart("embed", "embed", 0)]
    for i in range(levels):
        parts += [UNetPart(f"encoders.{i}", f"encoder {i + 1}", i), UNetPart(f"downsamples.{i}", f"encoder {i + 1}", i)]
    parts.append(UNetPart("bottleneck", "bottleneck", levels))
    for i in reversed(range(levels)):
        parts += [
            UNetPart(f"upsamples.{i}", f"decoder {i + 1}", i),
            UNetPart(f"reduces.{i}", f"decoder {i + 1}", i),
            UNetPart(f"decoders.{i}", f"decoder {i + 1}", i),
        ]
    parts += [UNetPart("refine", "refine", 0), UNetPart("output", "output", 0)]
    return parts


def locate(name: str, levels: int) -> tuple[int, UNetPart]:
    """``(position in forward order, part)`` of a module or parameter name of the backbone."""
    for position, part in enumerate(unet_parts(levels)):
        if name == part.prefix or name.startswith(part.prefix + "."):
            return position, part
    raise ValueError(f"{name!r} is not a layer of the U-Net backbone")


def network_order(names: Iterable[str], levels: int) -> list[str]:
    """``names`` sorted into forward order; names within one part keep their given (module) order."""
    names = list(names)
    return sorted(names, key=lambda n: locate(n, levels)[0])  # sorted() is stable
