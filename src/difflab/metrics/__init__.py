"""Evaluation metrics: FID, improved precision/recall and KID on the standard Inception-v3
pool features, a dataset classifier's score and class accuracy, and caption retrieval for
text-to-image models.

The Inception network comes from the optional extra (``pip install 'difflab[metrics]'``);
everything else needs only torch and numpy. See docs/metrics.md.
"""

from difflab.metrics.classifier import Classifier, load_classifier, train_classifier
from difflab.metrics.classifier_score import class_accuracy, classifier_score, confident_fraction
from difflab.metrics.evaluate import EvalOptions, Reference, evaluate, format_table
from difflab.metrics.features import cached_features, extract_features
from difflab.metrics.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_of_features,
    load_statistics,
    save_statistics,
)
from difflab.metrics.inception import InceptionFeatures, load_inception, write_half_weights
from difflab.metrics.kid import kernel_inception_distance
from difflab.metrics.precision_recall import precision_recall
from difflab.metrics.retrieval import CaptionRetrieval, caption_retrieval, nearest_neighbours

__all__ = [
    "CaptionRetrieval", "Classifier", "EvalOptions", "InceptionFeatures", "Reference",
    "cached_features", "caption_retrieval", "class_accuracy", "classifier_score",
    "confident_fraction", "evaluate", "extract_features", "feature_statistics", "format_table",
    "frechet_distance", "frechet_distance_of_features", "kernel_inception_distance", "load_classifier",
    "load_inception",
    "load_statistics", "nearest_neighbours", "precision_recall", "save_statistics",
    "train_classifier", "write_half_weights",
]
