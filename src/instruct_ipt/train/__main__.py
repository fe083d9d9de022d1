"""``python -m instruct_ipt.train CONFIG.yaml [--resume]``: the entry point for ``torchrun``."""

import os
import sys

from ..cli import main

code = main(["train", *sys.argv[1:]])
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # By now every file is written and closed (checkpoints and the model atomically, the log line by
    # line) and the process group is destroyed. What is left is the interpreter's and the C++
    # libraries' exit-time teardown, and with gloo on the CPU (torch 2.13) that aborted a process in
    # 2 of 561 two-process runs of the test suite's torchrun test ("terminate called without an
    # active exception", no Python frame left), after the model was saved - and torchrun then
    # reports the whole run as failed (0 of 500 runs leaving this way). So a process of a
    # multi-process run leaves without it, with the code the run earned.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
