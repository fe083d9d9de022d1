"""Images per second restoring a folder, side by side: the file loop as it was (decode, then
restore, one after the other) against a reader thread that decodes the next file while the model
runs, and against tiles batched into one forward pass (``--batch``).

With no ``--photos`` it writes 20 photos (scikit-image's bundled ones, centre crops of
``--size`` px, each twice) to a temporary folder. It also prints the largest difference between
the modes' restored files: the reader thread changes nothing, batched tiles only float rounding.

    python benchmarks/restore_folder.py [--photos DIR] [--model default] [--task denoise]
        [--tile 128] [--batch 4] [--device auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from instruct_ipt import RestorationPipeline
from instruct_ipt.data.images import list_images, load_image


def bundled_photos(folder: Path, size: int, count: int = 20) -> list[Path]:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
             "retina", "cat", "colorwheel", "logo"]
    paths = []
    for i in range(count):
        img = getattr(data, names[i % len(names)])()[..., :3]
        h, w = img.shape[:2]
        s = min(size, h, w)
        crop = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        paths.append(folder / f"{i:02d}-{names[i % len(names)]}.png")
        Image.fromarray(crop).save(paths[-1])
    return paths


def run(pipe: RestorationPipeline, files: list[Path], out: Path, task: str, reader: bool, tile: int | None,
        batch: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    choice = pipe.choose(task=task)
    start = time.perf_counter()
    if reader:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(load_image, files[0])
            for i, f in enumerate(files):
                loading, pending = pending, (pool.submit(load_image, files[i + 1]) if i + 1 < len(files) else None)
                pipe.restore(loading.result(), choice=choice, tile=tile, batch=batch).save(out / f"{f.stem}.png")
    else:
        for f in files:
            pipe.restore(load_image(f), choice=choice, tile=tile, batch=batch).save(out / f"{f.stem}.png")
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", help="a folder of photos (default: 20 bundled photos written to a temporary folder)")
    ap.add_argument("--size", type=int, default=256, help="crop size of the bundled photos")
    ap.add_argument("--model", default="default")
    ap.add_argument("--task", default="denoise")
    ap.add_argument("--tile", type=int, default=128, help="tile size of the tiled modes")
    ap.add_argument("--batch", type=int, default=4, help="tiles per forward pass in the batched mode")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    pipe = RestorationPipeline.from_pretrained(args.model, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = list_images(args.photos) if args.photos else bundled_photos(tmp / "in", args.size)
        run(pipe, files[:1], tmp / "warm", args.task, False, None, 1)  # first call: allocations, oneDNN kernels
        modes = [("before: decode, then restore", False, 0, 1), ("reader thread", True, 0, 1),
                 (f"before, tiles of {args.tile}", False, args.tile, 1), (f"reader thread, tiles of {args.tile}", True, args.tile, 1),
                 (f"reader thread, tiles of {args.tile}, --batch {args.batch}", True, args.tile, args.batch)]
        print(f"{len(files)} images, task {args.task}, device {next(pipe.model.parameters()).device}")
        results = {}
        for name, reader, tile, batch in modes:
            results[name] = run(pipe, files, tmp / name.replace(" ", "_").replace(",", ""), args.task, reader, tile, batch)
            print(f"{name:48s} {results[name]:7.3f} images/s", flush=True)
        outs = [sorted((tmp / n.replace(" ", "_").replace(",", "")).iterdir()) for n, *_ in modes]
        for a, b in [(0, 1), (2, 3), (3, 4)]:
            diff = max(int(np.abs(np.asarray(Image.open(x), np.int16) - np.asarray(Image.open(y), np.int16)).max())
                       for x, y in zip(outs[a], outs[b]))
            print(f"largest difference, {modes[a][0]} vs {modes[b][0]}: {diff} grey level(s)")


if __name__ == "__main__":
    main()
