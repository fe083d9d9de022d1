"""Text instructions: a frozen sentence encoder, a small trained head, and blind mode."""

from .corpus import UNSUPPORTED, load_corpus, split
from .encoder import EncoderUnavailable, SentenceEncoder, default_encoder
from .head import HeadMismatch, InstructionHead, held_out_accuracy, train_head
from .interpret import InstructionError, Interpretation, Interpreter
from .order import MEASURED_GAINS, PIPELINE_ORDER, order_tasks

__all__ = [
    "MEASURED_GAINS",
    "PIPELINE_ORDER",
    "UNSUPPORTED",
    "EncoderUnavailable",
    "HeadMismatch",
    "InstructionError",
    "InstructionHead",
    "Interpretation",
    "Interpreter",
    "SentenceEncoder",
    "default_encoder",
    "held_out_accuracy",
    "load_corpus",
    "order_tasks",
    "split",
    "train_head",
]
