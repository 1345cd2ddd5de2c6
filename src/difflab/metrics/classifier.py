"""A small dataset classifier, the stand-in for Inception's classifier head.

The packaged FID network only gives pool features, so the classifier-based score and the
class accuracy of :mod:`difflab.metrics.classifier_score` use a small CNN trained on the
dataset itself (as Fashion-MNIST/MNIST papers do). Numbers from it are only comparable
between runs that use the same classifier checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from difflab.checkpoint import load_checkpoint, save_checkpoint
from difflab.data.cache import cache_dir
from difflab.data.convert import resize_square, to_channels, to_float
from difflab.data.dataset import ImageDataset

KIND = "classifier"


class SmallCNN(nn.Module):
    """Three 3×3 conv stages (width, 2·width, 4·width; the last two stride 2), each with
    GroupNorm and SiLU, global average pooling, dropout and a linear head. Works at any
    resolution from 8×8 up."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        layers, channels = [], in_channels
        for stage, out in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv2d(channels, out, 3, stride=1 if stage == 0 else 2, padding=1),
                       nn.GroupNorm(8, out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))  # (N, classes) logits


def matched_labels(samples: ImageDataset, class_names: list[str]) -> torch.Tensor | None:
    """Labels of ``samples`` as indices into ``class_names``, or None when they cannot be matched.

    Labels from an ``.npz`` (no class names) are taken as the classifier's indices; labels
    from class sub-folders are matched by name.
    """
    if samples.labels is None:
        return None
    if not samples.class_names:
        return samples.labels if int(samples.labels.max()) < len(class_names) else None
    index = {name: i for i, name in enumerate(class_names)}
    if not set(samples.class_names) <= set(index):
        return None
    mapping = torch.tensor([index[name] for name in samples.class_names])
    return mapping[samples.labels]


class Classifier:
    """A trained :class:`SmallCNN` with the input format it expects."""

    def __init__(self, model: SmallCNN, config: dict) -> None:
        self.model, self.config = model.eval(), config

    @property
    def class_names(self) -> list[str]:
        return self.config["class_names"]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images of any size and channel count → the network's float input."""
        images = to_channels(images, self.config["in_channels"])
        return to_float(resize_square(images, self.config["resolution"]))

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """p(y|x) for uint8 images (N, C, H, W) → (N, classes) float64 on the CPU."""
        device = next(self.model.parameters()).device
        chunks = [F.softmax(self.model(self.prepare(images[i:i + batch_size]).to(device)), dim=1)
                  for i in range(0, len(images), batch_size)]
        return torch.cat(chunks).double().cpu()

    def accuracy(self, dataset: ImageDataset) -> float:
        """Top-1 accuracy on a labeled dataset whose class names match the classifier's."""
        labels = matched_labels(dataset, self.class_names)
        if labels is None:
            raise ValueError(f"the classes of {dataset.name!r} do not match the classifier's "
                             f"({', '.join(self.class_names)})")
        return (self.probabilities(dataset.images).argmax(1) == labels).double().mean().item()

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.config, {"model": self.model.state_dict()})


def train_classifier(train: ImageDataset, test: ImageDataset | None = None, epochs: int = 10,
                     batch_size: int = 64, lr: float = 2e-3, width: int = 32, seed: int = 0,
                     device: str | torch.device = "cpu") -> tuple[Classifier, float | None]:
    """Train a :class:`SmallCNN` on a labeled dataset (AdamW, cosine learning rate).

    Returns the classifier and its accuracy on ``test`` (None without a test set).
    """
    if train.labels is None:
        raise ValueError(f"dataset {train.name!r} has no labels: a classifier needs images in "
                         f"one sub-folder per class")
    torch.manual_seed(seed)
    config = {"kind": KIND, "in_channels": train.channels, "resolution": train.resolution,
              "num_classes": len(train.class_names), "width": width,
              "class_names": train.class_names, "dataset": train.name}
    model = SmallCNN(train.channels, len(train.class_names), width).to(device)
    classifier = Classifier(model, config)
    x, y = classifier.prepare(train.images), train.labels
    steps = epochs * -(-len(x) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    with tqdm(total=steps, desc="training classifier", unit="step", disable=None) as progress:
        for epoch in range(epochs):
            model.train()
            for batch in torch.randperm(len(x), generator=generator).split(batch_size):
                loss = F.cross_entropy(model(x[batch].to(device)), y[batch].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                progress.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}",
                                     img_s=f"{progress.n * batch_size / (time.perf_counter() - start + 1e-9):.0f}")
                progress.update()
    model.eval()
    accuracy = classifier.accuracy(test) if test is not None else None
    if accuracy is not None:
        config["test_accuracy"] = accuracy
        config["test_dataset"] = test.name
    return classifier, accuracy


def default_classifier_dir(dataset: str) -> Path:
    """Where ``difflab train-classifier`` puts a dataset's classifier by default."""
    return cache_dir() / "classifiers" / Path(dataset).name


def load_classifier(path_or_dataset: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load a classifier checkpoint folder, or the default one of a dataset name."""
    path = Path(path_or_dataset)
    if not (path / "config.json").is_file():
        default = default_classifier_dir(str(path_or_dataset))
        if not default.exists():
            raise FileNotFoundError(f"no classifier at {path} (nor at {default}): train one with "
                                    f"`difflab train-classifier --dataset {path_or_dataset}`")
        path = default
    config, tensors, _ = load_checkpoint(path, kind=KIND)
    model = SmallCNN(config["in_channels"], config["num_classes"], config["width"])
    model.load_state_dict(tensors["model"])
    return Classifier(model.to(device), config)
