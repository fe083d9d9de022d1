"""scripts/extra_photos.py on hand-made Debian packages (an ar archive holding data.tar.xz)."""

import importlib.util
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("extra_photos", ROOT / "scripts/extra_photos.py")
extra_photos = importlib.util.module_from_spec(spec)
spec.loader.exec_module(extra_photos)


def ar_member(name: str, payload: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(payload):<10}`\n".encode()
    assert len(header) == 60
    return header + payload + (b"\n" if len(payload) % 2 else b"")


def fake_deb(path: Path, files: dict[str, bytes]) -> Path:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n") + ar_member("control.tar.xz", b"x")
                     + ar_member("data.tar.xz", data.getvalue()))
    return path


def jpeg(width: int, height: int, seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def fake_packages(folder: Path) -> dict[str, tuple[int, int]]:
    """Every photo the script names, in the two packages; returns each output's expected size."""
    sizes = {name: (2080, 1300) if i == 0 else (200, 120 + i) for i, name in enumerate(extra_photos.PHOTOS)}
    for package in {p for p, _ in extra_photos.PHOTOS.values()}:
        files = {inner: jpeg(*sizes[name], seed=i) for i, (name, (pkg, inner)) in enumerate(extra_photos.PHOTOS.items())
                 if pkg == package}
        fake_deb(folder / f"{package}_1.0_all.deb", files)
    return {name: (1024, 640) if (w, h) == (2080, 1300) else (w // 16 * 16, h // 16 * 16) for name, (w, h) in sizes.items()}


def run(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["extra_photos.py", *args])
    extra_photos.main()


def test_extracts_downscales_and_crops_every_photo(tmp_path, monkeypatch):
    expected = fake_packages(tmp_path)
    run(monkeypatch, "--debs", str(tmp_path), "--out", str(tmp_path / "out"))
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(extra_photos.PHOTOS)  # no temporary file left behind
    for name, size in expected.items():
        with Image.open(tmp_path / "out" / name) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", size), name


def test_a_missing_package_or_photo_is_named(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="apt-get download"):
        run(monkeypatch, "--debs", str(tmp_path), "--out", str(tmp_path / "out"))
    fake_packages(tmp_path)
    (tmp_path / "mate-backgrounds_1.0_all.deb").unlink()
    fake_deb(tmp_path / "mate-backgrounds_1.0_all.deb", {"usr/share/other.jpg": jpeg(32, 32, 0)})
    with pytest.raises(SystemExit, match="has no usr/share/backgrounds/mate/nature/FreshFlower.jpg"):
        run(monkeypatch, "--debs", str(tmp_path), "--out", str(tmp_path / "out"))


def test_a_file_that_is_not_a_package_is_refused(tmp_path):
    (tmp_path / "x.deb").write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(SystemExit, match="not a Debian package"):
        extra_photos.data_archive(tmp_path / "x.deb")
    (tmp_path / "y.deb").write_bytes(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n"))
    with pytest.raises(SystemExit, match="no data.tar member"):
        extra_photos.data_archive(tmp_path / "y.deb")
