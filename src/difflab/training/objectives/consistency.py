"""Consistency distillation (Song et al. 2023, "Consistency Models", Algorithm 2), with the
pseudo-Huber loss of "Improved Techniques for Training Consistency Models" (Song & Dhariwal 2023,
§3.3) and guided distillation's w input (Meng et al. 2023; Luo et al. 2023, "Latent Consistency
Models", §4.2).

A consistency function f(x, σ) maps every point of a probability-flow ODE trajectory to the
trajectory's origin, so one evaluation at σ_max is a sample. The student learns it from a frozen
teacher's ODE on N + 1 levels σ₀ > σ₁ > … > σ_N = 0 (``distill.levels`` steps of ``distill.spacing``
on the teacher's schedule). For a row at level i, with x₀ a training image, in difflab's sampler
space x = x₀ + σ·ε (docs/architecture.md)::

    x    = x₀ + σᵢ·ε
    x̂    = x̂₀ᵀ(x, σᵢ) + σᵢ₊₁/σᵢ · (x − x̂₀ᵀ(x, σᵢ))      one DDIM step of the teacher, σᵢ → σᵢ₊₁
    y    = f_θ⁻(x̂, σᵢ₊₁)   (y = x̂ when σᵢ₊₁ = 0: the boundary f(x, 0) = x)
    L    = √(‖f_θ(x, σᵢ) − y‖² + c²) − c                    pseudo-Huber, c = 0.00054·√dims

θ⁻ is the target network, an exponential moving average of the student with rate μ
(``distill.target_ema``, the paper's 0.95 for CD), updated after every optimizer step and kept in
the checkpoint's objective state, so a resumed run continues it. The student and the target share
the teacher's network and prediction type and start from its weights (plus a zero-initialised w
embedding for a guided student); f is the network's x̂₀. With ε- or v-prediction x̂₀ → x as σ → 0,
so the boundary condition f(x, 0) = x holds by construction and needs none of the paper's skip
connection; it is imposed exactly on the last interval (target y = x̂) and by sampling, which never
evaluates f at σ = 0. The teacher steps as ``difflab sample --method ddim`` does (x̂₀ clipped for a
pixel model), guided at w per row like progressive distillation's; the target network's x̂₀ is
clipped the same way, the student's is not (clipping has no gradient).

The result samples with :func:`difflab.sampling.consistency` (Algorithm 1) on any k ≤ N of its
levels (:func:`~difflab.sampling.consistency_levels`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ... import process
from ...sampling import consistency_levels, get_sigmas
from ..config import Config, ConfigError
from ..ema import EMA
from .base import Inputs, StepLoss, TrainingData
from .distill import DistillationObjective, ddim_step, with_guidance_scale

TARGET_PREFIX = "target."


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """√(‖a − b‖² + c²) − c per row (Song & Dhariwal 2023, eq. 8): ≈ ‖a − b‖²/(2c) near 0 and
    ‖a − b‖ far from it, so outliers weigh less than under the squared error. Computed as
    ‖a − b‖²/(√(‖a − b‖² + c²) + c), the same number without the cancellation that rounds small
    errors to 0 in float32."""
    squared = (a - b).float().square().flatten(1).sum(1)
    return squared / (torch.sqrt(squared + c * c) + c)


def default_huber_c(shape) -> float:
    """c = 0.00054·√d for d = C·H·W (Song & Dhariwal 2023, §3.3: 0.03 at CIFAR-10's d = 3,072)."""
    return 0.00054 * math.sqrt(math.prod(shape))


class ConsistencyDistillationObjective(DistillationObjective):
    """Consistency distillation of a frozen teacher's probability-flow ODE (``difflab distill
    --method consistency``): one student that samples in any of 1 … ``distill.levels`` steps."""

    def __init__(self, config: Config, data: TrainingData):
        super().__init__(config, data)
        d = config.distill
        if d.steps > d.levels:
            raise ConfigError(f"distill.steps ({d.steps}) must be at most distill.levels ({d.levels}): a consistency "
                              "run samples on its training levels")
        self.huber_c = d.huber_c if d.huber_c is not None else default_huber_c(data.shape)
        self.target_network: EMA | None = None

    def grids(self, record, d) -> tuple[Tensor, Tensor]:
        """The teacher's N + 1 levels; the student learns f at every one of them."""
        if record.distilled is not None:
            raise ConfigError(f"distill.teacher ({d.teacher}) is a distilled student; consistency distillation needs "
                              "the diffusion run it came from (its ODE)")
        levels = get_sigmas(self.schedule, d.levels, d.spacing)
        return levels, levels

    def attach(self, model) -> None:
        """The student starts as the teacher; the target network starts as the student."""
        super().attach(model)
        self.student = model
        self.target_network = EMA(model, self.config.distill.target_ema, warmup=False)

    def state_dict(self) -> dict[str, Tensor]:
        return {TARGET_PREFIX + k: v for k, v in self.target_network.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        mine = {k[len(TARGET_PREFIX):]: v for k, v in state.items() if k.startswith(TARGET_PREFIX)}
        if len(mine) != len(state) or not mine:
            raise ValueError("the checkpoint holds no consistency target network: resume it with the objective that "
                             "wrote it (difflab distill --method progressive?)")
        self.target_network.load_state_dict(mine)

    def draw(self, x0: Tensor, idx: Tensor, step: int, generator: torch.Generator,
             pixels: Tensor | None = None) -> Inputs:
        """The step's rows and w (as progressive distillation draws them, over N levels), after
        moving θ⁻ towards the student weights the last optimizer step left."""
        self.target_network.update(self.student, step)
        return super().draw(x0, idx, step, generator, pixels)

    @torch.no_grad()
    def target(self, x: Tensor, rows: Tensor, cond: dict, w: Tensor | None) -> Tensor:
        """y of each row: f_θ⁻ after one teacher DDIM step σᵢ → σᵢ₊₁ (the step's end itself at σ = 0)."""
        sigma, sigma_next = self.sigmas[rows], self.sigmas[rows + 1]
        x_next = ddim_step(x, self.teacher_denoiser(w)(x, sigma, **self.teacher_cond(cond, w, x)), sigma, sigma_next)
        at_zero = sigma_next == 0
        if bool(at_zero.all()):
            return x_next
        target = self.teacher.denoiser().with_model(self.target_network.shadow)
        # rows at σ = 0 are evaluated at the lowest level, then replaced: f is never evaluated at 0
        y = target(x_next, sigma_next.clamp(min=self.sigmas[-2]), **with_guidance_scale(cond, w, x))
        return torch.where(process.broadcast_to(at_zero, x).to(x.device), x_next, y)

    def distance(self, x0: Tensor, target: Tensor, sigma: Tensor) -> StepLoss:
        """The pseudo-Huber distance, unweighted (Song et al. 2023 use λ = 1 for CD)."""
        return StepLoss(pseudo_huber(x0, target, self.huber_c).mean(),
                        {"x0_mse": (x0.detach() - target).float().square().mean()})

    def distilled_record(self) -> dict:
        """What the student was trained for (``ModelRecord.distilled``): consistency sampling on its levels."""
        d, teacher = self.config.distill, self.teacher
        return {"method": "consistency", "steps": d.steps,
                "sigmas": consistency_levels(self.sigmas.tolist(), d.steps).tolist(), "spacing": self.spacing,
                "levels": self.sigmas.tolist(),
                "guidance_range": list(self.guidance_range) if self.guidance_range is not None else None,
                "teacher": {"path": str(teacher.path.parent.resolve()) if teacher.path else None,
                            "step": teacher.record.step, "steps": None}}
