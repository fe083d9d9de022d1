"""Seconds per image: PyTorch (``--engine torch``) vs onnxruntime (``--engine onnx``, the CPU default), fp32.

One process, one image size, the two engines interleaved so that drift (another job on the CPU)
hits both alike; prints the median of the repeats, the one-off export time of the ONNX graph, the
time a later command pays instead (the graph loaded from the disk cache, the cache key included),
and the largest difference between the two outputs. Both run with the same number of threads.
The graphs go to a temporary cache folder, so the export is a real one and the user's cache is
left alone.

    python benchmarks/export_speed.py [--model DIR] [--task derain] [--size 768x512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from instruct_ipt import InstructIPT
from instruct_ipt.export import OnnxRestorer
from instruct_ipt.inference import restore_array


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--task", default="derain")
    ap.add_argument("--size", default="768x512", help="WIDTHxHEIGHT (default 768x512)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    import onnxruntime

    model = InstructIPT.from_pretrained(args.model).eval()
    rgb = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} threads; "
          f"task {args.task}, {width}x{height}, {args.repeats} repeats (median)")

    def run_torch() -> np.ndarray:
        with model.merged(args.task):
            return restore_array(model, rgb, None, tile=0)

    engine = OnnxRestorer(model)
    with tempfile.TemporaryDirectory(prefix="export-speed-") as cache:
        os.environ["INSTRUCT_IPT_CACHE"] = cache  # cold, and not the user's
        start = time.perf_counter()
        engine.session(args.task)  # the one-off export (written to the cache; the session stays in memory)
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        OnnxRestorer(model).session(args.task)  # what a later command pays: key, read, onnxruntime session
        hit_s = time.perf_counter() - start

    def run_onnx() -> np.ndarray:
        return engine(rgb, args.task, tile=0)

    outs = {"pytorch": run_torch(), "onnxruntime": run_onnx()}  # warm-up (and the outputs compared)
    times: dict[str, list[float]] = {name: [] for name in outs}
    for _ in range(args.repeats):
        for name, fn in (("pytorch", run_torch), ("onnxruntime", run_onnx)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name in outs:
        print(f"{name:12s} {med[name]:7.2f} s/image   (runs: {', '.join(f'{t:.2f}' for t in times[name])})")
    print(f"onnxruntime / pytorch: {med['onnxruntime'] / med['pytorch']:.2f}; ONNX export (once per task): {export_s:.1f} s; "
          f"cached graph loaded (later commands): {hit_s:.2f} s; "
          f"max |difference| {np.abs(outs['onnxruntime'] - outs['pytorch']).max():.2e}")


if __name__ == "__main__":
    main()
