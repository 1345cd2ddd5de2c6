"""Scores from a dataset classifier's p(y|x): never to be reported as "Inception Score".

The classifier-based score has the form of the Inception Score (Salimans et al. 2016,
section 4): exp(E_x KL(p(y|x) ‖ p(y))), computed with the small dataset classifier of
:mod:`difflab.metrics.classifier` instead of Inception's ImageNet head; it is high when each
sample is classified confidently and the classes are used evenly (at most the number of
classes). Class accuracy checks class-conditional samples against the label they were drawn
for; the confident fraction counts samples whose top class has probability ≥ a threshold.
"""

from __future__ import annotations

import torch


def classifier_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` of exp(E_x KL(p(y|x) ‖ p(y))).

    Like the Inception Score's reference code, the samples are cut into ``splits`` equal
    parts (fewer when there are few samples) and p(y) is the mean prediction in each part.
    """
    probs = probs.double()
    splits = max(1, min(splits, len(probs) // 2))
    scores = []
    for part in probs.chunk(splits):
        marginal = part.mean(dim=0, keepdim=True)
        kl = (part * (part.clamp_min(1e-30).log() - marginal.clamp_min(1e-30).log())).sum(dim=1)
        scores.append(kl.mean().exp())
    scores = torch.stack(scores)
    return scores.mean().item(), (scores.std(unbiased=False).item() if len(scores) > 1 else 0.0)


def class_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose most likely class is the one they were generated for."""
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} samples but {len(labels)} labels")
    return (probs.argmax(dim=1) == labels.to(probs.device)).double().mean().item()


def confident_fraction(probs: torch.Tensor, threshold: float = 0.5) -> float:
    """Fraction of samples whose most likely class has probability ≥ ``threshold``."""
    return (probs.max(dim=1).values >= threshold).double().mean().item()
