"""The restoration backbone."""

from .blocks import FeedForward, FocalContextAttention, GridAttention, LayerNorm2d, Stage, TransformerBlock
from .config import SIZES, IPTConfig
from .ipt import IPTV2, pad_to_multiple

__all__ = [
    "IPTV2",
    "IPTConfig",
    "SIZES",
    "Stage",
    "TransformerBlock",
    "FocalContextAttention",
    "GridAttention",
    "FeedForward",
    "LayerNorm2d",
    "pad_to_multiple",
]
