"""Write the bundled check photos (instruct_ipt.data.bundled) into a folder, for

    python scripts/bundled_photos.py runs/bundled
    instruct-ipt eval --model default --photos runs/bundled --crop 192 --sigma 25 --peers --out runs/eval-bundled
    instruct-ipt eval --model default --photos runs/bundled --crop 192 --sigma 25 --grey --tasks denoise --peers --out runs/eval-bundled-grey

which make MODEL.md's "Bundled photos" figures (tests/test_default_model.py recomputes them).
"""

from __future__ import annotations

import argparse

from instruct_ipt.data.bundled import write_bundled_photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    args = ap.parse_args()
    for path in write_bundled_photos(args.folder):
        print(path)


if __name__ == "__main__":
    main()
