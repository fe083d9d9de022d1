"""Train the blind-mode degradation classifier shipped with the package.

    python scripts/train_blind_classifier.py --photos ../shared/photos/train [--steps 1500] [--exclude NAME ...]

Writes src/instruct_ipt/weights/default/degradation_classifier.safetensors (or --out). Training photos:
the given folders (less any ``--exclude``d photo, by file name, kept for testing) plus
scikit-image's bundled photos; degradations: each task's default operator, applied as in
``BlindDataset`` (photos rescaled, crops sometimes softened before degrading).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from skimage import data as skdata

from instruct_ipt.data.degradations import DEGRADATIONS, make_degradation
from instruct_ipt.data.images import list_images
from instruct_ipt.data.synthetic import load_clean_images
from instruct_ipt.instruct.blind import DegradationClassifier, train_classifier
from instruct_ipt.train.trainer import SKIMAGE_PHOTOS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", action="append", default=[])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="src/instruct_ipt/weights/default/degradation_classifier.safetensors")
    ap.add_argument("--init", help="continue from this classifier file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--exclude", action="append", default=[], help="leave out this photo (file name)")
    ap.add_argument("--soften", type=float, default=0.3, help="share of samples softened before degrading")
    ap.add_argument("--context", type=int, default=96, help="square degraded as a whole (>= the 96 px patch)")
    args = ap.parse_args()
    files = [f for p in map(Path, args.photos) for f in (list_images(p) if p.is_dir() else [p])]
    unknown = set(args.exclude) - {f.name for f in files}
    if unknown:
        raise SystemExit(f"--exclude names no given photo: {', '.join(sorted(unknown))}")
    files = [f for f in files if f.name not in args.exclude]
    print(f"training photos: {len(files)} files (+{len(SKIMAGE_PHOTOS)} scikit-image); left out: {', '.join(args.exclude) or 'none'}")
    images = load_clean_images([*files, *(getattr(skdata, n)() for n in SKIMAGE_PHOTOS)])
    ops = {t: make_degradation(t) for t in DEGRADATIONS}
    t0 = time.time()
    init = DegradationClassifier.load(args.init) if args.init else None
    model = train_classifier(images, ops, steps=args.steps, batch_size=args.batch, workers=args.workers,
                             log=lambda m: print(m, flush=True), init=init, seed=args.seed, lr=args.lr, soften=args.soften, context=args.context)
    model.save(args.out)
    print(f"trained on {len(images)} photos in {time.time() - t0:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
