"""Train the blind-mode degradation classifier shipped with the package.

    python scripts/train_blind_classifier.py --photos ../shared/photos/train [--steps 1500]

Writes src/instruct_ipt/instruct/degradation_classifier.safetensors (or --out). Training photos:
the given folders plus scikit-image's bundled photos; degradations: each task's default operator.
"""

from __future__ import annotations

import argparse
import time

from skimage import data as skdata

from instruct_ipt.data.degradations import DEGRADATIONS, make_degradation
from instruct_ipt.data.synthetic import load_clean_images
from instruct_ipt.instruct.blind import DegradationClassifier, train_classifier
from instruct_ipt.train.trainer import SKIMAGE_PHOTOS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", action="append", default=[])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="src/instruct_ipt/instruct/degradation_classifier.safetensors")
    ap.add_argument("--init", help="continue from this classifier file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    images = load_clean_images([*args.photos, *(getattr(skdata, n)() for n in SKIMAGE_PHOTOS)])
    ops = {t: make_degradation(t) for t in DEGRADATIONS}
    t0 = time.time()
    init = DegradationClassifier.load(args.init) if args.init else None
    model = train_classifier(images, ops, steps=args.steps, batch_size=args.batch, workers=args.workers,
                             log=lambda m: print(m, flush=True), init=init, seed=args.seed, lr=args.lr)
    model.save(args.out)
    print(f"trained on {len(images)} photos in {time.time() - t0:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
