"""Nine more clean photographs from Debian's wallpaper packages, prepared like ../shared/photos.

    apt-get download plasma-workspace-wallpapers mate-backgrounds
    python scripts/extra_photos.py --debs . --out runs/extra-photos

Blind mode's clean class and thresholds learnt from 16 + 5 photos did not carry over to the
validation photos (docs/instructions.md): a soft, bright or shallow-depth-of-field photo without any
degradation read as hazy or blurred. These are photographs (not illustrations) of the same
packages that ../shared/photos leaves out, several of them exactly that kind of photo; left out
here too: the foggy ones (plasma's ColdRipple and DarkestHour: not clean) and the night sky and
kite scenes (lomiri's Infinite-Sea, plasma's Kite: composited or partly drawn). Each is
downscaled (Lanczos) so that the longer side is 1024 px, cropped to a multiple of 16 px and saved as
PNG, as ../shared/photos/SOURCES.md describes. Nothing is downloaded here: the script reads the
``.deb`` files (an ``ar`` archive holding ``data.tar.*``) that ``apt-get download`` fetched.

Licences and authors: the plasma-workspace-wallpapers photographs are LGPL-3 (each wallpaper's
``metadata.json``): BytheWater Maciej Wiklo, ColorfulCups Dmitri Popov, EveningGlow Ian Hex,
FallenLeaf Martin Klapetek, Grey Sigi Sagi, OneStandsOut, Path and summer_1am Risto Saukonpää;
mate-backgrounds' FreshFlower is GPL-2+ (MATE artwork contributors). Keep that attribution wherever
these images or artefacts derived from them are described.
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

from PIL import Image

LONG_SIDE = 1024
MULTIPLE = 16

# output name -> (package, path inside the package's data archive)
PHOTOS: dict[str, tuple[str, str]] = {
    "bythewater.png": ("plasma-workspace-wallpapers", "usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg"),
    "colorfulcups.png": ("plasma-workspace-wallpapers", "usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg"),
    "eveningglow.png": ("plasma-workspace-wallpapers", "usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg"),
    "fallenleaf.png": ("plasma-workspace-wallpapers", "usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg"),
    "grey.png": ("plasma-workspace-wallpapers", "usr/share/wallpapers/Grey/contents/images/2560x1600.jpg"),
    "onestandsout.png": ("plasma-workspace-wallpapers", "usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg"),
    "path.png": ("plasma-workspace-wallpapers", "usr/share/wallpapers/Path/contents/images/2560x1600.jpg"),
    "summer1am.png": ("plasma-workspace-wallpapers", "usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg"),
    "freshflower.png": ("mate-backgrounds", "usr/share/backgrounds/mate/nature/FreshFlower.jpg"),
}


def data_archive(deb: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a Debian package, opened (``ar`` format: 60-byte headers)."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise SystemExit(f"{deb}: not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(raw[pos + 60:pos + 60 + size]))  # gz, bz2 or xz by content
        pos += 60 + size + (size % 2)
    raise SystemExit(f"{deb}: no data.tar member")


def prepare(image: Image.Image) -> Image.Image:
    """Longer side to LONG_SIDE (Lanczos), then a centre crop to a multiple of MULTIPLE px."""
    image = image.convert("RGB")
    scale = LONG_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    w, h = (image.width // MULTIPLE) * MULTIPLE, (image.height // MULTIPLE) * MULTIPLE
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debs", required=True, help="folder with the .deb files apt-get download fetched")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for package in sorted({p for p, _ in PHOTOS.values()}):
        debs = sorted(Path(args.debs).glob(f"{package}_*.deb"))
        if not debs:
            raise SystemExit(f"no {package}_*.deb in {args.debs}: run `apt-get download {package}` there")
        with data_archive(debs[-1]) as tar:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
            for name, (pkg, inner) in PHOTOS.items():
                if pkg != package:
                    continue
                if inner not in members:
                    raise SystemExit(f"{debs[-1].name} has no {inner}")
                image = prepare(Image.open(io.BytesIO(tar.extractfile(members[inner]).read())))
                tmp = out / f".{name}.tmp"
                image.save(tmp, format="PNG")
                tmp.replace(out / name)
                print(f"{out / name}: {image.width}x{image.height} from {debs[-1].name}")


if __name__ == "__main__":
    main()
