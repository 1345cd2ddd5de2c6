"""Batched feature extraction with throughput reporting, and a cache for reference features."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from difflab.data.cache import cache_dir, content_key


@dataclass
class Features:
    """Features (N, D) float32 and how fast they were computed (0 when read from the cache)."""

    values: np.ndarray
    images_per_second: float = 0.0
    cached: bool = False


def extract_features(images: torch.Tensor, extractor: Callable[[torch.Tensor], torch.Tensor],
                     batch_size: int = 50, desc: str = "features") -> Features:
    """Run ``extractor`` over uint8 images (N, C, H, W) in batches, with a progress bar."""
    if len(images) == 0:
        raise ValueError("no images to extract features from")
    chunks = []
    device = getattr(extractor, "device", torch.device("cpu"))
    start = time.perf_counter()
    with tqdm(total=len(images), desc=desc, unit="img", disable=None) as progress:
        for begin in range(0, len(images), batch_size):
            batch = images[begin:begin + batch_size]
            chunks.append(extractor(batch).cpu().numpy().astype(np.float32))
            progress.update(len(batch))
    if isinstance(device, torch.device) and device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return Features(np.concatenate(chunks), len(images) / max(elapsed, 1e-9))


def cached_features(images: torch.Tensor, extractor, batch_size: int = 50, desc: str = "features",
                    use_cache: bool = True) -> Features:
    """:func:`extract_features`, cached on disk by image content and the extractor's identity.

    Meant for reference sets (a dataset split is embedded once, then reused); the key hashes
    every pixel, so a different set never reads another set's features.
    """
    if not use_cache:
        return extract_features(images, extractor, batch_size, desc)
    key = content_key(images, extractor.identity)
    path = cache_dir() / "features" / f"{key[:32]}.npy"
    if path.is_file():
        return Features(np.load(path), cached=True)
    features = extract_features(images, extractor, batch_size, desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npy")
    np.save(tmp, features.values)
    os.replace(tmp, Path(path))
    return features
