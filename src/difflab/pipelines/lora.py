"""LoRAs at sampling: loading adapter files onto a loaded model, checked against its base.

``difflab sample RUN --lora FILE[:SCALE]`` (repeatable) and ``Pipeline.load_lora`` put each LoRA
on the model's network through forward hooks (:class:`~difflab.models.lora.LoraNetwork`), so
several combine, each at its scale, and ``fuse``/``unfuse`` merge them into the weights and back
exactly. A difflab LoRA file records its base run's weights' SHA-256: another base is one clear
error unless ``force`` (PEFT and kohya files carry no base and are checked by layer names alone).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..checkpoint import weights_sha256
from ..errors import UserError
from ..models.lora import LoraNetwork
from ..models.lora_files import load_lora
from .loading import DiffusionModel

LORA_FILE = "lora.safetensors"  # what a train-lora run writes


def parse_lora_arg(text: str) -> tuple[str, float]:
    """``FILE`` or ``FILE:SCALE`` → (file, scale)."""
    path, sep, scale = str(text).rpartition(":")
    if sep and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", scale):
        return path, float(scale)
    return str(text), 1.0  # no scale (or a colon that belongs to the path)


def lora_path(path: str | Path) -> Path:
    """A LoRA file, or a train-lora run folder (its ``lora.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        if not (path / LORA_FILE).is_file():
            raise UserError(f"{path} holds no {LORA_FILE}: give a LoRA file or a finished train-lora run")
        return path / LORA_FILE
    return path


def add_lora(model: DiffusionModel, path: str | Path, scale: float = 1.0, force: bool = False) -> LoraNetwork:
    """Load the LoRA at ``path`` onto ``model``'s network with ``scale`` and record it on the model
    (generation records name it). Refuses a file made for another base unless ``force``."""
    path = lora_path(path)
    if any(lora.merged for lora in model.loras):
        raise UserError("unfuse the LoRAs before loading another (fused weights are not the base's)")
    try:
        lora = load_lora(path, model.network, scale, force)
    except (ValueError, OSError) as err:
        raise UserError(f"--lora {path}: {err}") from None
    expected = (lora.base or {}).get("weights_sha256")
    if expected and not force:
        digest = weights_sha256(model.network.state_dict())
        if digest != expected:
            lora.remove()
            raise UserError(f"the LoRA {path} was trained on the weights of {lora.base.get('path')} (step "
                            f"{lora.base.get('step')}), and {model.path} holds other weights (SHA-256 {digest[:12]} vs "
                            f"{expected[:12]}): use it with its base, or pass --force to apply it anyway")
    model.loras.append(lora)
    return lora


def lora_records(model: DiffusionModel) -> list[dict] | None:
    """The LoRAs on ``model`` as a generation record's ``loras``: path and scale each."""
    return [{"path": str(lora.path), "scale": lora.scale} for lora in model.loras] or None
