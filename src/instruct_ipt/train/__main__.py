"""``python -m instruct_ipt.train CONFIG.yaml [--resume]``: the entry point for ``torchrun``."""

import sys

from ..cli import main

sys.exit(main(["train", *sys.argv[1:]]))
