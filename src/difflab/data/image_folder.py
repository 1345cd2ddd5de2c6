"""A folder of images, following Hugging Face's ``imagefolder`` layout.

- Images are found recursively: PNG, JPEG and WebP.
- The class of an image is the name of its first sub-folder (``root/cat/x.png`` → "cat");
  when some image sits directly in the root, the set has no labels.
- A caption comes from a ``metadata.jsonl`` (one JSON object a line with ``file_name``,
  relative to that file's folder, and ``text`` or ``caption``), else from a ``.txt`` file
  with the image's name beside it.
- Grey, RGB and RGBA/LA/palette images are accepted; transparency is composited on white.
  Each image is resized (shorter side, bicubic) and centre-cropped to a square.
- A file that cannot be decoded is reported (path and reason) and skipped, with a count
  at the end; a folder with no usable image is an error.

The decoded set is cached as one safetensors file keyed by the folder's contents (paths,
sizes, modification times) and the options, so the images are decoded once.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from difflab.data.cache import cache_dir, content_key, load_dataset_file, save_dataset
from difflab.data.convert import to_channels
from difflab.data.dataset import ImageDataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILE = "metadata.jsonl"
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
_CACHE_FORMAT = 1


def find_images(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursive, hidden folders skipped), sorted."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [Path(folder) / name for name in files if name.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def read_captions(root: Path, images: list[Path]) -> list[str] | None:
    """One caption per image from ``metadata.jsonl`` files or ``.txt`` files; None if none."""
    from_metadata: dict[Path, str] = {}
    for metadata in sorted(root.rglob(METADATA_FILE)):
        for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                caption = row.get("text", row.get("caption"))
                image = (metadata.parent / row["file_name"]).resolve()
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as err:
                raise ValueError(f"{metadata}:{number}: expected a JSON object with 'file_name' "
                                 f"and 'text' or 'caption' ({err})") from err
            if caption is not None:
                from_metadata[image] = str(caption)
    captions = []
    for image in images:
        caption = from_metadata.get(image.resolve())
        text_file = image.with_suffix(".txt")
        if caption is None and text_file.is_file():
            caption = text_file.read_text(encoding="utf-8").strip()
        captions.append(caption)
    if all(c is None for c in captions):
        return None
    return ["" if c is None else c for c in captions]


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


def decode(path: Path, resolution: int | None) -> tuple[np.ndarray, bool]:
    """Decode one image to a (H, W, 3) uint8 array; also says whether it was grey."""
    with Image.open(path) as image:
        image.load()
        grey = image.mode in _GREY_MODES
        rgb = to_rgb(image)
    if resolution is not None:
        rgb = resize_center_crop(rgb, resolution)
    return np.asarray(rgb, dtype=np.uint8), grey


def _folder_key(root: Path, resolution: int | None, channels: int | None) -> str:
    entries = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            stat = (Path(folder) / name).stat()
            entries.append((Path(folder, name).relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return content_key(_CACHE_FORMAT, resolution, channels, sorted(entries))


def decode_folder(root: Path, resolution: int | None = None, channels: int | None = None) -> ImageDataset:
    """Decode every usable image under ``root`` (no cache); see the module docstring.

    ``resolution`` None takes the shorter side of the first image; ``channels`` None gives
    1 when every image is grey and 3 otherwise.
    """
    files = find_images(root)
    arrays, names, all_grey, skipped = [], [], True, 0
    for path in tqdm(files, desc=f"decoding {root.name}", unit="img", disable=None):
        try:
            pixels, grey = decode(path, resolution)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            log.warning("skipping %s: %s", path, err)
            skipped += 1
            continue
        if resolution is None:
            resolution = min(pixels.shape[:2])
            pixels = np.asarray(resize_center_crop(Image.fromarray(pixels), resolution))
        arrays.append(pixels)
        names.append(path)
        all_grey &= grey
    if skipped:
        log.warning("skipped %d of %d image files in %s", skipped, len(files), root)
    if not files:
        raise ValueError(f"no image in {root}: expected PNG, JPEG or WebP files "
                         f"({', '.join(IMAGE_EXTENSIONS)}), searched recursively")
    if not arrays:
        raise ValueError(f"no usable image in {root}: none of its {len(files)} image files "
                         f"could be decoded (see the warnings above)")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    images = to_channels(images, channels if channels is not None else (1 if all_grey else 3))
    classes = [class_of(root, path) for path in names]
    labels, class_names = None, []
    if all(c is not None for c in classes):
        class_names = sorted(set(classes))
        index = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([index[c] for c in classes], dtype=torch.int64)
    return ImageDataset(images=images, labels=labels, class_names=class_names,
                        captions=read_captions(root, names), name=str(root))


def load_image_folder(root: str | Path, resolution: int | None = None, channels: int | None = None,
                      use_cache: bool = True) -> ImageDataset:
    """Load an image folder, decoding it once and then reading the cached uint8 tensor."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not use_cache:
        return decode_folder(root, resolution, channels)
    key = _folder_key(root, resolution, channels)
    path = cache_dir() / "folders" / f"{root.resolve().name}-{key[:20]}.safetensors"
    if path.is_file():
        return load_dataset_file(path)
    dataset = decode_folder(root, resolution, channels)
    save_dataset(path, dataset)
    return dataset
