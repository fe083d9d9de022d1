"""``add_task``: a task of the user's own, from a folder of (degraded, clean) pairs, in one call.

Adding a task is what weight modulation makes cheap: the new task gets its own low-rank biases,
trained bias-only on its pairs, so the backbone and every other task stay bit-identical (the
six shipped tasks restore exactly as before). What a user would otherwise do in four steps -
write a bias-only config with ``model.init``, teach the instruction head the new phrasings, copy
the head into the model folder, keep the classifier - happens here, and the result is one
self-contained model folder that ``instruct-ipt restore --model`` and ``RestorationPipeline``
load like any other.

The new task's phrasings are kept as text in the folder (``phrases/<task>.txt``), so that a later
``add_task`` on that folder can retrain the head with every task's phrasings.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F

from ..data.paired import load_training_pairs
from ..instruct import InstructionHead, default_encoder, held_out_accuracy, load_corpus, split, train_head
from ..instruct.corpus import UNSUPPORTED, read_phrases
from ..instruct.encoder import SentenceEncoder
from ..io import atomic_write_text
from ..model import resolve_model_dir
from ..pipeline import RestorationPipeline
from .config import config_from_dict
from .trainer import Trainer, plan_stages

#: where a model folder keeps the phrasings of tasks added to it, one ``<task>.txt`` each
PHRASES_DIR = "phrases"
#: a phrasing the current head files under another task with at least this probability (and that
#: resembles that task's training phrasings as much as the interpreter asks) is a collision: the
#: interpreter's segment threshold, the confidence at which it acts on a clause alone
COLLISION_CONFIDENCE = 0.8
#: unsupported-request examples at least this similar (cosine, sentence embeddings) to a new
#: phrasing are dropped from the head's training: "brighten the photo" is unsupported until a
#: low-light task exists, and then it is that task's request
UNSUPPORTED_OVERLAP = 0.75
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class AddTaskError(ValueError):
    """A request ``add_task`` refuses before training; the message says why."""


@dataclass
class AddTaskReport:
    """What :func:`add_task` did, for the command line to print."""

    folder: Path
    task: str
    phrases: list[str]
    steps: int
    pairs: int
    dropped_unsupported: list[str]
    held_out_accuracy: float
    held_out_count: int


def default_phrases(name: str) -> list[str]:
    """A few requests naming the task, for when the user gives none (``lowlight`` ->
    "fix the lowlight", "remove the lowlight", ...). Better phrasings make a better head: give your
    own with ``phrases`` when the name is not a word people use."""
    words = name.replace("_", " ").replace("-", " ")
    return [f"{words}", f"fix the {words}", f"remove the {words}", f"correct the {words}", f"undo the {words}",
            f"get rid of the {words}", f"the photo has {words}, fix it", f"apply {words} correction",
            f"run the {words} task", f"{words} removal please"]


def check_name(name: str, tasks: Sequence[str]) -> None:
    if name in tasks:
        raise AddTaskError(f"the model already has a task {name!r} (tasks: {', '.join(tasks)}); choose another name")
    if name == UNSUPPORTED or not _NAME.match(name):
        raise AddTaskError(f"task name {name!r}: lowercase letters, digits, '-' and '_', starting with a letter "
                           f"(at most 32), and not {UNSUPPORTED!r}")


def check_phrases(head: InstructionHead, encoder: SentenceEncoder, phrases: Sequence[str],
                  confidence: float = COLLISION_CONFIDENCE, support: float = 0.5) -> None:
    """Refuse phrasings that ``head`` already maps confidently to one of its tasks: the new task
    could not have them without taking them from that task. The error names each such phrasing
    and the task it collides with."""
    if not phrases:
        raise AddTaskError("no phrasings for the new task")
    emb = encoder.encode(list(phrases))
    probs, sup = head.probabilities(emb), head.support(emb)
    clashes: dict[str, list[str]] = {}
    for text, p, s in zip(phrases, probs, sup):
        conf, idx = p.max(0)
        cls = head.classes[int(idx)]
        if cls != UNSUPPORTED and float(conf) >= confidence and float(s[int(idx)]) >= support:
            clashes.setdefault(cls, []).append(f'"{text}" ({float(conf):.0%})')
    if clashes:
        said = "; ".join(f"{task}: {', '.join(texts)}" for task, texts in clashes.items())
        raise AddTaskError(f"these phrasings already mean another task to the instruction head - {said}. "
                           "Reword them (name what the new task fixes) or drop them")


def _corpus_for(folder: Path, tasks: Sequence[str], corpus_dir: str | os.PathLike | None) -> dict[str, list[str]]:
    """The corpus (default: the package's) plus the phrasings of tasks added to ``folder`` earlier."""
    corpus = load_corpus(corpus_dir)
    extra = folder / PHRASES_DIR
    for path in sorted(extra.glob("*.txt")) if extra.is_dir() else []:
        corpus[path.stem] = read_phrases(path)
    missing = [t for t in tasks if not corpus.get(t)]
    if missing:
        raise AddTaskError(f"no phrasings known for task(s) {', '.join(missing)} of {folder}: put them in "
                           f"{folder / PHRASES_DIR}/<task>.txt, one per line")
    return corpus


def add_task(
    name: str,
    pairs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    model: str | os.PathLike | None = None,
    phrases: Sequence[str] | str | os.PathLike | None = None,
    corpus: str | os.PathLike | None = None,
    iterations: int = 600,
    max_minutes: float | None = None,
    patch_size: int = 64,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | None = "auto",
    resume: bool = False,
    progress: bool = True,
) -> AddTaskReport:
    """Add task ``name`` to the model in ``model`` (None: the shipped one) and save the result, a
    complete pipeline folder, to ``out``.

    ``pairs``: folder(s) of (degraded, clean) pairs in a layout ``eval`` detects (``input/`` +
    ``target/`` for a task of your own). ``phrases``: the requests that should pick the task (a
    list, or a file with one per line; default :func:`default_phrases`). ``corpus``: a folder of
    ``<task>.txt`` phrasings for the other tasks and ``unsupported.txt`` (default: the package's,
    as ``train-head --corpus``); the head is retrained on it and the new phrasings. Training is bias-only
    (``iterations`` steps, or as many as fit ``max_minutes``), in ``<out>.run/`` beside ``out``,
    removed when the folder is written; ``resume=True`` continues a run that was stopped.

    Everything that can be refused is refused before the first step: an existing task name, a
    folder without pairs, pairs of mismatched size or unreadable files, phrasings the instruction
    head already maps to another task, an ``out`` that holds files.
    """
    src = resolve_model_dir(model)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AddTaskError(f"{out} exists and is not empty: choose a new folder (nothing is overwritten)")
    if out.resolve() == src.resolve():
        raise AddTaskError("out must be a new folder, not the model folder")
    base = RestorationPipeline.from_pretrained(src, device="cpu")
    check_name(name, base.tasks)
    if phrases is None:
        texts = default_phrases(name)
    elif isinstance(phrases, (str, os.PathLike)):
        texts = read_phrases(phrases)
    else:
        texts = list(dict.fromkeys(p.strip() for p in phrases if p.strip()))
    encoder = default_encoder()
    check_phrases(base.head, encoder, texts)
    folders = [str(pairs)] if isinstance(pairs, (str, os.PathLike)) else [str(p) for p in pairs]
    n_pairs = len(load_training_pairs(folders, name, min_size=patch_size))  # every file checked now
    corpus = _corpus_for(src, base.tasks, corpus)

    run_dir = out.with_name(out.name + ".run")
    cfg = config_from_dict({
        "mode": "bias-only",
        "tasks": {**{t: {} for t in base.tasks}, name: {}},
        "train_tasks": [name],
        "model": {"init": str(src)},
        "data": {"paired": {name: folders}, "patch_size": patch_size, "batch_size": batch_size},
        "optim": {"lr": lr, "warmup": min(50, max(1, iterations // 10))},
        "iterations": iterations,
        "log_every": max(1, min(50, iterations // 10)),
        "val_every": iterations,
        "ckpt_every": max(1, min(100, iterations // 5)),
        "out": str(run_dir),
        "seed": seed,
    })
    trainer = Trainer(cfg, resume=resume, device=device, progress=progress, max_minutes=max_minutes)
    trained = trainer.run()
    assert trained is not None
    steps = sum(s.iterations for s in plan_stages(trainer.cfg))  # trainer.cfg: scaled to the time budget

    # the instruction head: every task's phrasings, the new task's all of them (they are few);
    # unsupported examples that now mean the new task are dropped
    train, held = split({c: corpus[c] for c in [*base.tasks, UNSUPPORTED]})
    new_emb = F.normalize(encoder.encode(texts), dim=-1)

    def overlapping(examples: list[str]) -> list[str]:
        if not examples:
            return []
        sims = F.normalize(encoder.encode(examples), dim=-1) @ new_emb.T
        return [t for t, s in zip(examples, sims.amax(1).tolist()) if s >= UNSUPPORTED_OVERLAP]

    dropped = overlapping(train[UNSUPPORTED]) + overlapping(held[UNSUPPORTED])
    train[UNSUPPORTED] = [t for t in train[UNSUPPORTED] if t not in dropped]
    held[UNSUPPORTED] = [t for t in held[UNSUPPORTED] if t not in dropped]
    train[name] = texts
    tasks = [*trained.tasks]
    head = train_head({c: train[c] for c in [*tasks, UNSUPPORTED]}, tasks, encoder, seed=seed)
    accuracy, n_held = held_out_accuracy(head, encoder, {c: v for c, v in held.items() if c != name})

    pipe = RestorationPipeline(trained.cpu(), head, base.classifier)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp)
    if (src / PHRASES_DIR).is_dir():
        shutil.copytree(src / PHRASES_DIR, tmp / PHRASES_DIR)
    atomic_write_text(tmp / PHRASES_DIR / f"{name}.txt", "\n".join(texts) + "\n")
    shutil.copy2(run_dir / "log.jsonl", tmp / "add-task-log.jsonl")
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)  # the folder appears whole or not at all
    shutil.rmtree(run_dir)
    return AddTaskReport(out, name, texts, steps, n_pairs, dropped, accuracy, n_held)


__all__ = ["AddTaskError", "AddTaskReport", "add_task", "check_phrases", "default_phrases"]
