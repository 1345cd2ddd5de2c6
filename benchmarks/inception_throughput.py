"""Throughput of the FID Inception feature extractor, and the FID change of float16 weights.

    python benchmarks/inception_throughput.py --device cpu --images 64 --batch-sizes 32
    python benchmarks/inception_throughput.py --device cuda --images 5000 --batch-sizes 100 250 500 \
        --weights .gpu/inception-fp16.pt --data .gpu/fashion-mnist
    python benchmarks/inception_throughput.py --device cpu --fp16-fid 200
    python benchmarks/inception_throughput.py --device cpu --layouts 200

Images are Fashion-MNIST test images (28×28 grey, resized to 299×299 like any FID input).
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from difflab.data import load_dataset
from difflab.metrics import (
    InceptionFeatures,
    extract_features,
    feature_statistics,
    frechet_distance,
    write_half_weights,
)


def throughput(extractor: InceptionFeatures, images: torch.Tensor, batch_size: int) -> float:
    extract_features(images[:batch_size], extractor, batch_size)  # warm-up (cuDNN, allocator)
    return extract_features(images, extractor, batch_size).images_per_second


def fp16_fid_difference(n: int, device: str) -> dict:
    """FID of n test vs n train images with float32 weights and with the float16 copy."""
    test = load_dataset("fashion-mnist", "test").images[:n]
    train = load_dataset("fashion-mnist", "train").images[:n]
    with tempfile.TemporaryDirectory() as tmp:
        half = write_half_weights(Path(tmp) / "inception-fp16.pt")
        fids = {}
        for name, weights in (("float32", None), ("float16_copy", half)):
            extractor = InceptionFeatures(weights, device)
            a, b = extract_features(test, extractor).values, extract_features(train, extractor).values
            fids[name] = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    return {"images_per_set": n, "fid_float32": fids["float32"], "fid_float16_copy": fids["float16_copy"],
            "abs_difference": abs(fids["float32"] - fids["float16_copy"]),
            "rel_difference": abs(fids["float32"] - fids["float16_copy"]) / fids["float32"]}


def layout_difference(n: int, batch_size: int = 50) -> dict:
    """On the CPU: images/s (best of 3 rounds, the layouts alternating) and FID of n test vs n train
    images with the network channels-last (``load_inception``'s CPU default) and in the plain
    NCHW layout. Calls the network directly, since the extractor feeds it channels-last input."""
    from difflab.metrics.inception import load_inception, preprocess_tf

    sets = [load_dataset("fashion-mnist", split).images[:n] for split in ("test", "train")]
    networks = {"channels_last": load_inception(device="cpu"),
                "nchw": load_inception(device="cpu").to(memory_format=torch.contiguous_format)}

    @torch.inference_mode()
    def features(layout: str, images: torch.Tensor):
        out = []
        for i in range(0, len(images), batch_size):
            x = preprocess_tf(images[i:i + batch_size])
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(networks[layout](x).double())
        return torch.cat(out).numpy()

    rates, fids = {layout: [] for layout in networks}, {}
    for _ in range(3):
        for layout in networks:
            start = time.perf_counter()
            a, b = (features(layout, images) for images in sets)
            rates[layout].append(2 * n / (time.perf_counter() - start))
            fids[layout] = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    return {"images_per_set": n, **{f"images_per_second_{k}": round(max(v), 2) for k, v in rates.items()},
            "fid_channels_last": fids["channels_last"], "fid_nchw": fids["nchw"],
            "abs_difference": abs(fids["channels_last"] - fids["nchw"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=64, help="images per throughput run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[50])
    parser.add_argument("--weights", type=Path, help="Inception file (default: the packaged one)")
    parser.add_argument("--data", default="fashion-mnist",
                        help="fashion-mnist, or a folder holding its IDX files (default: fashion-mnist)")
    parser.add_argument("--fp16-fid", type=int, metavar="N",
                        help="instead, compare FID (N test vs N train images) of float32 and float16 weights")
    parser.add_argument("--layouts", type=int, metavar="N",
                        help="instead, compare images/s and FID (N test vs N train images) of the CPU's "
                             "channels-last network and the plain layout")
    args = parser.parse_args()
    if args.layouts:
        print(json.dumps({"device": f"{torch.get_num_threads()} CPU threads", **layout_difference(args.layouts)}))
        return
    if args.fp16_fid:
        print(json.dumps({"device": args.device, **fp16_fid_difference(args.fp16_fid, args.device)}))
        return
    extractor = InceptionFeatures(args.weights, args.device)
    images = load_dataset(args.data, "test").images[:args.images]
    name = torch.cuda.get_device_name() if extractor.device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    for batch_size in args.batch_sizes:
        start = time.perf_counter()
        rate = throughput(extractor, images, batch_size)
        print(json.dumps({"device": name, "torch": torch.__version__, "batch_size": batch_size,
                          "images": len(images), "images_per_second": round(rate, 2),
                          "wall_s": round(time.perf_counter() - start, 2)}))


if __name__ == "__main__":
    main()
