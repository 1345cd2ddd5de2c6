"""ControlNets at sampling: loading them, their control images, and the controlled network.

A :class:`ControlNetModel` is a ``difflab train-controlnet`` checkpoint: the control branch
(:class:`~difflab.models.controlnet.ControlNet`) and a reference to its base run with the base's
weights' SHA-256, so a ControlNet is never silently applied to another base (``force`` overrides).

A :class:`Control` is one ControlNet applied to one plan: its control images (one per image, at
the model's pixel size, uint8) and how much of it reaches the base:

* ``scale``: one float, or one per residual (shallow to deep, the middle block's last);
* ``start``, ``end``: the fractions of the sampling walk in which it acts — step i of n keeps
  the control iff ``start ≤ i/n`` and ``(i+1)/n ≤ end`` (diffusers' ``control_guidance_start`` /
  ``control_guidance_end``);
* ``guess_mode``: the control branch sees no prompt (the null label or empty caption), its
  residual k of K is scaled by 0.825^(K−1−k), and under classifier-free guidance only the
  conditional branch is controlled (the reference code and diffusers).

:class:`ControlledNetwork` is the base U-Net with any number of Controls (diffusers'
``MultiControlNet``: the residuals add up): a model function like the base's that also takes
``control`` (every Control's images in [0, 1], concatenated along the channels) and
``control_branch`` (N,) (1 for a conditional row, 0 for classifier-free guidance's unconditional
one). The plan gives these per batch; guidance zeroes ``control_branch`` in its unconditional
branch. A ControlNet at scale 0, or outside its window, is not run at all: the output is the base's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import CONTROLNET_KIND, find_checkpoint, load_state, weights_sha256
from ..controls import ControlSpec, make_controls, to_hint
from ..errors import UserError
from ..models import DiT, UNet, load_frozen
from ..models.controlnet import ControlNet, DiTControlNet, guess_mode_scales
from .img2img import InitImages, load_init_images_at, pixel_shape
from .loading import DiffusionModel


@dataclass
class ControlNetModel:
    """A trained ControlNet (frozen) and its checkpoint's ``config.json`` (``record``)."""

    network: ControlNet | DiTControlNet
    record: dict
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ControlNetModel:
        """Load ``path`` (a ``train-controlnet`` run or its checkpoint), EMA weights."""
        try:
            config, tensors, _ = load_state(path, kind=CONTROLNET_KIND, with_extra=False)
        except ValueError as err:
            raise UserError(f"--controlnet {path}: {err} (give a run made by difflab train-controlnet)") from None
        network = load_frozen(config["model"], tensors["ema"], device, source=find_checkpoint(path))
        return cls(network, config, find_checkpoint(path))

    @property
    def base(self) -> dict:
        """``{"path", "step", "weights_sha256"}`` of the base run it was trained on."""
        return self.record["base"]

    @property
    def control(self) -> ControlSpec:
        """How its training control images were made (the preprocessor its images should match)."""
        return ControlSpec.from_config(self.record["control"])

    @property
    def hint_channels(self) -> int:
        return self.network.config.hint_channels

    @property
    def default_scale(self) -> float:
        return float(self.record.get("sample", {}).get("control_scale", 1.0))

    def check_base(self, model: DiffusionModel, force: bool = False) -> None:
        """One clear error when ``model`` is not the base this ControlNet was trained on (another
        architecture always; other weights unless ``force``)."""
        mine = {k: v for k, v in self.network.config.base.items() if k != "preset"}
        theirs = {k: v for k, v in model.record.model.items() if k != "preset"}
        if json.dumps(mine, sort_keys=True, default=list) != json.dumps(theirs, sort_keys=True, default=list):
            raise UserError(f"the ControlNet {self.path} was made for another network than {model.path} (its base "
                            f"{self.base.get('path')} has another architecture): use it with that run")
        if force:
            return
        digest = weights_sha256(model.network.state_dict())
        if digest != self.base.get("weights_sha256"):
            raise UserError(f"the ControlNet {self.path} was trained on the weights of {self.base.get('path')} (step "
                            f"{self.base.get('step')}), and {model.path} holds other weights (SHA-256 "
                            f"{digest[:12]} vs {str(self.base.get('weights_sha256'))[:12]}): use it with its base, "
                            "or pass --force to apply it anyway")


@dataclass
class Control:
    """One ControlNet applied to a plan (see the module docstring)."""

    net: ControlNetModel
    images: InitImages
    scale: float | list[float] | None = None
    start: float = 0.0
    end: float = 1.0
    guess_mode: bool = False
    preprocess: str | None = None  # how the images were made from pictures (for the record)
    residual_scales: list[float] = field(init=False)

    def __post_init__(self):
        if self.scale is None:
            self.scale = self.net.default_scale
        n = self.net.network.num_residuals
        scales = list(self.scale) if isinstance(self.scale, (list, tuple)) else [float(self.scale)] * n
        if len(scales) != n:
            raise UserError(f"a per-layer control scale needs {n} values (one per skip connection and the middle "
                            f"block), got {len(scales)}")
        if not all(torch.isfinite(torch.tensor(s)) for s in scales):
            raise UserError(f"the control scale must be finite, got {self.scale}")
        if not 0.0 <= self.start < self.end <= 1.0:
            raise UserError(f"the control window needs 0 <= start < end <= 1, got start={self.start}, end={self.end}")
        if self.guess_mode:
            scales = [s * g for s, g in zip(scales, guess_mode_scales(n))]
        self.residual_scales = scales

    @property
    def silent(self) -> bool:
        """Whether it adds nothing at all (every scale 0)."""
        return all(s == 0 for s in self.residual_scales)

    def repeat_to(self, n: int) -> Control:
        if len(self.images) != n and n % len(self.images) and len(self.images) > 1:
            raise UserError(f"{len(self.images)} control images for {n} images: give one, or one per image")
        return Control(self.net, self.images.repeat_to(n), self.scale, self.start, self.end, self.guess_mode,
                       self.preprocess)

    def record(self, i: int) -> dict:
        return {"controlnet": str(self.net.path) if self.net.path else None, "control_image": self.images.paths[i],
                "control_scale": self.scale, "control_start": self.start, "control_end": self.end,
                "guess_mode": self.guess_mode or None, "control_preprocess": self.preprocess}


def load_control_images(source, net: ControlNetModel, model: DiffusionModel,
                        preprocess: str | dict | None = None) -> InitImages:
    """Control images at ``model``'s pixel size for ``net``: ready control images (read with the
    ControlNet's channels), or with ``preprocess`` (a :data:`~difflab.controls.CONTROL_KINDS`
    name, or ``"auto"``: the ControlNet's own) pictures turned into them."""
    channels, height, width = pixel_shape(model)
    if preprocess is None:
        return load_init_images_at(source, net.hint_channels, (height, width), what="control image")
    spec = net.control if preprocess == "auto" else ControlSpec.from_config(preprocess)
    pictures = load_init_images_at(source, channels, (height, width), what="control image")
    try:
        controls = make_controls(spec, pictures.images)
    except ValueError as err:
        raise UserError(f"--control-preprocess {spec.kind}: {err}") from None
    if controls.shape[1] != net.hint_channels:
        raise UserError(f"the {spec.kind} preprocessor makes {controls.shape[1]}-channel control images and this "
                        f"ControlNet takes {net.hint_channels}: use its own ({net.control.kind})")
    return InitImages(controls, pictures.paths)


def walk_index(sigmas: Tensor, sigma: float) -> int:
    """The step of a walk (descending ``sigmas``, the final level last) that a model call at noise
    level ``sigma`` belongs to: the last step whose starting level is at least ``sigma``."""
    starts = sigmas[:-1]
    return max(0, int((starts >= sigma * (1 - 1e-9)).sum()) - 1)


class ControlledNetwork(nn.Module):
    """The base network with ControlNets: ``(x_t, t, control, control_branch, **cond)``.

    Args:
        base: the base network (a :class:`~difflab.models.UNet` or :class:`~difflab.models.DiT`).
        controls: the :class:`Control` of each ControlNet (their networks are used, their images
            come in ``control``).
        schedule: the base's noise schedule (t → σ for the windows).
        null_cond: the unconditional text inputs of batch 1 (the empty caption), for guess mode;
            None for a class-conditional or unconditional base.
    """

    def __init__(self, base: nn.Module, controls: list[Control], schedule, null_cond: dict | None = None):
        super().__init__()
        self.base = base
        self.config = base.config
        self.controlnets = nn.ModuleList(c.net.network for c in controls)
        self.controls = controls
        self.schedule = schedule
        self.null_cond = null_cond
        self.walk: Tensor | None = None  # the plan's sigmas: set by generate.batches before sampling
        unlocked = [c for c in controls if c.net.network.config.unlock_decoder]
        if len(unlocked) > 1:
            raise UserError("two ControlNets each bring their own unlocked decoder (trained with unlock_decoder): "
                            "use at most one of them at a time")
        self.decoder_owner = unlocked[0].net.network if unlocked else None

    def active(self, t: Tensor) -> list[bool]:
        """Which ControlNets act at time t: a non-zero scale and the step inside their window."""
        keep = [not c.silent for c in self.controls]
        windowed = [c.start > 0 or c.end < 1 for c in self.controls]
        if not any(k and w for k, w in zip(keep, windowed)):
            return keep
        if self.walk is None:
            raise ValueError("a control window (start/end) needs the sampling walk: sample through difflab's "
                             "pipeline (generate / Pipeline), which sets it")
        n = len(self.walk) - 1
        i = walk_index(self.walk, float(self.schedule.sigma(t[:1].detach().double().cpu())[0]))
        inside = [c.start <= i / n and (i + 1) / n <= c.end for c in self.controls]
        return [k and (inside_k or not w) for k, w, inside_k in zip(keep, windowed, inside)]

    def forward(self, x: Tensor, t: Tensor, control: Tensor | None = None, control_branch: Tensor | None = None,
                **cond) -> Tensor:
        active = self.active(t)
        decoder = {"decoder": self.decoder_owner} if self.decoder_owner is not None else {}
        if not any(active):
            return self.base(x, t, **cond, **decoder)
        if control is None:
            raise ValueError("this network is controlled: pass control= (the control images, concatenated)")
        residuals, offset, n = None, 0, x.shape[0]
        for c, net, on in zip(self.controls, self.controlnets, active):
            channels = net.config.hint_channels
            image = control[:, offset : offset + channels]
            offset += channels
            if not on:
                continue
            null = None
            if c.guess_mode:  # no prompt for the control branch
                null = {k: v.expand(n, *v.shape[1:]) for k, v in (self.null_cond or {}).items()}
            out = net(x, t, image, **controlnet_inputs(self.base, cond, null))
            rows = None
            if c.guess_mode and control_branch is not None:  # the unconditional rows get no control
                rows = control_branch.to(x.dtype).view(-1, 1, 1, 1)
            scaled = [r * s if rows is None else r * s * rows for r, s in zip(out, c.residual_scales)]
            residuals = scaled if residuals is None else [a + b for a, b in zip(residuals, scaled)]
        return self.base(x, t, **cond, control=residuals, **decoder)


def controlnet_inputs(base: nn.Module, cond: dict, null: dict | None = None) -> dict:
    """What a ControlNet reads besides x, t and its image, from the base's inputs ``cond``: the
    class labels, the encoded context (a base with its own trainable text encoder encodes the
    caption for it), a concatenated image and its level. ``null``: the prompt-free inputs of guess
    mode instead (the empty caption's, batch-sized; the null label for a class-conditional base)."""
    out = {key: cond[key] for key in ("concat", "aug_level") if cond.get(key) is not None}
    if base.label_embed is not None:
        out["class_labels"] = None if null is not None else cond.get("class_labels")
    if base.config.context_dim:
        source = cond if null is None else null
        if base.text_encoder is not None:
            out["context"] = base.text_encoder(source["input_ids"], source.get("token_mask"))
            out["context_mask"] = source.get("token_mask")
        else:
            out["context"], out["context_mask"] = source["context"], source.get("context_mask")
    return out


def control_inputs(controls: list[Control], indices: list[int], device) -> dict:
    """The plan's per-batch inputs of the controlled network for these images."""
    images = torch.cat([to_hint(c.images.images[indices]) for c in controls], dim=1).to(device)
    return {"control": images, "control_branch": torch.ones(len(indices), device=device)}


def controlled_model(model: DiffusionModel, controls: list[Control], null_cond: dict | None = None,
                     force: bool = False) -> DiffusionModel:
    """``model`` with ``controls`` applied: the same record, schedule and autoencoder, its network
    a :class:`ControlledNetwork`. Checks each ControlNet against the base and its images'
    channels and size first."""
    if not isinstance(model.network, (UNet, DiT)):
        raise UserError(f"a ControlNet controls a U-Net or a DiT; {model.path} is a {type(model.network).__name__}: "
                        "sample it without --controlnet")
    _, height, width = pixel_shape(model)
    for c in controls:
        c.net.check_base(model, force)
        shape = tuple(c.images.images.shape[1:])
        if shape != (c.net.hint_channels, height, width):
            raise UserError(f"the ControlNet {c.net.path} takes {c.net.hint_channels}-channel control images of "
                            f"{width}x{height}, got {shape[0]} channel(s) at {shape[2]}x{shape[1]}")
    device = model.device
    for c in controls:
        c.net.network.to(device)
    network = ControlledNetwork(model.network, controls, model.schedule, null_cond)
    return DiffusionModel(network, model.record, model.schedule, model.latent, model.path, model.loras,
                          model.embeddings)


def build_controls(model: DiffusionModel, controlnet, control_image, scale=None, start=0.0, end=1.0,
                   guess_mode: bool = False, preprocess=None) -> list[Control]:
    """The Controls of ``Pipeline(controlnet=..., control_image=...)``: one ControlNet (a run
    path or a loaded :class:`ControlNetModel`) with its image(s), or a list of them with a list of
    images (one entry per ControlNet; ``scale``, ``start``, ``end`` and ``preprocess`` then a
    value for all or a list with one per ControlNet)."""
    many = isinstance(controlnet, (list, tuple))
    nets = list(controlnet) if many else [controlnet]
    if control_image is None:
        raise ValueError("a ControlNet needs its control image: pass control_image=...")
    images = list(control_image) if many else [control_image]
    if len(images) != len(nets):
        raise ValueError(f"{len(nets)} ControlNets need {len(nets)} control images (one entry each), got {len(images)}")

    def each(value, name):
        if many and isinstance(value, (list, tuple)):
            if len(value) != len(nets):
                raise ValueError(f"{name} needs one value per ControlNet ({len(nets)}), got {len(value)}")
            return list(value)
        return [value] * len(nets)

    controls = []
    for net, image, s, a, b, p in zip(nets, images, each(scale, "control_scale"), each(start, "control_start"),
                                      each(end, "control_end"), each(preprocess, "control_preprocess")):
        net = net if isinstance(net, ControlNetModel) else ControlNetModel.load(net, device=model.device)
        controls.append(Control(net, load_control_images(image, net, model, p), s, a, b, guess_mode, p))
    return controls
