"""The instruction head: a small MLP from a sentence embedding to the model's tasks + "unsupported"."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..io import load_tagged, save_tagged
from .corpus import UNSUPPORTED, augment
from .encoder import EMBED_DIM, ENCODER_NAME, TOKEN_DIM, SentenceEncoder

HEAD_FORMAT = "instruct-ipt-instruction-head"
HEAD_FILE = "instruction_head.safetensors"


class HeadMismatch(ValueError):
    """The head was trained for other tasks than the model has."""


class InstructionHead(nn.Module):
    """``features (768) -> Linear -> GELU -> Linear -> tasks + ["unsupported"]`` logits, plus a
    bank of the training phrasings' sentence embeddings for :meth:`support`.

    A softmax over a few classes is confident about anything, nonsense included (the shipped head
    gives "purple monkey dishwasher" 99% jpeg, though its closest jpeg phrasing is only 33% similar);
    the bank lets the interpreter also ask whether the instruction resembles any phrasing
    the chosen task was trained on.
    """

    def __init__(self, tasks: Sequence[str], dim: int = EMBED_DIM, hidden: int = 256, bank_size: int = 0) -> None:
        super().__init__()
        if UNSUPPORTED in tasks:
            raise ValueError(f"{UNSUPPORTED!r} is reserved for rejected instructions")
        self.tasks = list(tasks)
        self.hidden = hidden
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, len(tasks) + 1))
        # unit-length mean-pooled embeddings (the sentence-transformers embedding) of the task
        # phrasings, float16, and the index of each one's task
        self.register_buffer("bank", torch.zeros(bank_size, TOKEN_DIM, dtype=torch.float16))
        self.register_buffer("bank_labels", torch.zeros(bank_size, dtype=torch.long))

    def set_bank(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep the embeddings ``emb`` (N, 768) of task phrasings labelled by task index."""
        if labels.numel() and int(labels.max()) >= len(self.tasks):
            raise ValueError("the support bank holds task phrasings only, not unsupported ones")
        self.bank = F.normalize(emb[:, :TOKEN_DIM].float(), dim=-1).half()
        self.bank_labels = labels.long().clone()

    @torch.inference_mode()
    def support(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, tasks): the highest cosine similarity of each instruction to a training phrasing of
        each task; 1 everywhere for a head without a bank (nothing to compare with)."""
        if self.bank.shape[0] == 0:
            return torch.ones(emb.shape[0], len(self.tasks))
        sims = F.normalize(emb[:, :TOKEN_DIM].float(), dim=-1) @ self.bank.float().T
        out = torch.full((emb.shape[0], len(self.tasks)), -1.0)
        for i in range(len(self.tasks)):
            mine = self.bank_labels == i
            if mine.any():
                out[:, i] = sims[:, mine].amax(1)
        return out

    @property
    def classes(self) -> list[str]:
        return self.tasks + [UNSUPPORTED]

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.net(emb)

    @torch.inference_mode()
    def probabilities(self, emb: torch.Tensor) -> torch.Tensor:
        self.eval()
        return self(emb).softmax(-1)

    def check_tasks(self, model_tasks: Sequence[str]) -> None:
        """The head must know exactly the model's tasks (in any order)."""
        if set(model_tasks) != set(self.tasks):
            raise HeadMismatch(
                f"the instruction head was trained for tasks [{', '.join(self.tasks)}] but the model has "
                f"[{', '.join(model_tasks)}]; retrain it for this model with: instruct-ipt train-head --model DIR"
            )

    def save(self, path: str | Path) -> Path:
        meta = {"format": HEAD_FORMAT, "tasks": json.dumps(self.tasks), "encoder": ENCODER_NAME,
                "hidden": str(self.hidden)}
        return save_tagged(path, self.state_dict(), meta)

    @classmethod
    def load(cls, path: str | Path) -> InstructionHead:
        state, meta = load_tagged(path, HEAD_FORMAT, "an instruct-ipt instruction head")
        if meta.get("encoder") != ENCODER_NAME:
            raise ValueError(f"{path} was trained on embeddings of {meta.get('encoder')}, not {ENCODER_NAME}")
        if "bank" not in state:  # heads saved before the support bank: no similarity check
            state = {**state, "bank": torch.zeros(0, TOKEN_DIM, dtype=torch.float16),
                     "bank_labels": torch.zeros(0, dtype=torch.long)}
        head = cls(json.loads(meta["tasks"]), hidden=int(meta.get("hidden", 256)), bank_size=state["bank"].shape[0])
        head.load_state_dict(state)
        return head.eval()

    @classmethod
    def default(cls) -> InstructionHead:
        """The shipped model's head (in its folder, ``weights/default``; trained on the package's corpus)."""
        return cls.load(Path(str(resources.files("instruct_ipt") / "weights" / "default" / HEAD_FILE)))


def train_head(
    phrases: Mapping[str, Sequence[str]],
    tasks: Sequence[str],
    encoder: SentenceEncoder,
    seed: int = 0,
    epochs: int = 300,
    hidden: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 1e-2,
    label_smoothing: float = 0.0,
    augment_text: bool = True,
) -> InstructionHead:
    """Fit a head on ``{class: phrases}`` (classes: ``tasks`` and ``"unsupported"``).

    Full-batch AdamW on frozen embeddings with a fixed seed: the same corpus gives the same head.
    With ``augment_text`` every phrase also trains as three :func:`~.corpus.augment` variants.
    Classes are weighted by inverse frequency so a task with fewer phrases is not crowded out.
    The task phrasings (with their variants) also become the head's support bank.
    (Label smoothing is available but off: in cross-validation on the corpus it lowered the share
    of unsupported requests refused.)
    """
    missing = [c for c in [*tasks, UNSUPPORTED] if not phrases.get(c)]
    if missing:
        raise ValueError(f"no training phrases for: {', '.join(missing)}")
    if augment_text:
        phrases = augment({c: list(phrases[c]) for c in [*tasks, UNSUPPORTED]}, seed)
    classes = [*tasks, UNSUPPORTED]
    texts, labels = [], []
    for i, c in enumerate(classes):
        texts += list(phrases[c])
        labels += [i] * len(phrases[c])
    x = encoder.encode(texts)
    y = torch.tensor(labels)
    counts = torch.bincount(y, minlength=len(classes)).float()
    weights = counts.sum() / (len(classes) * counts)
    with torch.random.fork_rng(devices=[]):  # seeded init, dropout and noise; global RNG untouched
        torch.manual_seed(seed)
        head = InstructionHead(tasks, hidden=hidden)
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        head.train()
        for _ in range(epochs):
            opt.zero_grad()
            # embedding noise: a cheap augmentation, phrasings near a training phrase share its class
            noisy = F.normalize(x + 0.02 * torch.randn(x.shape), dim=-1)
            loss = F.cross_entropy(head(noisy), y, weight=weights, label_smoothing=label_smoothing)
            loss.backward()
            opt.step()
    is_task = y < len(tasks)
    head.set_bank(x[is_task], y[is_task])
    return head.eval()


def held_out_accuracy(
    head: InstructionHead, encoder: SentenceEncoder, held: Mapping[str, Sequence[str]]
) -> tuple[float, int]:
    """(share of ``held``'s ``{class: phrases}`` that ``head`` classifies as their class, number of
    phrases); (0.0, 0) when there are none. A class the head lacks counts as wrong."""
    n_ok = n = 0
    for c, phrases in held.items():
        if phrases:
            pred = head.probabilities(encoder.encode(list(phrases))).argmax(1)
            n_ok += sum(head.classes[int(i)] == c for i in pred)
            n += len(phrases)
    return (n_ok / n if n else 0.0), n
