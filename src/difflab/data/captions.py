"""Captions made from class names, for training text-conditional models on labelled sets.

:func:`templated_captions` turns each label into a short sentence such as "a photo of a
t-shirt/top". Image ``i`` (in the set's own order, before any subset is taken) uses template
``i mod len(templates)``, so the captions vary a little but are the same in every run.
"""

from __future__ import annotations

import torch

# Each template holds the lower-case class name with its article ("a coat", "an ankle boot").
# All four describe Fashion-MNIST truthfully: grey 28×28 crops of Zalando product photos.
TEMPLATES = (
    "a photo of {}",
    "a black and white photo of {}",
    "a low-resolution photo of {}",
    "a product photo of {}",
)


def with_article(name: str) -> str:
    """``"coat"`` → ``"a coat"``, ``"ankle boot"`` → ``"an ankle boot"`` (by the first letter)."""
    return f"{'an' if name[:1] in ('a', 'e', 'i', 'o', 'u') else 'a'} {name}"


def templated_captions(labels: torch.Tensor, class_names: list[str],
                       templates: tuple[str, ...] | list[str] = TEMPLATES) -> list[str]:
    """One caption per label: template ``i mod len(templates)`` filled with the class name.

    Args:
        labels: int tensor (N,) of indices into ``class_names``.
        class_names: the classes' names; they are lower-cased and given an article.
        templates: format strings with one ``{}`` for "a/an <class name>".
    """
    if not templates:
        raise ValueError("templated_captions needs at least one template")
    phrases = [with_article(name.lower()) for name in class_names]
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(phrases):
        raise ValueError(f"labels range over {int(labels.min())}..{int(labels.max())} "
                         f"but there are {len(phrases)} class names")
    return [templates[i % len(templates)].format(phrases[label])
            for i, label in enumerate(labels.tolist())]
