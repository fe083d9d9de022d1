"""Cross-validation of instruction understanding on the training split only (the held-out fifth untouched).

Use it to compare head, corpus or interpreter changes without looking at the held-out phrasings: 5
folds by a hash of the text; a head is trained on 4 folds and the fifth is scored twice - by the head
alone on the whole text (refused when "unsupported" wins or the probability is below --threshold),
and by the full :class:`Interpreter` (clause splitting, question rule, thresholds), which is what
users get. It also joins pairs of test-fold phrasings of two different tasks ("A and B", "A, then
B", "A; B") and counts how often exactly both tasks come back.

    python benchmarks/instruction_cv.py [--threshold 0.5] [--support-threshold 0.5] [--folds 5]
                                        [--pairs 400] [--cache DIR] [--show]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import zlib
from pathlib import Path

import torch

from instruct_ipt.instruct import (
    UNSUPPORTED,
    InstructionError,
    InstructionHead,
    Interpreter,
    default_encoder,
    load_corpus,
    order_tasks,
    split,
    train_head,
)


class CachedEncoder:
    """Encode each phrase once across folds (and across runs when given a file)."""

    def __init__(self, file: Path | None = None) -> None:
        self.encoder = default_encoder()
        self.file = file
        self.cache: dict[str, torch.Tensor] = torch.load(file) if file and file.exists() else {}

    def encode(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.encoder.encode(missing)))
        return torch.stack([self.cache[t] for t in texts])

    def save(self) -> None:
        if self.file:
            torch.save(self.cache, self.file)


def interpret(interp: Interpreter, text: str) -> list[str] | None:
    try:
        return interp(text).tasks
    except InstructionError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--segment-threshold", type=float, default=None, help="Interpreter.segment_threshold")
    ap.add_argument("--support-threshold", type=float, default=None,
                    help="Interpreter.support_threshold (0: no similarity check)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=400, help="two-task instructions per run (over all folds)")
    ap.add_argument("--show", action="store_true", help="print the interpreter's mistakes")
    ap.add_argument("--cache", help="folder to keep fold heads in (keyed by their training phrases), so that "
                    "interpreter changes can be compared without retraining")
    args = ap.parse_args()
    train, _ = split(load_corpus())
    tasks = [c for c in train if c != UNSUPPORTED]
    if args.cache:
        Path(args.cache).mkdir(parents=True, exist_ok=True)
    enc = CachedEncoder(Path(args.cache) / "embeddings.pt" if args.cache else None)
    rng = random.Random(0)
    head_stats = {"ok": 0, "n": 0, "refused_bad": 0, "n_bad": 0, "refused_good": 0}
    full_stats = dict.fromkeys(head_stats, 0)
    pair_ok = pair_n = 0
    mistakes = []
    joiners = (" and ", ", then ", "; ", " and also ", ", and ")
    for f in range(args.folds):
        def fold(t: str) -> int:
            return zlib.crc32(t.encode()) % 7 % args.folds

        fit = {c: [t for t in ts if fold(t) != f] for c, ts in train.items()}
        test = {c: [t for t in ts if fold(t) == f] for c, ts in train.items()}
        key = hashlib.sha1(json.dumps([tasks, fit]).encode()).hexdigest()[:16]
        cached = Path(args.cache) / f"fold{f}-{key}.safetensors" if args.cache else None
        if cached and cached.exists():
            head = InstructionHead.load(cached)
        else:
            head = train_head(fit, tasks, enc)
            if cached:
                head.save(cached)
        interp = Interpreter(head, encoder=enc, threshold=args.threshold)
        if args.segment_threshold is not None:
            interp.segment_threshold = args.segment_threshold
        if args.support_threshold is not None:
            interp.support_threshold = args.support_threshold
        for c, ts in test.items():
            for text, p in zip(ts, head.probabilities(enc.encode(ts)) if ts else []):
                conf, i = p.max(0)
                pred = head.classes[int(i)]
                for stats, got in ((head_stats, None if pred == UNSUPPORTED or float(conf) < args.threshold else [pred]),
                                   (full_stats, interpret(interp, text))):
                    if c == UNSUPPORTED:
                        stats["n_bad"] += 1
                        stats["refused_bad"] += got is None
                    else:
                        stats["n"] += 1
                        stats["ok"] += got == [c]
                        stats["refused_good"] += got is None
                    if stats is full_stats and got != ([c] if c != UNSUPPORTED else None):
                        mistakes.append((c, text, "refused" if got is None else "+".join(got)))
        for _ in range(args.pairs // args.folds):
            a, b = rng.sample(tasks, 2)
            if not test[a] or not test[b]:
                continue
            text = rng.choice(test[a]).rstrip(".!") + rng.choice(joiners) + rng.choice(test[b])
            got = interpret(interp, text)
            pair_n += 1
            pair_ok += got == order_tasks([a, b])
            if got != order_tasks([a, b]):
                mistakes.append((f"{a}+{b}", text, "refused" if got is None else "+".join(got)))
    enc.save()
    print(f"{args.folds}-fold CV on the training split, threshold {args.threshold}, support threshold "
          f"{interp.support_threshold}:")
    for name, s in (("head alone, whole text", head_stats), ("interpreter (what users get)", full_stats)):
        print(f"  {name}: task accuracy {100 * s['ok'] / s['n']:.1f}% ({s['n']} phrasings), unsupported refused "
              f"{100 * s['refused_bad'] / s['n_bad']:.1f}% ({s['n_bad']}), valid wrongly refused "
              f"{100 * s['refused_good'] / s['n']:.1f}%")
    print(f"  two-task instructions: both tasks exactly {pair_ok}/{pair_n} = {100 * pair_ok / max(pair_n, 1):.1f}%")
    if args.show:
        print("interpreter mistakes (class | text | got):")
        for m in mistakes:
            print("  " + " | ".join(m))


if __name__ == "__main__":
    main()
