"""Training losses: the MSE of an ε / x₀ / v prediction under a per-timestep weighting,
improved DDPM's hybrid loss with a learned variance and its pure variational bound L_vlb, and
importance sampling of the training time t for the bound.

One training step (DDPM Algorithm 1): draw t and ε, form xₜ = s·x₀ + d·ε, ask the network for
its prediction, compare with the target of its type, weight by t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import process
from .likelihood import vlb_terms

WEIGHTINGS = ("uniform", "min_snr", "p2")
# What the network is trained on (improved DDPM, Nichol & Dhariwal 2021, §3.1): DDPM's L_simple, the
# hybrid L_simple + λ·L_vlb, or the variational bound L_vlb alone.
LOSSES = ("simple", "hybrid", "vlb")
# how the training times are drawn: sample_training_t, ImportanceSampler, sample_lognormal_t
T_SAMPLINGS = ("uniform", "importance", "lognormal")


def resolve_loss(loss: str | None, learned_variance: bool) -> str:
    """The loss a run trains: ``loss``, or by default (None) ``hybrid`` for a learned-variance
    model and ``simple`` otherwise (what ``learned_variance`` alone has always meant).

    ``hybrid`` needs the learned variance (its L_vlb term trains nothing else), and ``simple``
    would leave a learned variance untrained; ``vlb`` takes either (with a fixed variance it is
    DDPM's true bound with Σ = β̃, a reweighted MSE)."""
    if loss is None:
        return "hybrid" if learned_variance else "simple"
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    if loss == "hybrid" and not learned_variance:
        raise ValueError("the hybrid loss trains the learned variance through L_vlb: it needs learned_variance "
                         "(or use loss 'simple', the same thing without it)")
    if loss == "simple" and learned_variance:
        raise ValueError("loss 'simple' leaves the learned variance untrained: use 'hybrid' or 'vlb', or turn "
                         "learned_variance off")
    return loss


class ImportanceSampler:
    """Importance sampling of the training time t for L_vlb (improved DDPM, §3.3, eq. 18).

    L_vlb = Σₜ Lₜ is estimated from one term at a time. Uniform t gives T·Lₜ, whose variance is
    huge because the terms differ by orders of magnitude (L₀ and the first KLs dominate). Instead
    draw t with probability

        pₜ ∝ √E[Lₜ²],   Σₜ pₜ = 1,   and use   L_vlb = E_{t∼pₜ}[Lₜ / pₜ]          (eq. 18),

    i.e. weight the loss of a sample at t by 1/(T·pₜ), so the estimate of the uniform-t loss
    E_{t∼U}[ℓₜ] = (1/T)·Σₜ ℓₜ stays unbiased: E_{t∼p}[ℓₜ/(T·pₜ)] = Σₜ pₜ·ℓₜ/(T·pₜ) = (1/T)·Σₜ ℓₜ.
    E[Lₜ²] is the mean square of the last ``history`` (10) values seen at each t; until every t
    has that many, t is drawn uniformly (weights 1). As in the paper's code (``improved-diffusion``'s
    ``LossSecondMomentResampler``) a fraction ``uniform_mix`` = 0.001 of uniform probability is
    mixed in, so no pₜ is 0 and no weight infinite.

    The state (the kept values) is what a resumed run needs to draw the same t: :meth:`state_dict`
    and :meth:`load_state_dict`. Non-finite values are not kept (a diverging run is stopped by the
    trainer's divergence checks, not by a broken distribution here).
    """

    def __init__(self, num_steps: int, history: int = 10, uniform_mix: float = 0.001):
        if num_steps < 1 or history < 1 or not 0 <= uniform_mix <= 1:
            raise ValueError(f"ImportanceSampler needs num_steps >= 1, history >= 1 and uniform_mix in [0, 1]; got "
                             f"{num_steps}, {history}, {uniform_mix}")
        self.num_steps, self.history, self.uniform_mix = num_steps, history, uniform_mix
        self._values: list[list[float]] = [[] for _ in range(num_steps)]
        self._full = 0  # how many t hold ``history`` values
        self._p: Tensor | None = None  # cached probabilities, dropped on every update

    @property
    def filled(self) -> bool:
        """Whether every t holds ``history`` values (before that, t is uniform)."""
        return self._full == self.num_steps

    def probabilities(self) -> Tensor:
        """pₜ (float64, (T,)): uniform until :attr:`filled`, then √(mean of the kept Lₜ²),
        normalised, mixed with ``uniform_mix`` of the uniform distribution."""
        if self._p is None:
            uniform = torch.full((self.num_steps,), 1.0 / self.num_steps, dtype=torch.float64)
            if not self.filled:
                self._p = uniform
            else:
                rms = torch.tensor(self._values, dtype=torch.float64).square().mean(dim=1).sqrt()
                total, mix = rms.sum(), self.uniform_mix
                self._p = uniform if not total > 0 else (1 - mix) * rms / total + mix * uniform
        return self._p

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n training times (float64, CPU): uniform integers (exactly :func:`sample_training_t`'s
        draw) until :attr:`filled`, then drawn from :meth:`probabilities`."""
        if not self.filled:
            return torch.randint(0, self.num_steps, (n,), generator=generator).to(torch.float64)
        return torch.multinomial(self.probabilities(), n, replacement=True, generator=generator).to(torch.float64)

    def weights(self, t: Tensor) -> Tensor:
        """1/(T·pₜ) for each time in ``t`` (float64): the factor that keeps the loss unbiased."""
        return 1.0 / (self.num_steps * self.probabilities()[torch.as_tensor(t).long().cpu()])

    def update(self, t: Tensor, values: Tensor) -> None:
        """Keep ``values[i]`` (a sample's loss before the weight, e.g. T·Lₜ) as the newest of its
        time ``t[i]``, in order, the oldest falling out after ``history``."""
        for step, value in zip(torch.as_tensor(t).long().tolist(), torch.as_tensor(values).double().tolist()):
            if not math.isfinite(value):
                continue
            kept = self._values[step]
            if len(kept) == self.history:
                kept.pop(0)
            else:
                self._full += len(kept) + 1 == self.history
            kept.append(value)
        self._p = None

    def state_dict(self) -> dict[str, Tensor]:
        """The kept values as tensors: ``values`` (T, history) float64, oldest first, and ``counts``."""
        values = torch.zeros(self.num_steps, self.history, dtype=torch.float64)
        for step, kept in enumerate(self._values):
            values[step, : len(kept)] = torch.tensor(kept, dtype=torch.float64)
        counts = torch.tensor([len(kept) for kept in self._values], dtype=torch.int64)
        return {"values": values, "counts": counts}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        values, counts = state["values"], state["counts"]
        if (tuple(values.shape) != (self.num_steps, self.history) or tuple(counts.shape) != (self.num_steps,)
                or not 0 <= int(counts.min()) <= int(counts.max()) <= self.history):
            raise ValueError(f"an importance-sampling history of shape {tuple(values.shape)} does not fit "
                             f"{self.num_steps} steps x {self.history} values")
        self._values = [values[step, : int(n)].tolist() for step, n in enumerate(counts.tolist())]
        self._full = sum(len(kept) == self.history for kept in self._values)
        self._p = None


def sample_training_t(schedule, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Training times (float64, CPU): uniform integers for discrete schedules (DDPM), EDM's
    log-normal σ (P_mean = −1.2, P_std = 1.2; Karras et al. 2022, Table 1) for the EDM schedule,
    uniform on [t_min, t_max] otherwise."""
    if schedule.is_discrete:
        return torch.randint(0, schedule.num_steps, (n,), generator=generator).to(torch.float64)
    if schedule.name == "edm":
        return torch.exp(-1.2 + 1.2 * torch.randn(n, generator=generator, dtype=torch.float64))
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return schedule.t_min + (schedule.t_max - schedule.t_min) * u


def sample_lognormal_t(schedule, n: int, generator: torch.Generator | None = None,
                       p_mean: float = -1.2, p_std: float = 1.2) -> Tensor:
    """Training times (float64, CPU) whose noise levels are EDM's log-normal ones on any schedule:
    ln σ ~ N(P_mean, P_std²) (Karras et al. 2022, Table 1 and §5: training at the levels where the
    loss can still be reduced), σ the noise level of x = x₀ + σε (√((1 − ᾱ)/ᾱ) on a VP schedule),
    mapped to t by the schedule's inverse — rounded to the nearest step of a discrete schedule — and
    kept inside [t_min, t_max]."""
    sigma = torch.exp(p_mean + p_std * torch.randn(n, generator=generator, dtype=torch.float64))
    t = schedule.t_from_sigma(sigma).clamp(schedule.t_min, schedule.t_max)
    return t.round() if schedule.is_discrete else t


def loss_weight(
    weighting: str, snr: Tensor, prediction: str, min_snr_gamma: float = 5.0, p2_k: float = 1.0, p2_gamma: float = 1.0
) -> Tensor:
    """The weight on the MSE of the chosen prediction at signal-to-noise ratio snr = ᾱ/(1 − ᾱ).

    * ``uniform``: 1 (DDPM's L_simple for ε-prediction).
    * ``min_snr``: min-SNR-γ (Hang et al. 2023): the x₀-MSE weighted by min(snr, γ); since
      ‖ε − ε̂‖² = snr·‖x₀ − x̂₀‖² and ‖v − v̂‖² = (1 + snr)·‖x₀ − x̂₀‖², the ε weight is
      min(snr, γ)/snr = min(1, γ/snr) and the v weight min(snr, γ)/(snr + 1).
    * ``p2``: perception-prioritized weighting (Choi et al. 2022): the ε-MSE weighted by
      1/(k + snr)^γ, converted to the other types the same way.
    """
    if prediction not in process.PREDICTION_TYPES:
        process.check_prediction_type(prediction)
    if weighting == "uniform":
        return torch.ones_like(snr)
    if weighting == "min_snr":
        if prediction == "epsilon":
            return torch.clamp(min_snr_gamma / snr, max=1.0)
        clipped = torch.clamp(snr, max=min_snr_gamma)
        return clipped if prediction == "x0" else clipped / (snr + 1)
    if weighting == "p2":
        w_eps = (p2_k + snr) ** (-p2_gamma)
        if prediction == "epsilon":
            return w_eps
        return w_eps * snr if prediction == "x0" else w_eps * snr / (snr + 1)
    raise ValueError(f"unknown loss weighting {weighting!r}; choose one of: {', '.join(WEIGHTINGS)}")


@dataclass
class LossOutput:
    loss: Tensor  # scalar to minimize
    mse: Tensor  # (N,) unweighted MSE of the prediction
    vlb: Tensor | None  # (N,) L_{t−1} in bits/dim (hybrid and vlb losses)
    t: Tensor  # (N,) the training times used
    per_sample: Tensor  # (N,) each sample's loss before the importance weight (ImportanceSampler.update)


def diffusion_loss(
    model,
    x0: Tensor,
    schedule,
    *,
    prediction: str = "epsilon",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    p2_k: float = 1.0,
    p2_gamma: float = 1.0,
    learned_variance: bool = False,
    vlb_weight: float = 0.001,
    loss: str | None = None,
    cond: dict | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    t_weight: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """The training loss of ``model(x_t, t, **cond)`` on a batch x₀.

    ``loss`` (:func:`resolve_loss`; default: ``hybrid`` with ``learned_variance``, else ``simple``):

    * ``simple``: weight(t)·‖target − output‖², DDPM's L_simple (Ho et al. 2020, eq. 14) under
      the chosen ``weighting``;
    * ``hybrid``: improved DDPM's L_hybrid = L_simple + λ·L_vlb (Nichol & Dhariwal 2021, eq. 16)
      with the learned variance of eq. 15 (the model returns 2×C channels: prediction, v). L_vlb's
      estimate T·L_{t−1} uses the prediction with its gradient stopped, so the vlb term trains only
      the variance; λ = ``vlb_weight`` = 0.001;
    * ``vlb``: L_vlb alone, estimated by T·L_{t−1} in bits/dim (L_{t−1} the KL of eq. 11, L₀ the
      decoder NLL at t = 0; :func:`~difflab.likelihood.vlb_terms`), with the gradient through the
      mean *and* the variance: the whole network learns the bound, as the paper's L_vlb models do
      (its code's ``RESCALED_KL``). Without ``learned_variance`` the bound uses Σ = β̃.
      ``weighting`` must be ``uniform`` (the bound has its own weights).

    ``t_weight``: per-sample factors 1/(T·pₜ) of importance-sampled times
    (:class:`ImportanceSampler`); ``per_sample`` in the output is each sample's loss before them.
    """
    process.check_prediction_type(prediction)
    loss = resolve_loss(loss, learned_variance)
    if loss != "simple" and not schedule.is_discrete:
        raise ValueError(f"the {loss} loss (the variational bound's terms) needs a discrete schedule")
    if loss == "vlb" and weighting != "uniform":
        raise ValueError(f"the vlb loss has its own weights (the bound's); weighting {weighting!r} applies to the MSE "
                         "of the simple and hybrid losses")
    n = x0.shape[0]
    t = sample_training_t(schedule, n, generator) if t is None else torch.as_tensor(t, dtype=torch.float64).cpu()
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu" if generator else x0.device)
        noise = noise.to(x0.device)
    scale, std = schedule.scale_std(t)
    x_t = process.q_sample(schedule, x0, t, noise)
    output = model(x_t, t.to(device=x0.device, dtype=x0.dtype), **(cond or {}))
    expected_channels = x0.shape[1] * (2 if learned_variance else 1)
    if output.shape[0] != n or output.shape[1] != expected_channels or output.shape[2:] != x0.shape[2:]:
        raise ValueError(
            f"the model returned shape {tuple(output.shape)} for input {tuple(x0.shape)}; expected "
            f"{expected_channels} channels" + (" (learned variance doubles them)" if learned_variance else "")
        )
    frac = None
    if learned_variance:
        output, v = output.chunk(2, dim=1)
        frac = process.variance_fraction(v)
    target = process.training_target(prediction, x0, noise, scale, std)
    mse = ((output.float() - target.float()) ** 2).reshape(n, -1).mean(dim=1)
    vlb = None
    if loss == "vlb":  # the gradient of the bound reaches the mean too
        vlb = vlb_terms(schedule, prediction, output, x0, x_t, t, frac).float()
        per_sample = schedule.num_steps * vlb
    else:
        snr = torch.exp(schedule.log_snr(t)).to(device=mse.device, dtype=mse.dtype)
        per_sample = loss_weight(weighting, snr, prediction, min_snr_gamma, p2_k, p2_gamma) * mse
        if loss == "hybrid":
            vlb = vlb_terms(schedule, prediction, output.detach(), x0, x_t, t, frac).float()
            per_sample = per_sample + vlb_weight * schedule.num_steps * vlb
    total = per_sample if t_weight is None else per_sample * torch.as_tensor(t_weight).to(per_sample)
    return LossOutput(loss=total.mean(), mse=mse.detach(), vlb=None if vlb is None else vlb.detach(), t=t,
                      per_sample=per_sample.detach())


@dataclass
class ClassifierLossOutput:
    loss: Tensor  # mean cross-entropy
    accuracy: Tensor  # fraction of the batch classified correctly (detached)
    t: Tensor


def noisy_classifier_loss(
    classifier, x0: Tensor, labels: Tensor, schedule, *, t: Tensor | None = None, noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> ClassifierLossOutput:
    """Cross-entropy of ``classifier(x_t, t)`` on xₜ ~ q(xₜ | x₀) at uniformly random t: how ADM
    trains the noisy classifier behind classifier guidance (Dhariwal & Nichol 2021, §4.1)."""
    n = x0.shape[0]
    t = sample_training_t(schedule, n, generator) if t is None else torch.as_tensor(t, dtype=torch.float64).cpu()
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu" if generator else x0.device)
        noise = noise.to(x0.device)
    x_t = process.q_sample(schedule, x0, t, noise)
    logits = classifier(x_t, t.to(device=x0.device, dtype=x0.dtype)).float()
    loss = torch.nn.functional.cross_entropy(logits, labels)
    accuracy = (logits.argmax(dim=1) == labels).float().mean().detach()
    return ClassifierLossOutput(loss=loss, accuracy=accuracy, t=t)
