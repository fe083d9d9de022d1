"""Instruction understanding on the held-out corpus split, and its latency.

Prints: held-out accuracy over the task phrasings (a refusal counts as an error), the share of
held-out unsupported requests that are refused, the share of valid held-out phrasings wrongly
refused, and the median latency of one instruction after the encoder is loaded.
Targets (issue 5): accuracy >= 97%, unsupported refused >= 90%, valid refused <= 2%, latency < 30 ms.

    python benchmarks/instructions.py [--head PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time

from instruct_ipt.instruct import UNSUPPORTED, InstructionError, InstructionHead, Interpreter, load_corpus, split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", help="a head file (default: the packaged one)")
    args = ap.parse_args()
    head = InstructionHead.load(args.head) if args.head else InstructionHead.default()
    interp = Interpreter(head)
    _, held = split(load_corpus())
    correct = total = refused_valid = 0
    per_task = {}
    mistakes = []
    for cls, phrases in held.items():
        if cls == UNSUPPORTED or cls not in head.tasks:
            continue
        ok = 0
        for text in phrases:
            try:
                got = interp(text).tasks
            except InstructionError:
                refused_valid += 1
                mistakes.append((cls, text, "refused"))
                continue
            if got == [cls]:
                ok += 1
            else:
                mistakes.append((cls, text, "+".join(got)))
        per_task[cls] = (ok, len(phrases))
        correct += ok
        total += len(phrases)
    refused = 0
    for text in held[UNSUPPORTED]:
        try:
            got = interp(text).tasks
            mistakes.append((UNSUPPORTED, text, "+".join(got)))
        except InstructionError:
            refused += 1
    print(f"held-out task phrasings: {correct}/{total} correct = {100 * correct / total:.1f}% (target >= 97%)")
    for cls, (ok, n) in per_task.items():
        print(f"  {cls:<9} {ok}/{n} = {100 * ok / n:.1f}%")
    n_uns = len(held[UNSUPPORTED])
    print(f"held-out unsupported refused: {refused}/{n_uns} = {100 * refused / n_uns:.1f}% (target >= 90%)")
    print(f"valid phrasings wrongly refused: {refused_valid}/{total} = {100 * refused_valid / total:.1f}% (target <= 2%)")
    try:
        interp("remove the rain")
    except InstructionError:
        pass
    times = []
    for text in ["the photo is foggy, clear it up", "remove the rain and the noise", "my hand shook"] * 10:
        t = time.perf_counter()
        try:
            interp(text)
        except InstructionError:
            pass
        times.append(time.perf_counter() - t)
    print(f"latency per instruction after load: median {1000 * statistics.median(times):.1f} ms (target < 30 ms)")
    print("mistakes (class | text | got):")
    for m in mistakes:
        print("  " + " | ".join(m))


if __name__ == "__main__":
    main()
