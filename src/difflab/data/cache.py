"""The on-disk cache: decoded datasets (and reference features) keyed by their content.

The cache lives in ``$DIFFLAB_CACHE``, else ``$XDG_CACHE_HOME/difflab``, else
``~/.cache/difflab``. A key is a SHA-256 over everything that determines the cached value,
so a changed file or option gives a new entry and never a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from difflab.data.dataset import ImageDataset

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The root of difflab's cache (created on demand by the writers)."""
    if os.environ.get("DIFFLAB_CACHE"):
        return Path(os.environ["DIFFLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "difflab"


def content_key(*parts: object) -> str:
    """A hex SHA-256 of the parts' JSON form (tensors and bytes are hashed by content)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            digest.update(str((part.dtype, tuple(part.shape))).encode())
            digest.update(part.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(part, bytes):
            digest.update(part)
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def save_dataset(path: Path, dataset: ImageDataset, extra: dict[str, str] | None = None) -> None:
    """Write a dataset as one safetensors file (written to a temporary name, then renamed).

    ``extra`` adds string fields to the file's metadata (read back by :func:`read_extra`).
    """
    tensors = {"images": dataset.images.contiguous()}
    if dataset.labels is not None:
        tensors["labels"] = dataset.labels.contiguous()
    metadata = {"name": dataset.name, "class_names": json.dumps(dataset.class_names),
                "captions": json.dumps(dataset.captions), "files": json.dumps(dataset.files)}
    metadata.update({f"extra.{key}": value for key, value in (extra or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # left only when writing failed (a full disk)


def try_save_dataset(path: Path, dataset: ImageDataset, extra: dict[str, str] | None = None) -> None:
    """:func:`save_dataset`, where a failure (a full disk, a read-only cache) costs only the cache."""
    try:
        save_dataset(path, dataset, extra)
    except (OSError, SafetensorError) as err:  # safetensors reports I/O errors as its own type
        log.warning("could not write the cache entry %s (%s); the data is loaded, but not cached", path,
                    getattr(err, "strerror", None) or err)


def load_dataset_file(path: Path) -> ImageDataset:
    """Read a dataset written by :func:`save_dataset`."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        keys = set(f.keys())
        images = f.get_tensor("images")
        labels = f.get_tensor("labels") if "labels" in keys else None
    return ImageDataset(images=images, labels=labels,
                        class_names=json.loads(metadata.get("class_names", "[]")),
                        captions=json.loads(metadata.get("captions", "null")),
                        name=metadata.get("name", str(path)), files=json.loads(metadata.get("files", "null")))


def read_extra(path: Path) -> dict[str, str]:
    """The ``extra`` fields :func:`save_dataset` wrote into ``path``."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return {key.removeprefix("extra."): value for key, value in metadata.items() if key.startswith("extra.")}


def load_cached(path: Path) -> ImageDataset | None:
    """The dataset cached at ``path``; None when there is none or it cannot be read.

    A cache entry is disposable: a truncated or otherwise unreadable one (a full disk, a kill
    from before writes were atomic, a foreign file) is reported, removed and decoded again.
    """
    if not path.is_file():
        return None
    try:
        return load_dataset_file(path)
    except Exception as err:  # any failure to read a disposable entry means: rebuild it
        log.warning("ignoring the unreadable cache entry %s (%s: %s); decoding again", path, type(err).__name__, err)
        path.unlink(missing_ok=True)
        return None
