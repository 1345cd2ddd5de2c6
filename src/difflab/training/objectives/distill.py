"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
Diffusion Models", Algorithm 2), with guided distillation's w input (Meng et al. 2023, "On
Distillation of Guided Diffusion Models", §3.1).

A frozen teacher takes two DDIM (η = 0) steps; the student, initialised from the teacher's
weights, learns to take them in one. The student's grid σ₀ > σ₁ > … > σ_N = 0 is every other level
of the teacher's 2N-step grid τ (the teacher's own distilled grid, or ``distill.spacing`` on its
schedule). In difflab's sampler space x = x₀ + σ·ε (docs/architecture.md), for a row at student
level i::

    x   = x₀ + σ·ε                                  σ = τ₂ᵢ, x₀ a training image
    x'  = x̂₀ᵀ(x, σ) + σ'/σ · (x − x̂₀ᵀ(x, σ))         σ' = τ₂ᵢ₊₁   (DDIM, Song et al. 2021, eq. 12)
    x'' = x̂₀ᵀ(x', σ') + σ''/σ' · (x' − x̂₀ᵀ(x', σ'))   σ'' = τ₂ᵢ₊₂
    x̃   = (x'' − (σ''/σ)·x) / (1 − σ''/σ)           the x̂₀ whose one DDIM step σ → σ'' lands on x''

The paper's target x̃ = (z_t'' − (σ_t''/σ_t) z_t) / (α_t'' − (σ_t''/σ_t) α_t) is this one: with
z = α·x and difflab's σ = σ_t/α_t, dividing its numerator and denominator by α_t'' gives the line
above. The loss is the x-space error under the paper's "truncated SNR" weighting (§4)::

    L = max(SNR, 1) · ‖x̂₀ˢ(x, σ) − x̃‖²,     SNR = 1/σ²

The teacher steps as ``difflab sample --method ddim`` does, x̂₀ clipped to [−1, 1] for a pixel
model; x̃ is then a convex combination of its two x̂₀ (weights (1 − r₂) and r₂(1 − r₁) over
1 − r₁r₂, rₖ the steps' σ ratios), so it stays in [−1, 1] and the student's clipped sampling
reaches the same x''. The student's x̂₀ is not clipped in the loss (clipping has no gradient).

**Guided distillation.** A class-conditional teacher trained with label dropout is guided by
classifier-free guidance at a weight w drawn per row from ``distill.guidance_range`` (both branches
in one batch); the student takes w as an input (``guidance_embed``: an embedding of w added to the
time embedding, zero-initialised, so the initial student is the teacher's conditional network for
every w). A distilled teacher (the previous round) takes w as its own input.

**Parametrisation.** The student keeps the teacher's network and prediction type, so round 1 starts
exactly at the teacher. The paper trains v-prediction (its §4): x̂₀ = (xₜ − d·ε̂)/s from an ε
network multiplies ε errors by σ (≈ 157 at t = T of DDPM's linear schedule), which a few-step
student's first step cannot afford. Train the teacher with ``diffusion.prediction: v`` for the
paper's setting (docs/distillation.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ... import process
from ...checkpoint import DIFFUSION_KIND, ModelRecord
from ...denoiser import Denoiser
from ...guidance import ClassifierFreeGuidance, null_class_labels
from ...models.conditioning import ZERO_INIT_MODULES
from ...sampling import get_sigmas
from ..config import Config, ConfigError
from .base import Inputs, StepLoss, TrainingData
from .diffusion import DiffusionObjective
from .frozen_base import load_base


def ddim_step(x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One DDIM step with η = 0 (:func:`difflab.sampling.ddim.ddim`: x̂₀ + σₙ·(x − x̂₀)/σ), for
    rows at their own levels σ, σₙ (N,)."""
    return denoised + process.broadcast_to(sigma_next, x) * ((x - denoised) / process.broadcast_to(sigma, x))


def distillation_target(x: Tensor, x_next: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """x̃ = (x'' − (σ''/σ)·x) / (1 − σ''/σ): the x̂₀ with which one DDIM step σ → σ'' from x lands
    on x'' (Salimans & Ho 2022, Algorithm 2, in σ-space; σ'' < σ)."""
    ratio = process.broadcast_to(sigma_next / sigma, x)
    return (x_next - ratio * x) / (1 - ratio)


def with_guidance_scale(cond: dict, w: Tensor | None, like: Tensor) -> dict:
    """``cond`` with a guided student's w input (``guidance_scale``, in ``like``'s device and dtype)
    added; ``cond`` itself without w."""
    return cond if w is None else {**cond, "guidance_scale": w.to(device=like.device, dtype=like.dtype)}


def truncated_snr_weight(sigma: Tensor) -> Tensor:
    """max(SNR, 1) with SNR = 1/σ² (Salimans & Ho 2022, §4: "truncated SNR" weighting of the x-space error)."""
    return torch.clamp(sigma.double() ** -2, min=1.0)


def teacher_grid(record: ModelRecord, schedule, steps: int, spacing: str) -> Tensor:
    """The teacher's 2·``steps`` noise levels (float64, ending in 0): its own distilled grid, or
    ``spacing`` on its schedule for a teacher that was not distilled."""
    distilled = record.distilled
    if distilled is None:
        return get_sigmas(schedule, 2 * steps, spacing)
    if distilled["steps"] != 2 * steps:
        raise ConfigError(f"distill.teacher was distilled for {distilled['steps']} steps; its student takes half as "
                          f"many: set distill.steps={distilled['steps'] // 2}")
    return torch.tensor(distilled["sigmas"], dtype=torch.float64)


class DistillationObjective(DiffusionObjective):
    """One round of progressive distillation: a student of ``distill.steps`` DDIM steps from a
    frozen teacher of twice as many (``difflab distill``)."""

    kind = DIFFUSION_KIND
    ships_tuned_levels = False  # a distilled student samples on its own fixed grid

    def __init__(self, config: Config, data: TrainingData):
        d = config.distill
        self.teacher = load_base(d.teacher, "distill.teacher", "RUN", data)
        record = self.teacher.record
        if record.text_encoder is not None or config.data.text_conditional:
            raise ConfigError("difflab distill handles unconditional and class-conditional runs; distill.teacher is "
                              "text-conditioned (or data.text_conditional is set): not supported yet")
        super().__init__(config, data)
        if (self.labels is not None) != (record.num_classes > 0):
            raise ConfigError(f"data.class_conditional must be {record.num_classes > 0}, as for the teacher "
                              f"{d.teacher}")
        if self.labels is not None and list(data.dataset.class_names) != list(record.class_names):
            raise ConfigError(f"the data's classes {data.dataset.class_names} differ from the teacher's "
                              f"{record.class_names}")
        self.schedule = self.teacher.schedule  # the teacher's diffusion: schedule, prediction, variance
        self.teacher_sigmas, self.sigmas = self.grids(record, d)
        self.spacing = record.distilled["spacing"] if record.distilled else d.spacing
        self.guidance_range = self.check_guidance_range(d.guidance_range)

    def grids(self, record: ModelRecord, d) -> tuple[Tensor, Tensor]:
        """The teacher's levels and the student's: every other one of the teacher's 2·steps, the 0 included."""
        teacher = teacher_grid(record, self.schedule, d.steps, d.spacing)
        return teacher, teacher[::2]

    def check_guidance_range(self, bounds) -> tuple[float, float] | None:
        """The w range of guided distillation, or None: the teacher cannot be guided (unconditional,
        or trained without label dropout) or the range is null."""
        record = self.teacher.record
        taught = (record.distilled or {}).get("guidance_range")
        if taught is not None:  # a guided student as teacher: it knows w only in its own range
            if bounds is None or not taught[0] <= bounds[0] <= bounds[1] <= taught[1]:
                raise ConfigError(f"distill.teacher was distilled for guidance scales in {list(taught)}: set "
                                  f"distill.guidance_range within it (got {bounds})")
        elif not (record.num_classes > 0 and record.trained_with_label_dropout):
            return None
        return None if bounds is None else (float(bounds[0]), float(bounds[1]))

    def model_spec(self) -> dict:
        return {**self.teacher.record.model, "guidance_embed": self.guidance_range is not None}

    def attach(self, model) -> None:
        """The student starts as the teacher: its weights, with a new w embedding's zero ones."""
        super().attach(model)
        own = {k: v for k, v in model.state_dict().items() if k.split(".")[0] in ZERO_INIT_MODULES}
        model.load_state_dict({**own, **self.teacher.network.state_dict()})

    def draw(self, x0: Tensor, idx: Tensor, step: int, generator: torch.Generator,
             pixels: Tensor | None = None) -> Inputs:
        n = x0.shape[0]
        g = torch.Generator().manual_seed(self.config.train.seed + step)  # rows and w on the CPU
        inputs = {"x0": x0, "rows": torch.randint(len(self.sigmas) - 1, (n,), generator=g),
                  "noise": torch.randn(x0.shape, generator=generator, device=x0.device),
                  "cond": {"class_labels": self.labels[idx]} if self.labels is not None else {}}
        if self.guidance_range is not None:
            lo, hi = self.guidance_range
            inputs["w"] = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
        return inputs

    def teacher_denoiser(self, w: Tensor | None) -> Denoiser:
        """The teacher as DDIM sampling uses it (x̂₀ clipped for a pixel model), guided at w per row
        by classifier-free guidance, or given w as its input when it is a guided student."""
        denoiser = self.teacher.denoiser()
        if w is None or self.teacher.record.takes_guidance_scale:
            return denoiser
        uncond = null_class_labels(self.teacher.num_classes)
        return denoiser.with_model(ClassifierFreeGuidance(denoiser.model, w, uncond,
                                                          learned_variance=self.teacher.learned_variance))

    def teacher_cond(self, cond: dict, w: Tensor | None, like: Tensor) -> dict:
        """The teacher's conditioning: w as an input too when the teacher is a guided student."""
        return with_guidance_scale(cond, w if self.teacher.record.takes_guidance_scale else None, like)

    @torch.no_grad()
    def target(self, x: Tensor, rows: Tensor, cond: dict, w: Tensor | None) -> Tensor:
        """x̃ of each row: the teacher's two DDIM steps from x, then the one-step x̂₀ that matches them."""
        sigma, mid, end = (self.teacher_sigmas[2 * rows + k] for k in range(3))
        denoise, cond = self.teacher_denoiser(w), self.teacher_cond(cond, w, x)
        x_mid = ddim_step(x, denoise(x, sigma, **cond), sigma, mid)
        x_end = ddim_step(x_mid, denoise(x_mid, mid, **cond), mid, end)
        return distillation_target(x, x_end, sigma, end)

    def loss(self, net, inputs: Inputs) -> StepLoss:
        """The student's x̂₀ at a row's level against the row's :meth:`target`, by :meth:`distance`."""
        x0, rows, w = inputs["x0"], inputs["rows"], inputs.get("w")
        sigma = self.sigmas[rows]
        x = x0 + process.broadcast_to(sigma, x0) * inputs["noise"]
        target = self.target(x, rows, inputs["cond"], w)
        student = Denoiser(net, self.schedule, self.teacher.prediction, self.teacher.learned_variance)
        return self.distance(student.predict(x, sigma, **with_guidance_scale(inputs["cond"], w, x0)).x0, target, sigma)

    def distance(self, x0: Tensor, target: Tensor, sigma: Tensor) -> StepLoss:
        """The truncated-SNR-weighted squared error (Salimans & Ho 2022, §4)."""
        error = (x0 - target).float().square().flatten(1).mean(1)  # (N,)
        weight = truncated_snr_weight(sigma).to(device=error.device, dtype=error.dtype)
        return StepLoss((weight * error).mean(), {"x0_mse": error.detach().mean()})

    def distilled_record(self) -> dict:
        """What the student was trained for (``ModelRecord.distilled``): sampling uses exactly this."""
        teacher, n = self.teacher, len(self.sigmas) - 1
        start = (teacher.record.distilled or {}).get("start_steps", 2 * n)
        return {"method": "ddim", "steps": n, "sigmas": self.sigmas.tolist(), "spacing": self.spacing,
                "guidance_range": list(self.guidance_range) if self.guidance_range is not None else None,
                "teacher": {"path": str(teacher.path.parent.resolve()) if teacher.path else None,
                            "step": teacher.record.step, "steps": 2 * n},
                "start_steps": start}

    def checkpoint_config(self, init_from: dict | None = None) -> dict:
        t = self.teacher.record
        return ModelRecord(
            kind=self.kind, model=self.spec, schedule=t.schedule, image_shape=t.image_shape, prediction=t.prediction,
            learned_variance=t.learned_variance, class_names=list(t.class_names), latent=t.latent,
            train_config=self.config.to_dict(), init_from=init_from, distilled=self.distilled_record(),
        ).to_dict()
