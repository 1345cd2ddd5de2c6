"""The evaluate flow: samples and a reference → features → every metric, as one report."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from difflab.data.dataset import ImageDataset
from difflab.metrics.classifier import Classifier, matched_labels
from difflab.metrics.classifier_score import class_accuracy, classifier_score, confident_fraction
from difflab.metrics.features import cached_features, extract_features
from difflab.metrics.fid_infinity import fid_infinity
from difflab.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_of_features
from difflab.metrics.inception import InceptionFeatures
from difflab.metrics.kid import kernel_inception_distance
from difflab.metrics.precision_recall import precision_recall


@dataclass
class Reference:
    """What samples are compared with: images (every metric) or FID statistics only."""

    name: str
    dataset: ImageDataset | None = None
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None


@dataclass
class EvalOptions:
    batch_size: int = 50
    k: int = 3
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    confidence: float = 0.5
    use_cache: bool = True
    fid_infinity: bool = False  # also FID∞, FID without its finite-sample bias (metrics/fid_infinity.py)


def _classifier_metrics(samples: ImageDataset, classifier: Classifier, options: EvalOptions) -> dict:
    probs = classifier.probabilities(samples.images)
    score, score_std = classifier_score(probs)
    report = {"classifier": classifier.config.get("dataset", ""),
              "classifier_score": score, "classifier_score_std": score_std,
              "confident_fraction": confident_fraction(probs, options.confidence),
              "confidence_threshold": options.confidence}
    labels = matched_labels(samples, classifier.class_names)
    if labels is not None:
        report["class_accuracy"] = class_accuracy(probs, labels)
    return report


def evaluate(samples: ImageDataset, reference: Reference, extractor: InceptionFeatures,
             classifier: Classifier | None = None, options: EvalOptions | None = None) -> dict:
    """FID, precision/recall, KID (Inception features) and the classifier-based metrics.

    A reference given as images gets its FID statistics filled in (``reference.mu``, ``.sigma``).
    """
    options = options or EvalOptions()
    fake = extract_features(samples.images, extractor, options.batch_size, desc="sample features")
    report = {"samples": samples.name, "reference": reference.name, "num_samples": len(samples),
              "feature_images_per_second": fake.images_per_second,
              "feature_device": str(extractor.device), **extractor.identity}
    if reference.dataset is not None:
        real = cached_features(reference.dataset.images, extractor, options.batch_size,
                               desc="reference features", use_cache=options.use_cache)
        report["num_reference"] = len(reference.dataset)
        report["reference_features_cached"] = real.cached
        reference.mu, reference.sigma = feature_statistics(real.values)
        report["precision"], report["recall"] = precision_recall(real.values, fake.values, options.k)
        report["k"] = options.k
        report["kid"], report["kid_std"] = kernel_inception_distance(
            real.values, fake.values, options.kid_subset_size, options.kid_subsets)
        report["fid"] = frechet_distance_of_features(fake.values, real.values)
    else:
        report["fid"] = frechet_distance(*feature_statistics(fake.values), reference.mu, reference.sigma)
    if options.fid_infinity:
        extrapolated = fid_infinity(fake.values, reference.mu, reference.sigma)
        report["fid_infinity"], report["fid_infinity_slope"] = extrapolated.value, extrapolated.slope
        report["fid_infinity_sizes"], report["fid_infinity_fids"] = list(extrapolated.sizes), list(extrapolated.fids)
    if classifier is not None:
        report.update(_classifier_metrics(samples, classifier, options))
    return report


_ROWS = [
    ("fid", "FID (Inception-v3 pool3)", "{:.3f}"),
    ("fid_infinity", "FID∞ (bias-free, Chong & Forsyth)", "{:.3f}"),
    ("precision", "precision (Kynkäänniemi, k={k})", "{:.4f}"),
    ("recall", "recall (Kynkäänniemi, k={k})", "{:.4f}"),
    ("kid", "KID (x1000, ± std)", None),
    ("classifier_score", "classifier-based score (not IS)", None),
    ("class_accuracy", "class accuracy (classifier)", "{:.4f}"),
    ("confident_fraction", "confident (p ≥ {confidence_threshold})", "{:.4f}"),
]


def format_table(report: dict) -> str:
    """The report as a two-column text table."""
    lines = [f"samples:   {report['samples']} ({report['num_samples']} images)",
             f"reference: {report['reference']}" + (f" ({report['num_reference']} images)"
                                                    if "num_reference" in report else " (statistics)")]
    rows = []
    for key, label, fmt in _ROWS:
        if key not in report:
            continue
        if key == "kid":
            value = f"{1000 * report['kid']:.3f} ± {1000 * report['kid_std']:.3f}"
        elif key == "classifier_score":
            value = f"{report[key]:.3f} ± {report['classifier_score_std']:.3f}"
        else:
            value = fmt.format(report[key])
        rows.append((label.format(**report), value))
    width = max(len(label) for label, _ in rows)
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    lines.append(f"features: {report['feature_images_per_second']:.1f} images/s on {report['feature_device']}")
    return "\n".join(lines)
