"""The instruction corpus (package data): phrasings per task and unsupported requests.

One file per class in ``corpus/``: ``<task>.txt`` and ``unsupported.txt``, one instruction a line.
A fixed fifth of each file, chosen by a hash of the text (so the split never moves when lines are
added elsewhere), is held out: training never sees it, and accuracy is reported on it.
"""

from __future__ import annotations

import random
import zlib
from importlib import resources
from pathlib import Path

UNSUPPORTED = "unsupported"


def corpus_dir() -> Path:
    return Path(str(resources.files("instruct_ipt.instruct") / "corpus"))


def read_phrases(path: str | Path) -> list[str]:
    """Non-empty, stripped, de-duplicated lines (``#`` starts a comment line)."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    return list(dict.fromkeys(ln for ln in lines if ln and not ln.startswith("#")))


def load_corpus(folder: str | Path | None = None) -> dict[str, list[str]]:
    """``{class: phrases}`` for every ``*.txt`` in the corpus folder: the built-in tasks in the
    degradation registry's order (the shipped model's), then other tasks by name, "unsupported" last,
    so a head trained on the corpus lists its tasks as the model does."""
    from ..data.degradations import DEGRADATIONS

    folder = Path(folder) if folder else corpus_dir()
    order = {t: i for i, t in enumerate([*DEGRADATIONS, UNSUPPORTED])}
    files = sorted(folder.glob("*.txt"), key=lambda p: (p.stem == UNSUPPORTED, order.get(p.stem, len(order)), p.stem))
    return {p.stem: read_phrases(p) for p in files}


def is_held_out(text: str) -> bool:
    return zlib.crc32(text.lower().encode("utf-8")) % 5 == 0


def split(corpus: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(train, held-out) by :func:`is_held_out`."""
    train = {c: [t for t in ts if not is_held_out(t)] for c, ts in corpus.items()}
    held = {c: [t for t in ts if is_held_out(t)] for c, ts in corpus.items()}
    return train, held


_PREFIXES = ("please ", "can you ", "hey, ", "i need you to ", "help: ")
_SUFFIXES = (" please", " thanks", " asap", "!", " for me")


def _typo(text: str, rng: random.Random) -> str:
    words = text.split()
    long = [i for i, w in enumerate(words) if len(w) >= 4]
    if not long:
        return text
    i = rng.choice(long)
    w = words[i]
    j = rng.randrange(len(w) - 1)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :] if rng.random() < 0.5 else w[:j] + w[j + 1 :]
    return " ".join(words)


def augment(phrases: dict[str, list[str]], seed: int = 0) -> dict[str, list[str]]:
    """Three seeded variants of every phrase: one typo (swapped or dropped letter), a polite or
    conversational prefix, a suffix. Users type like that; in cross-validation on the corpus it
    raised task accuracy and lowered false refusals. Each phrase's variants depend only on the
    phrase and ``seed``, so adding or dropping other phrases never changes them."""
    out = {}
    for c, ps in phrases.items():
        variants = list(ps)
        for p in ps:
            rng = random.Random(zlib.crc32(p.encode("utf-8")) + 1_000_003 * seed)
            variants += [_typo(p, rng), rng.choice(_PREFIXES) + p, p + rng.choice(_SUFFIXES)]
        out[c] = list(dict.fromkeys(variants))
    return out
