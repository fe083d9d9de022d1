"""What the feature adaptations are conditioned on: the selected task(s), as one vector per sample.

:class:`TaskEmbedding` turns task ids into vectors, either a learned table (one row per task) or
fixed text vectors (the mean MiniLM embedding of each task's phrasings) through a learned
projection, the way InstructIR conditions on its instruction. :class:`TaskCondition` is shared by
every adapted module of one model (like the modulation's ``TaskSelection``): the model's forward
selects the tasks, the modules read the vectors.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modulation.layers import TaskSelection

#: width of all-MiniLM-L6-v2's sentence embedding (the mean-pooled half of the encoder's features)
TEXT_DIM = 384


def text_vectors(tasks: list[str]) -> torch.Tensor:
    """``(tasks, 384)``: each task's mean sentence embedding over its phrasings in the packaged
    instruction corpus (a task without phrasings: its name). Needs the packaged MiniLM encoder."""
    from ..instruct.corpus import load_corpus
    from ..instruct.encoder import default_encoder

    corpus = load_corpus()
    encoder = default_encoder()
    rows = []
    for t in tasks:
        phrases = corpus.get(t) or [t]
        sentences = encoder.encode(phrases)[:, :TEXT_DIM]  # the sentence-transformers embedding part
        rows.append(torch.nn.functional.normalize(sentences.float().mean(0), dim=0))
    return torch.stack(rows)


class TaskEmbedding(nn.Module):
    """Task ids -> ``(B, dim)`` vectors: a learned table, or fixed text vectors projected."""

    def __init__(self, num_tasks: int, dim: int, text: torch.Tensor | None = None, use_text: bool = False) -> None:
        super().__init__()
        self.use_text = use_text
        if use_text:
            # filled by text_vectors() for a new model, or by the saved weights when loading
            self.register_buffer("text", text if text is not None else torch.zeros(num_tasks, TEXT_DIM))
            self.project = nn.Sequential(nn.Linear(TEXT_DIM, dim), nn.GELU(), nn.Linear(dim, dim))
        else:
            self.table = nn.Embedding(num_tasks, dim)
            nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.use_text:
            return self.project(self.text[ids])
        return self.table(ids)


class TaskCondition:
    """The selected task(s) of the next forward and the embedding that turns them into vectors."""

    def __init__(self, embedding: TaskEmbedding | None) -> None:
        self.selection = TaskSelection()
        self._embedding = [embedding]  # a list: not registered a second time as a submodule

    def vectors(self, batch: int, device: torch.device) -> torch.Tensor:
        """``(batch, dim)`` task vectors of the current selection."""
        embedding = self._embedding[0]
        if embedding is None:
            raise RuntimeError("this adaptation is not conditioned on the task")
        sel = self.selection
        if sel.index is not None:
            ids = torch.full((batch,), sel.index, dtype=torch.long, device=device)
        elif sel.ids is not None:
            ids = sel.ids_on(device)
            if ids.shape[0] != batch:
                raise RuntimeError(f"{ids.shape[0]} task ids for a batch of {batch}")
        else:
            raise RuntimeError("no task selected for a task-conditioned adaptation: pass tasks to the model's forward")
        return embedding(ids)
