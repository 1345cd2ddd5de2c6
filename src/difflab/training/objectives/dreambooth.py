"""DreamBooth (Ruiz et al. 2023, "DreamBooth: Fine Tuning Text-to-Image Diffusion Models for
Subject-Driven Generation"): the whole model (or LoRA adapters) fine-tuned on a few pictures of a
subject under a prompt with a rare token ("a photo of a sks boot"), with **prior preservation**:
the frozen base first generates ``dreambooth.prior_images`` pictures of the subject's class ("a
photo of a boot", cached in ``train.out_dir/class-images``), and each step's loss is

    L = E‖ε − ε_θ(x_t, t, c_instance)‖² + λ · E‖ε' − ε_θ(x'_t, t', c_class)‖²   (paper eq. 2)

over a batch of instance pictures and an equal batch of class pictures (λ = ``prior_weight``),
which keeps the class's other members from drifting towards the subject. Without a class prompt
it is the instance term alone. The full model's run is a normal diffusion run (``difflab sample
RUN``); with ``dreambooth.lora`` the run writes ``lora.safetensors`` as ``train-lora`` does.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from ... import losses
from ...checkpoint import DIFFUSION_KIND
from ...conditioning import select
from ...data.convert import to_float
from ...images import image_path, read_pngs, save_grid, save_images
from ...pipelines.generate import SamplerSettings, generate, plan, run
from ...pipelines.png_info import png_text
from ..config import Config, ConfigError
from .base import Inputs, StepLoss, TrainingData
from .lora import LoraObjective
from .personalisation import PersonalisationObjective

PRIOR_FOLDER = "class-images"


class PriorPreservation:
    """DreamBooth's settings and its prior-preservation half, mixed into a personalisation objective."""

    def settings(self, config: Config):
        db = config.dreambooth
        return db.base, db.instance_prompt, db.class_name, "dreambooth"

    def __init__(self, config: Config, data: TrainingData):
        super().__init__(config, data)
        self.prepare_prior()

    def prepare_prior(self) -> None:
        db = self.config.dreambooth
        self.prior = None
        if not db.class_prompt:
            return
        if self.text is None:
            raise ConfigError("prior preservation generates class images from dreambooth.class_prompt: it needs a "
                              "text-conditioned base (drop the class prompt for a class-conditional one)")
        images = class_images(self.base, db.class_prompt, db.prior_images, Path(self.config.train.out_dir),
                              self.config.train.seed, self.base_hash)
        x0 = to_float(images.to(self.data.device))
        if self.data.latent is not None:
            x0 = self.data.latent.encode_all(images.to(self.data.device),
                                             generator=torch.Generator(self.data.device).manual_seed(0))
        self.prior = x0
        table, rows = self.text.table([db.class_prompt])
        self.prior_cond = select(table, rows, self.null_caption)

    def draw(self, x0: Tensor, idx: Tensor, step: int, generator: torch.Generator, pixels=None) -> Inputs:
        inputs = super().draw(x0, idx, step, generator)
        if self.prior is None:
            return inputs
        n = x0.shape[0]
        pick = torch.randint(len(self.prior), (n,), generator=generator, device=x0.device)
        prior_x0 = self.prior[pick]
        t = losses.sample_training_t(self.schedule, n, torch.Generator().manual_seed(0x9A10 + 7919 * step +
                                                                                       self.config.train.seed))
        noise = torch.randn(prior_x0.shape, generator=generator, device=x0.device)
        cond = {key: value.expand(n, *value.shape[1:]) for key, value in self.prior_cond.items()}
        inputs["prior"] = {"x0": prior_x0, "t": t, "noise": noise, "cond": cond}
        return inputs

    def loss(self, net, inputs: Inputs) -> StepLoss:
        instance = super().loss(net, inputs)
        if "prior" not in inputs:
            return instance
        prior = super().loss(net, inputs["prior"])
        total = instance.loss + self.config.dreambooth.prior_weight * prior.loss
        return StepLoss(total, {"instance_loss": instance.loss.detach(), "prior_loss": prior.loss.detach()})


@torch.no_grad()
def class_images(base, prompt: str, n: int, out_dir: Path, seed: int, base_hash: str) -> Tensor:
    """``n`` pictures of ``prompt`` by the frozen ``base`` (seeds seed … seed+n−1, its sample
    settings), cached as PNGs in ``out_dir/class-images`` with what made them; read back when the
    prompt, count, seed and base weights match."""
    folder = out_dir / PRIOR_FOLDER
    stamp = {"prompt": prompt, "n": n, "seed": seed, "base_weights_sha256": base_hash}
    paths = [image_path(folder, i, n) for i in range(n)]
    record = folder / "class-images.json"
    if record.is_file() and json.loads(record.read_text()) == stamp and all(p.is_file() for p in paths):
        return read_pngs(paths)
    print(f"difflab dreambooth: generating {n} class images of {prompt!r} with the base")
    images, _ = generate(base, n, seeds=list(range(seed, seed + n)), prompts=[prompt], batch_size=256)
    save_images(images, folder, names=[p.name for p in paths])
    record.write_text(json.dumps(stamp, indent=1) + "\n")
    return images


class DreamBoothObjective(PriorPreservation, PersonalisationObjective):
    """DreamBooth, the whole model fine-tuned; ``difflab train-dreambooth``."""

    kind = DIFFUSION_KIND

    def model_spec(self) -> dict:
        return dict(self.base.record.model)

    def attach(self, model) -> None:
        super().attach(model)
        model.load_state_dict(self.base.network.state_dict())  # starts as the base

    @torch.no_grad()
    def preview(self, model, path: Path) -> Path:
        from ...pipelines.loading import DiffusionModel

        n = self.config.train.num_preview
        was_training = model.training
        model.eval()
        try:
            tuned = DiffusionModel(model, self.base.record, self.schedule, self.base.latent)
            labels = self.data.dataset.labels[:1].repeat(n) if self.labels is not None else None
            out = run(plan(tuned, n, SamplerSettings.resolve(tuned), seed=self.config.train.seed, labels=labels,
                           prompts=[self.prompt] if self.prompt else None), batch_size=n)
        finally:
            model.train(was_training)
        return save_grid(out.images, path, upscale=max(1, 64 // out.images.shape[-1]),
                         pnginfo=png_text(out.grid_record()))

    def checkpoint_config(self, init_from: dict | None = None) -> dict:
        """The base's record (schedule, prediction, text encoder, classes, sample defaults and the
        dropout CFG relies on), with this run's training config and the base as ``init_from``."""
        base = self.base.record
        train_config = {**self.config.to_dict(), "diffusion": base.train_config.get("diffusion", {}),
                        "sample": base.train_config.get("sample", {})}
        record = replace(base, model=self.spec, train_config=train_config, step=None,
                         init_from={"path": str(self.settings(self.config)[0]), "step": base.step,
                                    "weights_sha256": self.base_hash})
        return {k: v for k, v in record.to_dict().items() if k != "step"}


class DreamBoothLoraObjective(PriorPreservation, LoraObjective):
    """DreamBooth with LoRA adapters instead of the whole model (``dreambooth.lora: true``)."""
