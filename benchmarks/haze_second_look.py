"""A second look at the whole photo for haze: can blind mode name haze *after* another task?

Peeling (docs/instructions.md) looks again at a central crop after removing the main degradation,
and there haze and a clean photo look alike. Haze is a property of the whole scene, so this looks at
the whole photo instead: shrunk so its longer side is ``--restore-side`` px, restored there with the
task the classifier names first, shrunk again to ``--side`` px and classified. It prints the
classifier's haze probability on that second look for every photo and case, so that a threshold can
be judged on photos with haze and without (a prototype's measurement, not a feature: no threshold
separates them on the validation photos, docs/instructions.md says why):

    python benchmarks/haze_second_look.py --photos ../shared/photos/val --seeds 2
"""

from __future__ import annotations

import argparse
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from instruct_ipt.data.degradations import composite_tasks, is_composite, make_degradation
from instruct_ipt.data.images import list_images, read_rgb
from instruct_ipt.instruct.blind import CLEAN
from instruct_ipt.pipeline import RestorationPipeline

CASES = ("clean", "denoise", "deblur", "derain", "desnow", "jpeg", "dehaze",
         "haze+noise", "haze+rain", "haze+snow", "blur+noise", "rain+noise", "snow+noise")


def shrink(rgb: np.ndarray, side: int) -> np.ndarray:
    """``rgb`` resized (Lanczos) so its longer side is about ``side`` px, both sides multiples of 8."""
    h, w = rgb.shape[:2]
    s = side / max(h, w)
    size = (max(8, round(w * s / 8) * 8), max(8, round(h * s / 8) * 8))
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)).resize(size, Image.LANCZOS)
    return np.asarray(img).astype(np.float32) / 255.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", action="append", required=True, help="a folder of clean photos, or one photo (repeatable)")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model and its classifier)")
    ap.add_argument("--seeds", type=int, default=2, help="degraded versions per photo and case")
    ap.add_argument("--side", type=int, default=256, help="side of the thumbnail the classifier sees")
    ap.add_argument("--restore-side", type=int, default=256, help="side at which the first task is removed")
    ap.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    args = ap.parse_args()
    files = [f for p in args.photos for f in (list_images(p) if Path(p).is_dir() else [Path(p)])]
    pipe = RestorationPipeline.from_pretrained(args.model, device=args.device)
    clf = pipe.classifier
    t0 = time.perf_counter()
    print(f"haze probability on the second look ({args.restore_side} px restored with the first task, "
          f"{args.side} px classified); first task in brackets where it is not the case's own")
    print("| photo | " + " | ".join(CASES) + " |")
    print("| --- |" + " --- |" * len(CASES))
    for i, f in enumerate(files):
        clean = read_rgb(f)
        cells = []
        for case in CASES:
            own = set() if case == "clean" else set(composite_tasks(case)) if is_composite(case) else {case}
            values = []
            for seed in range(1 if case == "clean" else args.seeds):
                rng = np.random.default_rng((seed, zlib.crc32(case.encode()), i))
                image = clean if case == "clean" else make_degradation(case)(clean, rng).image
                probs = clf.predict(image)
                first = max((t for t in probs if t != CLEAN), key=probs.get)
                restored = np.clip(pipe.run(shrink(image, args.restore_side), [first]), 0, 1)
                haze = clf.predict(shrink(restored, args.side))["dehaze"]
                values.append(f"{haze:.2f}" + ("" if first in own else f" ({first})"))
            cells.append(", ".join(values))
        print(f"| {f.name} | " + " | ".join(cells) + " |")
    print(f"wall {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
