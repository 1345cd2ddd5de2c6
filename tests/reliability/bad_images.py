"""The bad-image corpus: the files a real image folder holds that a loader must survive.

:func:`write_corpus` fills a folder with good images in two class folders (``cat/``, ``dog/``),
images that load after a conversion (16-bit grey, CMYK, palette with transparency, 1×1, a PNG
named ``.jpg``, a symlink to a good image) and files that cannot be used (truncated PNG, JPEG and
WebP, zero bytes, text named ``.png``, a corrupt data stream, decompression-bomb headers, a file
symlink loop, a dangling symlink, a folder symlink loop, a named pipe, an unreadable file), and
returns what a loader should make of each. Every file is a few hundred bytes: the bomb headers
claim 100000×100000 and 10000×10000 pixels without holding them.

Not a test module (no ``test_`` prefix): ``test_bad_images.py`` imports it.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, features

# Tests run as root, where chmod 000 still reads: the test makes this file unreadable by
# patching Image.open (the corpus also chmods it, which is enough under any other user).
UNREADABLE = "cat/unreadable.png"


@dataclass
class Corpus:
    """What a loader should make of each file under ``root`` (paths relative to it, posix)."""

    root: Path
    # Usable files, in load order (sorted path): the RGB colour each should decode to and the
    # conversion it needs, if any.
    loads: dict[str, tuple[tuple[int, int, int], str | None]] = field(default_factory=dict)
    skips: dict[str, str] = field(default_factory=dict)  # unusable file → the reason it is skipped
    captions: dict[str, str] = field(default_factory=dict)  # caption files beside usable images

    @property
    def labels(self) -> list[int]:
        classes = sorted({path.split("/")[0] for path in self.loads})
        return [classes.index(path.split("/")[0]) for path in sorted(self.loads)]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(size: int = 32, seed: int = 0) -> Image.Image:
    """Random RGB pixels: they compress badly, so a file cut in half loses real image data."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, idat: bytes) -> bytes:
    """A PNG with an 8-bit RGB header of any claimed size around the given IDAT payload."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming ``width``×``height`` pixels, with no pixel data behind it."""
    return png_bytes(width, height, zlib.compress(b""))


def has_webp() -> bool:
    return bool(features.check("webp"))


def _write(root: Path, relative: str, data: bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _solid(mode: str, color, size: int = 8) -> Image.Image:
    return Image.new(mode, (size, size), color)


def write_corpus(root: str | Path) -> Corpus:
    """Write the whole corpus into ``root`` (created) and return what a loader should make of it.

    Good and converted images are 8×8 (one 1×1) and solid colours, so each can be recognised
    after decoding; with WebP missing from Pillow the two WebP files are left out.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root)

    def good(relative: str, data: bytes, rgb, conversion: str | None = None) -> None:
        _write(root, relative, data)
        corpus.loads[relative] = (rgb, conversion)

    def bad(relative: str, data: bytes, reason: str) -> None:
        _write(root, relative, data)
        corpus.skips[relative] = reason

    # Usable as they are. The 1×1 image sorts first: it must be resized like the others rather
    # than set the size of the whole set.
    good("cat/0_tiny.png", encode(_solid("RGB", (10, 200, 10), size=1), "PNG"), (10, 200, 10), "upscaled")
    good("cat/good.png", encode(_solid("RGB", (200, 30, 30)), "PNG"), (200, 30, 30))
    corpus.captions["cat/good.png"] = "a red square"
    _write(root, "cat/good.txt", b"a red square\n")
    good("dog/good.jpg", encode(_solid("RGB", (0, 120, 120)), "JPEG", quality=95), (0, 120, 120))
    good("dog/png_named.jpg", encode(_solid("RGB", (30, 30, 200)), "PNG"), (30, 30, 200))
    if has_webp():
        good("dog/good.webp", encode(_solid("RGB", (120, 60, 0)), "WEBP", lossless=True), (120, 60, 0))
    # A symlink to a good image kept in a hidden folder (which the walk itself skips).
    _write(root, ".originals/target.png", encode(_solid("RGB", (90, 90, 90)), "PNG"))
    os.symlink("../.originals/target.png", root / "dog/linked.png")
    corpus.loads["dog/linked.png"] = ((90, 90, 90), None)

    # Usable after a conversion.
    good("cat/grey16.png", encode(_solid("I;16", 257 * 50), "PNG"), (50, 50, 50), "16-bit")
    good("cat/cmyk.jpg", encode(_solid("CMYK", (0, 255, 255, 0)), "JPEG", quality=95), (255, 0, 0), "CMYK")
    palette = _solid("P", 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    good("dog/palette_alpha.png", encode(palette, "PNG", transparency=1), (255, 255, 255), "transparency")

    # Unusable.
    png, jpeg = encode(noise(), "PNG"), encode(noise(), "JPEG", quality=95)
    bad("cat/truncated.png", png[: len(png) // 2], "truncated")
    bad("cat/truncated.jpg", jpeg[: len(jpeg) // 2], "truncated")
    if has_webp():
        webp = encode(noise(), "WEBP", quality=90)
        bad("dog/truncated.webp", webp[: len(webp) // 2], "truncated")
    bad("cat/empty.png", b"", "zero bytes")
    bad("dog/notes.png", b"these are notes, not pixels\n", "not an image")
    bad("dog/corrupt.png", png_bytes(8, 8, b"this is not a zlib stream"), "corrupt")
    bad("dog/bomb.png", bomb_png(), "decompression bomb")
    bad("cat/huge.png", bomb_png(10_000, 10_000), "decompression bomb")  # over the limit Pillow only warns at
    bad(UNREADABLE, encode(_solid("RGB", (1, 2, 3)), "PNG"), "unreadable")
    os.chmod(root / UNREADABLE, 0)
    os.symlink("loop_b.png", root / "cat/loop_a.png")
    os.symlink("loop_a.png", root / "cat/loop_b.png")
    corpus.skips.update({"cat/loop_a.png": "symlink loop", "cat/loop_b.png": "symlink loop"})
    os.symlink("missing.png", root / "dog/dangling.png")
    corpus.skips["dog/dangling.png"] = "dangling symlink"
    os.symlink("..", root / "dog/again")  # a folder loop: dog/again/dog/again/...
    corpus.skips["dog/again"] = "symlink loop"
    if hasattr(os, "mkfifo"):  # opening a pipe named .png would wait for a writer forever
        os.mkfifo(root / "cat/pipe.png")
        corpus.skips["cat/pipe.png"] = "not a regular file"

    _write(root, "dog/readme.md", b"not an image file: not counted at all\n")
    return corpus


def write_only_bad(root: str | Path) -> dict[str, str]:
    """A folder where no file is usable; returns file → reason."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    png = encode(noise(), "PNG")
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("not pixels\n")
    os.symlink("missing.png", root / "dangling.png")
    return {"truncated.png": "truncated", "empty.jpg": "zero bytes", "notes.png": "not an image",
            "dangling.png": "dangling symlink"}
