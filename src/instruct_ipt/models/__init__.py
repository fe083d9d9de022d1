"""The restoration backbone."""

from .blocks import FeedForward, FocalContextAttention, GridAttention, LayerNorm2d, Stage, TransformerBlock
from .config import SIZES, IPTConfig
from .ipt import CONFIGURED_SPAN, IPTV2, pad_to_multiple

__all__ = [
    "CONFIGURED_SPAN",
    "IPTV2",
    "SIZES",
    "FeedForward",
    "FocalContextAttention",
    "GridAttention",
    "IPTConfig",
    "LayerNorm2d",
    "Stage",
    "TransformerBlock",
    "pad_to_multiple",
]
