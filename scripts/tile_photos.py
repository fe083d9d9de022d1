"""Cut photos into non-overlapping square tiles, for evaluations that need more test images than
a few photos' centre crops give (``instruct_ipt.data.validation.write_tiles``):

    python scripts/tile_photos.py ../shared/photos/val runs/val-tiles-256 --tile 256
    instruct-ipt eval --model default --photos runs/val-tiles-256 --composite rain+noise --sigma 15

Tiles of one photo share its scene: count results per photo as well (the tile names start with
the photo's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from instruct_ipt.data.validation import write_tiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", nargs="+", help="folders of photos, or photo files")
    ap.add_argument("out", help="folder for the tiles (<photo>-<top>-<left>.png)")
    ap.add_argument("--tile", type=int, default=256)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: tiles of another run would mix with these; give a new folder")
    try:
        owner = write_tiles(args.photos, args.tile, out)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None
    print(f"{len(owner)} tiles of {args.tile} px from {len(set(owner.values()))} photos in {args.out}")


if __name__ == "__main__":
    main()
