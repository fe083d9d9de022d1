"""Cross-validation of the instruction head on the training split only (the held-out fifth untouched).

Use it to compare head or corpus changes without looking at the held-out phrasings: 5 folds by a hash
of the text; a head is trained on 4 folds and scored on the fifth with the interpreter's refusal rule
(best class "unsupported" or probability below --threshold).

    python benchmarks/instruction_cv.py [--threshold 0.5] [--folds 5]
"""

from __future__ import annotations

import argparse
import zlib

import torch

from instruct_ipt.instruct import UNSUPPORTED, default_encoder, load_corpus, split, train_head


class CachedEncoder:
    """Encode each phrase once across folds."""

    def __init__(self) -> None:
        self.encoder = default_encoder()
        self.cache: dict[str, torch.Tensor] = {}

    def encode(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.encoder.encode(missing)))
        return torch.stack([self.cache[t] for t in texts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    train, _ = split(load_corpus())
    tasks = [c for c in train if c != UNSUPPORTED]
    enc = CachedEncoder()
    ok = n = refused_bad = n_bad = refused_good = 0
    for f in range(args.folds):
        def fold(t: str) -> int:
            return zlib.crc32(t.encode()) % 7 % args.folds

        fit = {c: [t for t in ts if fold(t) != f] for c, ts in train.items()}
        test = {c: [t for t in ts if fold(t) == f] for c, ts in train.items()}
        head = train_head(fit, tasks, enc)
        for c, ts in test.items():
            if not ts:
                continue
            for p in head.probabilities(enc.encode(ts)):
                conf, i = p.max(0)
                pred = head.classes[int(i)]
                refused = pred == UNSUPPORTED or float(conf) < args.threshold
                if c == UNSUPPORTED:
                    n_bad += 1
                    refused_bad += refused
                else:
                    n += 1
                    ok += (not refused) and pred == c
                    refused_good += refused
    print(f"{args.folds}-fold CV on the training split, threshold {args.threshold} (no question rule):")
    print(f"  task accuracy {100 * ok / n:.1f}% ({n} phrasings)")
    print(f"  unsupported refused {100 * refused_bad / n_bad:.1f}% ({n_bad})")
    print(f"  valid wrongly refused {100 * refused_good / n:.1f}%")


if __name__ == "__main__":
    main()
