"""Emoji from Noto Color Emoji as a captioned RGB dataset: about 1,350 images.

Each single code point the font draws is one image; its caption is the code point's Unicode
name in lower case ("grinning face", "red apple"). There are no class labels.

- **Font**: ``/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf`` from the Debian package
  ``fonts-noto-color-emoji``; ``$DIFFLAB_EMOJI_FONT`` or ``font=`` names another file.
- **Code points**: U+00A0..U+1FFFF with a name in this Python's :mod:`unicodedata` and a
  glyph in the font (it draws something other than what it draws for U+10FFFF, a
  noncharacter no font maps). Left out: the emoji components that only build sequences
  (ZWJ, variation selectors, the combining keycap, skin-tone modifiers, regional
  indicators, tags, hair styles; keycap bases 0-9 # * are ASCII) and other format, mark,
  space, private-use and unassigned code points.
- **Pixels**: drawn at size 109 (Noto's only bitmap strike, 136×128 glyphs) on a transparent
  canvas, cropped to the glyph's visible pixels (alpha > 0), centred in a transparent square
  with a margin of 1/16 of the longer side, composited on white and resized to
  ``resolution`` (default 64) with Lanczos.
- **Splits**: an emoji whose code point is a multiple of 10 is in ``test`` (about one in
  ten), the others in ``train``; ``all`` is both. The rule looks only at the code point, so
  an emoji keeps its split when a newer font or Python adds emoji.

Rendering takes a few seconds; the whole set is cached per resolution as one safetensors
file keyed by the font file (path, size, modification time), the resolution and the Pillow
and Unicode versions.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from difflab.data.cache import cache_dir, content_key, load_cached, try_save_dataset
from difflab.data.dataset import ImageDataset
from difflab.data.image_folder import to_rgb

DEFAULT_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_ENV = "DIFFLAB_EMOJI_FONT"
FONT_SIZE = 109  # the only size of Noto Color Emoji's bitmaps (CBDT); others fail to open
DEFAULT_RESOLUTION = 64
SPLITS = ("train", "test", "all")

_FIRST, _LAST = 0xA0, 0x1FFFF  # below U+00A0: ASCII, whose emoji are the keycap bases
_NONCHARACTER = "\U0010FFFF"  # never mapped: the font draws its "missing glyph" for it
# General categories that are never a picture of their own: controls and format characters
# (ZWJ, tags), unassigned, private use, surrogates, marks (variation selectors, the combining
# keycap), modifier symbols (skin tones), separators and decimal digits.
_NOT_PICTURES = {"Cc", "Cf", "Cn", "Co", "Cs", "Mn", "Mc", "Me", "Sk", "Zs", "Zl", "Zp", "Nd"}
_COMPONENT_RANGES = ((0x1F1E6, 0x1F1FF),  # regional indicators: flags are pairs of them
                     (0x1F9B0, 0x1F9B3))  # hair components of ZWJ sequences
_MARGIN = 1 / 16  # blank border on each side, a fraction of the glyph's longer side
_TEST_EVERY = 10
_CACHE_FORMAT = 1


def font_path(font: str | Path | None = None) -> Path:
    """The emoji font file: ``font``, else ``$DIFFLAB_EMOJI_FONT``, else Noto Color Emoji."""
    source = "" if font else f" (from ${FONT_ENV})" if os.environ.get(FONT_ENV) else ""
    path = Path(font or os.environ.get(FONT_ENV) or DEFAULT_FONT)
    if not path.is_file():
        raise FileNotFoundError(
            f"emoji font {path}{source} not found: install it with `apt-get install "
            f"fonts-noto-color-emoji`, or point ${FONT_ENV} (or load_emoji(font=...)) at another "
            f"colour emoji font file"
        )
    return path


def open_font(path: Path) -> ImageFont.FreeTypeFont:
    """The font at size 109; the basic layout engine, since each text is one code point."""
    try:
        return ImageFont.truetype(str(path), FONT_SIZE, layout_engine=ImageFont.Layout.BASIC)
    except OSError as err:
        raise ValueError(f"cannot open {path} as a font at size {FONT_SIZE} ({err}); expected a "
                         f"colour emoji font such as Noto Color Emoji") from err


def is_candidate(code_point: int) -> bool:
    """A named code point that can be an emoji of its own (see the module docstring)."""
    char = chr(code_point)
    return (unicodedata.category(char) not in _NOT_PICTURES
            and not any(lo <= code_point <= hi for lo, hi in _COMPONENT_RANGES)
            and unicodedata.name(char, None) is not None)


def draw(font: ImageFont.FreeTypeFont, char: str) -> Image.Image:
    """``char`` drawn in colour on a transparent canvas exactly the size of its box."""
    left, top, right, bottom = font.getbbox(char)
    canvas = Image.new("RGBA", (max(1, right - left), max(1, bottom - top)), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((-left, -top), char, font=font, embedded_color=True)
    return canvas


def emoji_code_points(font: ImageFont.FreeTypeFont) -> list[int]:
    """The candidate code points ``font`` has a glyph for, in increasing order."""
    missing_box = font.getbbox(_NONCHARACTER)
    missing = draw(font, _NONCHARACTER).tobytes()
    found = []
    for code_point in range(_FIRST, _LAST + 1):
        if not is_candidate(code_point):
            continue
        box = font.getbbox(chr(code_point))
        if box[2] <= box[0] or box[3] <= box[1]:  # nothing drawn
            continue
        if box == missing_box and draw(font, chr(code_point)).tobytes() == missing:
            continue
        found.append(code_point)
    return found


def render(font: ImageFont.FreeTypeFont, char: str, resolution: int) -> np.ndarray | None:
    """One emoji as a (resolution, resolution, 3) uint8 array on white; None if blank."""
    canvas = draw(font, char)
    box = canvas.getchannel("A").getbbox()  # the pixels with alpha > 0
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = round(max(glyph.size) * (1 + 2 * _MARGIN))
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    rgb = to_rgb(square).resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


def render_emoji(font_file: str | Path, resolution: int = DEFAULT_RESOLUTION) -> ImageDataset:
    """Every emoji of ``font_file`` (the ``all`` split), without the cache."""
    font = open_font(Path(font_file))
    arrays, captions = [], []
    for code_point in tqdm(emoji_code_points(font), desc="rendering emoji", unit="img", disable=None):
        pixels = render(font, chr(code_point), resolution)
        if pixels is not None:
            arrays.append(pixels)
            captions.append(unicodedata.name(chr(code_point)).lower())
    if not arrays:
        raise ValueError(f"{font_file} has no glyph for any emoji code point: is it an emoji font?")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageDataset(images=images, captions=captions, name="emoji:all")


def is_test(code_point: int) -> bool:
    """The split rule: code points that are multiples of 10 are the test set."""
    return code_point % _TEST_EVERY == 0


def _cached(font_file: Path, resolution: int) -> ImageDataset:
    stat = font_file.stat()
    key = content_key(_CACHE_FORMAT, str(font_file.resolve()), stat.st_size, stat.st_mtime_ns,
                      resolution, PIL.__version__, unicodedata.unidata_version)
    path = cache_dir() / "emoji" / f"emoji-{resolution}px-{key[:20]}.safetensors"
    cached = load_cached(path)
    if cached is not None:
        return cached
    dataset = render_emoji(font_file, resolution)
    try_save_dataset(path, dataset)
    return dataset


def load_emoji(split: str = "train", resolution: int | None = None, font: str | Path | None = None,
               use_cache: bool = True) -> ImageDataset:
    """Emoji as uint8 (N, 3, resolution, resolution) with their Unicode names as captions.

    Args:
        split: ``train``, ``test`` (code points that are multiples of 10) or ``all``.
        resolution: square side in pixels (default 64); the emoji are drawn at this size.
        font: an emoji font file; default ``$DIFFLAB_EMOJI_FONT``, else Noto Color Emoji.
        use_cache: read/write the rendered set in difflab's cache.
    """
    if split not in SPLITS:
        raise ValueError(f"emoji has splits {', '.join(map(repr, SPLITS))}, not {split!r}")
    resolution = DEFAULT_RESOLUTION if resolution is None else int(resolution)
    if resolution < 1:
        raise ValueError(f"emoji resolution must be at least 1 pixel, got {resolution}")
    path = font_path(font)
    everything = _cached(path, resolution) if use_cache else render_emoji(path, resolution)
    if split == "all":
        return everything
    # Each caption is a Unicode name, so lookup gives back the code point it was drawn from.
    test = torch.tensor([is_test(ord(unicodedata.lookup(c))) for c in everything.captions])
    return everything.subset(test if split == "test" else ~test, name=f"emoji:{split}")
