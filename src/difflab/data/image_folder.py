"""A folder of images, following Hugging Face's ``imagefolder`` layout.

- Images are found recursively: PNG, JPEG and WebP. Hidden folders are skipped; symlinked
  folders are followed, each real folder once (a link back to an ancestor is a loop).
- The class of an image is the name of its first sub-folder (``root/cat/x.png`` → "cat");
  when some image sits directly in the root, the set has no labels.
- A caption comes from a ``metadata.jsonl`` (one JSON object a line with ``file_name``,
  relative to that file's folder, and ``text`` or ``caption``), else from a ``.txt`` file
  with the image's name beside it.
- Grey, 16-bit grey (scaled to 8 bits), CMYK, RGB and RGBA/LA/palette images are accepted;
  transparency is composited on white. Each image is resized (shorter side, bicubic) and
  centre-cropped to a square.
- A file that cannot be used is skipped with a short reason (:data:`REASONS`): truncated,
  corrupt, not an image, zero bytes, decompression bomb (over ``PIL.Image.MAX_IMAGE_PIXELS``,
  refused from its header before any pixel is allocated), symlink loop, dangling symlink,
  unreadable, not a regular file. Each is logged, then one summary line counts them by
  reason; a folder with no usable image is one error naming the folder and the reasons.

The decoded set is cached as one safetensors file keyed by the folder's contents (paths,
sizes, times and modes of every file, the errors of those that cannot be read) and the
options, so the images are decoded once and a fixed or added file decodes again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from tqdm import tqdm

from difflab.data.cache import cache_dir, content_key, load_cached, read_extra, try_save_dataset
from difflab.data.convert import to_channels
from difflab.data.dataset import ImageDataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILE = "metadata.jsonl"
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
_CACHE_FORMAT = 3  # 3: the files' relative paths are kept (ControlNet pairs control images by name)
_LOGGED_FILES = 20  # per-file warnings before the rest go to DEBUG (the summary still counts them)
_NAMED_IN_SUMMARY = 5

# Why a file is not used, as the summary line counts it (reason → plural).
REASONS = {
    "truncated": "truncated",
    "corrupt": "corrupt",
    "not an image": "not images",
    "zero bytes": "zero bytes",
    "decompression bomb": "decompression bombs",
    "symlink loop": "symlink loops",
    "dangling symlink": "dangling symlinks",
    "unreadable": "unreadable",
    "not a regular file": "not regular files",
    "repeated folder": "repeated folders",
}
# Reasons that belong to the moment rather than to the file: a set with one of these is not cached.
_TRANSIENT = ("unreadable",)
# What a usable file needed (conversion → how the summary counts it).
CONVERSIONS = {
    "16-bit": "16-bit → 8-bit",
    "CMYK": "CMYK → RGB",
    "mode": "other modes → RGB",
    "transparency": "transparency on white",
    "upscaled": "upscaled over 4×",
}
_UPSCALE_NOTED = 4  # an image whose shorter side grows more than this is noted as "upscaled"


@dataclass(frozen=True)
class Skipped:
    """A file (or a symlinked folder) the loader did not use, and why."""

    path: Path
    reason: str  # a key of REASONS
    detail: str = ""  # the underlying error, for the per-file message


class _Unusable(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def walk(root: Path) -> tuple[list[Path], list[Skipped]]:
    """Every file under ``root``, sorted by relative path, and the symlinked folders not followed.

    Hidden folders are skipped. Real sub-folders are read first; then each symlinked folder,
    in sorted order, unless it leads back to one of its own ancestors (``symlink loop``) or
    to a folder already read (``repeated folder``): every real folder is read once, so the
    walk ends on any tree of links. Broken entries (dangling or looping file links) are
    returned as files: :func:`check_file` says what is wrong with them.
    """
    files: list[Path] = []
    skipped: list[Skipped] = []
    seen = {_folder_id(root)}
    real, links = [root], []
    while real or links:
        if real:
            folder = real.pop()
        else:
            folder = links.pop(0)
            try:
                target = _folder_id(folder)
            except OSError as err:  # changed since it was listed
                skipped.append(Skipped(folder, "unreadable", err.strerror or str(err)))
                continue
            if target in seen:
                parent = os.path.realpath(folder.parent)
                loop = (parent + os.sep).startswith(os.path.realpath(folder) + os.sep)
                skipped.append(Skipped(folder, "symlink loop" if loop else "repeated folder",
                                       f"leads to {os.path.realpath(folder)}"))
                continue
            seen.add(target)
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as err:
            skipped.append(Skipped(folder, "unreadable", f"cannot list the folder: {err.strerror or err}"))
            continue
        for entry in entries:
            try:
                is_folder = entry.is_dir()  # follows links; False for dangling ones
            except OSError:  # a looping link: left to check_file if it is named like an image
                is_folder = False
            if not is_folder:
                files.append(Path(entry.path))
            elif entry.name.startswith("."):
                continue
            elif entry.is_symlink():
                links.append(Path(entry.path))
            elif _folder_id(Path(entry.path)) not in seen:
                seen.add(_folder_id(Path(entry.path)))
                real.append(Path(entry.path))
        links.sort(key=lambda p: _relative(root, p))
    return sorted(files, key=lambda p: _relative(root, p)), sorted(skipped, key=lambda s: _relative(root, s.path))


def _folder_id(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def find_images(root: Path) -> list[Path]:
    """Every file under ``root`` named like an image (see :func:`walk`), sorted."""
    return [path for path in walk(root)[0] if path.name.lower().endswith(IMAGE_EXTENSIONS)]


def check_file(path: Path) -> Skipped | None:
    """What makes ``path`` unusable before it is opened (a broken link, no bytes...), or None."""
    try:
        info = path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return Skipped(path, "symlink loop", err.strerror or "")
        if path.is_symlink() and err.errno == errno.ENOENT:
            return Skipped(path, "dangling symlink", f"leads to {os.readlink(path)}, which does not exist")
        return Skipped(path, "unreadable", err.strerror or str(err))
    if not stat.S_ISREG(info.st_mode):  # a pipe named .png would block the open for ever
        return Skipped(path, "not a regular file")
    if info.st_size == 0:
        return Skipped(path, "zero bytes")
    return None


def read_captions(images: list[Path], metadata_files: list[Path]) -> list[str] | None:
    """One caption per image from ``metadata.jsonl`` files or ``.txt`` files; None if none."""
    from_metadata: dict[str, str] = {}
    for metadata in metadata_files:
        for number, line in enumerate(_read_text(metadata).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                caption = row.get("text", row.get("caption"))
                image = os.path.realpath(metadata.parent / row["file_name"])
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as err:
                raise ValueError(f"{metadata}:{number}: expected a JSON object with 'file_name' "
                                 f"and 'text' or 'caption' ({err})") from err
            if caption is not None:
                from_metadata[image] = str(caption)
    captions = []
    for image in images:
        caption = from_metadata.get(os.path.realpath(image))
        text_file = image.with_suffix(".txt")
        if caption is None and text_file.is_file():
            caption = _read_text(text_file).strip()
        captions.append(caption)
    if all(c is None for c in captions):
        return None
    return ["" if c is None else c for c in captions]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from err


def class_of(root: Path, image: Path) -> str | None:
    """The first sub-folder below ``root`` holding ``image``, or None at the top level."""
    parts = image.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is ``resolution`` (bicubic), then crop the centre square."""
    width, height = image.size
    if width != height or width != resolution:
        scale = resolution / min(width, height)
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB, compositing transparency on white; 16-bit grey scaled to 8."""
    if image.mode.startswith("I"):
        pixels = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(pixels / 257.0, 0, 255).round().astype(np.uint8))
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def conversions_of(image: Image.Image, resolution: int | None) -> list[str]:
    """What ``image`` needs on its way to an RGB square (keys of :data:`CONVERSIONS`)."""
    found = []
    if image.mode.startswith("I") or image.mode == "F":
        found.append("16-bit")
    elif image.mode == "CMYK":
        found.append("CMYK")
    elif image.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "La"):
        found.append("mode")
    if "A" in image.getbands() or "transparency" in image.info:
        found.append("transparency")
    if resolution is not None and min(image.size) * _UPSCALE_NOTED < resolution:
        found.append("upscaled")
    return found


def _open(path: Path) -> Image.Image:
    """Open ``path`` lazily (header only), refusing sizes over Pillow's decompression-bomb limit."""
    try:
        with warnings.catch_warnings():  # the size is checked below, whatever Pillow only warns about
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as err:
        raise _Unusable("decompression bomb", str(err)) from err
    except PermissionError as err:
        raise _Unusable("unreadable", err.strerror or str(err)) from err
    except Image.UnidentifiedImageError as err:
        raise _Unusable(*_why_undecodable(path, err, opened=False)) from err
    except Exception as err:
        if isinstance(err, OSError) and err.errno is not None:  # the system's error, not the decoder's
            raise _Unusable("unreadable", err.strerror or str(err)) from err
        raise _Unusable(*_why_undecodable(path, err, opened=False)) from err
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        image.close()
        raise _Unusable("decompression bomb", f"{image.width}×{image.height} pixels, over PIL.Image.MAX_IMAGE_PIXELS "
                                              f"= {limit}")
    return image


def _why_undecodable(path: Path, err: Exception, opened: bool) -> tuple[str, str]:
    """Sort a decoder's error into truncated / corrupt / not an image."""
    detail = f"{type(err).__name__}: {err}" if not isinstance(err, OSError) else str(err)
    try:
        with open(path, "rb") as f:
            head = f.read(12)
        size = path.stat().st_size
    except OSError:
        head, size = b"", 0
    if "truncated" in str(err).lower() or _shorter_than_its_header(head, size):
        return "truncated", detail
    known = head.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8")) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    if not opened and not known:
        return "not an image", "Pillow does not recognise its format"
    return "corrupt", detail


def _shorter_than_its_header(head: bytes, size: int) -> bool:
    """A RIFF file (WebP) says its length in its header: a shorter file was cut."""
    return head[:4] == b"RIFF" and len(head) >= 8 and int.from_bytes(head[4:8], "little") + 8 > size


def decode(path: Path, resolution: int | None) -> tuple[np.ndarray, bool, list[str]]:
    """Decode one image to a (H, W, 3) uint8 array; also whether it was grey and what it needed.

    Raises _Unusable with the reason when the file cannot be used.
    """
    with _open(path) as image:
        try:
            image.load()
        except Exception as err:
            raise _Unusable(*_why_undecodable(path, err, opened=True)) from err
        grey = image.mode in _GREY_MODES
        needed = conversions_of(image, resolution)
        rgb = to_rgb(image)
    if resolution is not None:
        rgb = resize_center_crop(rgb, resolution)
    return np.asarray(rgb, dtype=np.uint8), grey, needed


def common_side(images: list[Path]) -> int | None:
    """The most common shorter side among the images' headers (ties: the larger); None if none opens.

    With ``resolution=None`` every image is resized to this, so one odd image (a 1×1 icon that
    sorts first) cannot set the size of the whole set.
    """
    sides: Counter[int] = Counter()
    for path in images:
        try:
            with _open(path) as image:
                sides[min(image.size)] += 1
        except _Unusable:
            continue  # reported when it is decoded
    return max(sides, key=lambda side: (sides[side], side)) if sides else None


def _breakdown(skipped: list[tuple[str, str]]) -> str:
    """``3 truncated, 1 zero bytes; cat/a.png (truncated), ...``: counts by reason, then the first names."""
    counts = Counter(reason for _, reason in skipped)
    by_reason = ", ".join(f"{n} {REASONS.get(reason, reason) if n > 1 else reason}"
                          for reason, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    named = ", ".join(f"{name} ({reason})" for name, reason in skipped[:_NAMED_IN_SUMMARY])
    more = f" and {len(skipped) - _NAMED_IN_SUMMARY} more" if len(skipped) > _NAMED_IN_SUMMARY else ""
    return f"{by_reason}; {named}{more}"


def _report_skipped(root: Path, total: int, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        log.warning("skipped %d of %d image files in %s: %s", len(skipped), total, root, _breakdown(skipped))


def _report_one(root: Path, number: int, item: Skipped) -> None:
    level = logging.WARNING if number < _LOGGED_FILES else logging.DEBUG
    detail = f" ({item.detail})" if item.detail else ""
    log.log(level, "skipping %s: %s%s", item.path, item.reason, detail)


@dataclass
class _Decoded:
    dataset: ImageDataset
    total: int  # image files found (and folder links not followed)
    skipped: list[tuple[str, str]]  # (path relative to the root, reason), sorted by path


def _decode(root: Path, resolution: int | None, channels: int | None) -> _Decoded:
    files, skipped = walk(root)
    images = [path for path in files if path.name.lower().endswith(IMAGE_EXTENSIONS)]
    metadata_files = [path for path in files if path.name == METADATA_FILE]
    candidates = []
    for path in images:
        problem = check_file(path)
        if problem is None:
            candidates.append(path)
        else:
            skipped.append(problem)
    if resolution is None:
        resolution = common_side(candidates)
    arrays, names, all_grey, converted = [], [], True, Counter()
    for path in tqdm(candidates, desc=f"decoding {root.name}", unit="img", disable=None):
        try:
            pixels, grey, needed = decode(path, resolution)
        except _Unusable as err:
            skipped.append(Skipped(path, err.reason, err.detail))
            continue
        if resolution is None:  # no header opened in the first pass, yet this one decoded
            resolution = min(pixels.shape[:2])
            pixels = np.asarray(resize_center_crop(Image.fromarray(pixels), resolution))
        arrays.append(pixels)
        names.append(path)
        all_grey &= grey
        converted.update(needed)
    skipped.sort(key=lambda item: _relative(root, item.path))
    for number, item in enumerate(skipped):
        _report_one(root, number, item)
    image_set = set(images)
    total = len(images) + sum(item.path not in image_set for item in skipped)
    pairs = [(_relative(root, item.path), item.reason) for item in skipped]
    _report_skipped(root, total, pairs)
    if converted:
        log.info("converted files in %s: %s", root,
                 ", ".join(f"{n} {CONVERSIONS[kind]}" for kind, n in sorted(converted.items())))
    if not images:
        raise ValueError(f"no image in {root}: expected PNG, JPEG or WebP files "
                         f"({', '.join(IMAGE_EXTENSIONS)}), searched recursively")
    if not arrays:
        raise ValueError(f"no usable image in {root}: none of its {total} image files could be used: "
                         + _breakdown(pairs))
    stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    stacked = to_channels(stacked, channels if channels is not None else (1 if all_grey else 3))
    classes = [class_of(root, path) for path in names]
    labels, class_names = None, []
    if all(c is not None for c in classes):
        class_names = sorted(set(classes))
        index = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([index[c] for c in classes], dtype=torch.int64)
    dataset = ImageDataset(images=stacked, labels=labels, class_names=class_names,
                           captions=read_captions(names, metadata_files), name=str(root),
                           files=[_relative(root, path) for path in names])
    return _Decoded(dataset, total, pairs)


def decode_folder(root: Path, resolution: int | None = None, channels: int | None = None) -> ImageDataset:
    """Decode every usable image under ``root`` (no cache); see the module docstring.

    ``resolution`` None takes the most common shorter side among the images; ``channels``
    None gives 1 when every image is grey and 3 otherwise.
    """
    return _decode(Path(root), resolution, channels).dataset


def folder_key(root: Path, resolution: int | None, channels: int | None) -> str:
    """The cache key of a folder: every file's path, size, times and mode (or its error) and the options.

    A file that is skipped today is in the key as it stands (a dangling link as its error, an
    unreadable file with its mode), so fixing, adding or removing any file gives a new key.
    """
    files, skipped = walk(root)
    entries = []
    for path in files:
        try:
            info = path.stat()
            entries.append((_relative(root, path), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_mode))
        except OSError as err:
            entries.append((_relative(root, path), errno.errorcode.get(err.errno or 0, str(err))))
    entries += [(_relative(root, item.path), item.reason, item.detail) for item in skipped]
    return content_key(_CACHE_FORMAT, resolution, channels, PIL.__version__, Image.MAX_IMAGE_PIXELS, entries)


def load_image_folder(root: str | Path, resolution: int | None = None, channels: int | None = None,
                      use_cache: bool = True) -> ImageDataset:
    """Load an image folder, decoding it once and then reading the cached uint8 tensor.

    A cached set repeats the summary of the files it skipped. A set that skipped a file for a
    reason of the moment (unreadable) is not cached, so the next load tries that file again.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"image folder {root} {what}")
    if not use_cache:
        return decode_folder(root, resolution, channels)
    key = folder_key(root, resolution, channels)
    path = cache_dir() / "folders" / f"{root.resolve().name}-{key[:20]}.safetensors"
    dataset = load_cached(path)
    if dataset is not None:
        extra = read_extra(path)
        _report_skipped(root, int(extra.get("total", 0)), json.loads(extra.get("skipped", "[]")))
        return dataset
    decoded = _decode(root, resolution, channels)
    if not any(reason in _TRANSIENT for _, reason in decoded.skipped):
        try_save_dataset(path, decoded.dataset, {"total": str(decoded.total), "skipped": json.dumps(decoded.skipped)})
    return decoded.dataset
