"""Checkpoints: a folder of ``config.json`` + one ``NAME.safetensors`` per tensor group.

Layout of a checkpoint folder::

    config.json          the caller's config, with "kind" (what the checkpoint holds) and
                         "checkpoint_files" (the files that must be present)
    model.safetensors    one file per tensor group (model, ema, ...)
    extra.pt             optional non-tensor state (optimizer, RNG, step), torch.save'd and
                         read back only with torch.load(weights_only=True): no pickled code

Writes are atomic: everything goes into a temporary sibling folder, each file and the folder
are fsync'ed, then the old checkpoint is moved aside, the new one renamed into place and the
old one deleted. A crash at any point leaves either the previous checkpoint or the new one;
in the one window where only the moved-aside copy exists, the next save or load puts it back.

What a diffusion model's (or a noisy classifier's) ``config.json`` holds is one typed record,
:class:`ModelRecord`: the trainer writes it and :class:`~difflab.pipelines.DiffusionModel`
reads it, so neither side spells out keys of its own.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
EXTRA_FILE = "extra.pt"
_FILES_KEY = "checkpoint_files"

# What a checkpoint holds (its config.json's "kind").
DIFFUSION_KIND = "diffusion"
CLASSIFIER_KIND = "noisy_classifier"  # ADM's noisy classifier, trained by the same loop
AUTOENCODER_KIND = "autoencoder"  # latent diffusion's KL / VQ autoencoders, trained by the same loop


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def _restore_moved_aside(path: Path) -> None:
    """If a save crashed after moving the old checkpoint aside, put it back."""
    if path.exists():
        return
    for old in sorted(path.parent.glob(f".{path.name}.old-*")):
        os.replace(old, path)
        return


def _write_files(folder: Path, config: dict, tensors: dict[str, dict[str, torch.Tensor]],
                 extra: dict | None) -> None:
    folder.mkdir(parents=True)
    files = [CONFIG_FILE] + [f"{group}.safetensors" for group in tensors]
    for group, state in tensors.items():
        contiguous = {name: t.detach().cpu().contiguous() for name, t in state.items()}
        save_file(contiguous, str(folder / f"{group}.safetensors"))
    if extra is not None:
        torch.save(extra, folder / EXTRA_FILE)
        files.append(EXTRA_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps({**config, _FILES_KEY: files}, indent=2) + "\n")
    for name in files:
        _fsync(folder / name)
    _fsync(folder)


def save_checkpoint(path: str | Path, config: dict, tensors: dict[str, dict[str, torch.Tensor]],
                    extra: dict | None = None) -> Path:
    """Write a checkpoint folder atomically; returns its path.

    Args:
        path: the checkpoint folder (replaced if it exists).
        config: JSON-serialisable settings; must hold ``"kind"`` (e.g. ``"classifier"``).
        tensors: tensor groups, each written to ``GROUP.safetensors``.
        extra: optional state of plain Python values and tensors (``extra.pt``).
    """
    path = Path(path)
    if not isinstance(config.get("kind"), str):
        raise ValueError("a checkpoint config needs a 'kind' string saying what it holds")
    for group in tensors:
        if not group.isidentifier():
            raise ValueError(f"tensor group name {group!r} must be a plain identifier")
    path.parent.mkdir(parents=True, exist_ok=True)
    _restore_moved_aside(path)
    tmp, old = _sibling(path, "tmp"), _sibling(path, "old")
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    try:
        _write_files(tmp, config, tensors, extra)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(
    path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu"
) -> tuple[dict, dict[str, dict[str, torch.Tensor]], dict | None]:
    """Read a checkpoint folder → (config, tensors by group, extra or None).

    ``kind``, when given, must match the checkpoint's ``"kind"``.
    """
    path = Path(path)
    _restore_moved_aside(path)
    config_path = path / CONFIG_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a difflab checkpoint: it has no {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    files = config.pop(_FILES_KEY, None) if isinstance(config, dict) else None
    if files is None or "kind" not in config:
        raise ValueError(f"{path} is not a difflab checkpoint (its {CONFIG_FILE} has no 'kind')")
    if kind is not None and config["kind"] != kind:
        raise ValueError(f"{path} is a {config['kind']!r} checkpoint, expected a {kind!r} one")
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    device = str(map_location)
    tensors = {name.removesuffix(".safetensors"): load_file(str(path / name), device=device)
               for name in files if name.endswith(".safetensors")}
    extra = None
    if EXTRA_FILE in files:
        extra = torch.load(path / EXTRA_FILE, map_location=map_location, weights_only=True)
    return config, tensors, extra


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder holding one in ``checkpoint/``."""
    path = Path(path)
    if (path / "checkpoint" / CONFIG_FILE).exists():
        return path / "checkpoint"
    return path


def load_state(path: str | Path, kind: str = DIFFUSION_KIND, map_location: str | torch.device = "cpu"):
    """(config, tensors, extra) of a run's checkpoint of this kind; a clear error for anything else."""
    return load_checkpoint(find_checkpoint(path), kind=kind, map_location=map_location)


@dataclass
class ModelRecord:
    """The ``config.json`` of a diffusion model's (or noisy classifier's) checkpoint, typed.

    Attributes:
        kind: :data:`DIFFUSION_KIND` or :data:`CLASSIFIER_KIND`.
        model: the network's config (rebuilds it with :func:`difflab.models.build_model`).
        schedule: the noise schedule's config (:func:`difflab.schedules.schedule_from_config`).
        prediction: what the network predicts: ``epsilon``, ``x0`` or ``v``.
        learned_variance: the network also outputs improved DDPM's variance interpolation.
        image_shape: (C, H, W) of what the network sees (latents for a latent model).
        class_names: the classes of a class-conditional model (or a classifier); empty otherwise.
        text_encoder: the text encoder of a caption-conditioned model; None otherwise.
        latent: a latent model's autoencoder (:meth:`difflab.latent.LatentSpace.to_config`).
        train_config: the whole training config (:class:`difflab.training.config.Config` as a dict).
        step: the training step the weights are from.
        init_from: where a fine-tuned run's starting weights came from (``train --init-from``).
        other: keys this version does not know, kept so that a rewrite loses nothing.
    """

    kind: str
    model: dict
    schedule: dict
    image_shape: tuple[int, int, int]
    prediction: str = "epsilon"
    learned_variance: bool = False
    class_names: list[str] = field(default_factory=list)
    text_encoder: dict | None = None
    latent: dict | None = None
    train_config: dict = field(default_factory=dict)
    step: int | None = None
    init_from: dict | None = None
    other: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON mapping written to ``config.json``."""
        record = asdict(self)
        record["image_shape"] = list(self.image_shape)
        return {**record.pop("other"), **record}

    @classmethod
    def from_dict(cls, config: dict, path: str | Path = "") -> ModelRecord:
        """Read a ``config.json`` mapping (any version so far: missing optional keys default)."""
        names = {f.name for f in fields(cls)} - {"other"}
        missing = [key for key in ("kind", "model", "schedule", "image_shape") if key not in config]
        if missing:
            raise ValueError(f"{path or 'the checkpoint'} lacks {', '.join(missing)} in its {CONFIG_FILE}: "
                             "it was not written by `difflab train`")
        known = {key: value for key, value in config.items() if key in names}
        known["image_shape"] = tuple(known["image_shape"])
        known["class_names"] = list(known.get("class_names") or [])
        return cls(**known, other={key: value for key, value in config.items() if key not in names})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def conditional(self) -> bool:
        """Whether the network takes class labels or captions."""
        return self.num_classes > 0 or self.text_encoder is not None

    @property
    def trained_with_label_dropout(self) -> bool:
        """Whether the null label / empty caption was trained (``diffusion.cond_drop_prob > 0``):
        what classifier-free guidance needs."""
        return self.train_config.get("diffusion", {}).get("cond_drop_prob", 0.0) > 0

    @property
    def sample_defaults(self) -> dict:
        """The training config's ``sample`` section: method, steps, spacing, guidance_scale."""
        return self.train_config.get("sample", {})
