"""Text instructions: a frozen sentence encoder, a small trained head, and blind mode."""

from .corpus import UNSUPPORTED, load_corpus, split
from .encoder import EncoderUnavailable, SentenceEncoder, default_encoder
from .head import HeadMismatch, InstructionHead, train_head
from .interpret import PIPELINE_ORDER, InstructionError, Interpretation, Interpreter, order_tasks

__all__ = [
    "UNSUPPORTED",
    "load_corpus",
    "split",
    "SentenceEncoder",
    "EncoderUnavailable",
    "default_encoder",
    "InstructionHead",
    "HeadMismatch",
    "train_head",
    "Interpreter",
    "Interpretation",
    "InstructionError",
    "PIPELINE_ORDER",
    "order_tasks",
]
