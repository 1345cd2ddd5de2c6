"""Training losses: the MSE of an ε / x₀ / v prediction under a per-timestep weighting, and
improved DDPM's hybrid loss with a learned variance.

One training step (DDPM Algorithm 1): draw t and ε, form xₜ = s·x₀ + d·ε, ask the network for
its prediction, compare with the target of its type, weight by t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import process
from .likelihood import vlb_terms

WEIGHTINGS = ("uniform", "min_snr", "p2")


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
    vlb: Tensor | None  # (N,) L_{t−1} in bits/dim (learned variance only)
    t: Tensor  # (N,) the training times used


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
    cond: dict | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """The training loss of ``model(x_t, t, **cond)`` on a batch x₀.

    With ``learned_variance`` the model returns 2×C channels (prediction, variance output v) and
    the loss is improved DDPM's L_hybrid = L_simple + λ·L_vlb (Nichol & Dhariwal 2021, §3.1):
    L_vlb's estimate T·L_{t−1} uses the prediction with its gradient stopped, so the vlb term
    trains only the variance; λ = ``vlb_weight`` = 0.001.
    """
    process.check_prediction_type(prediction)
    if learned_variance and not schedule.is_discrete:
        raise ValueError("the hybrid loss with learned variance needs a discrete schedule")
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
        frac = (v + 1) / 2
    target = process.training_target(prediction, x0, noise, scale, std)
    mse = ((output.float() - target.float()) ** 2).reshape(n, -1).mean(dim=1)
    snr = torch.exp(schedule.log_snr(t)).to(device=mse.device, dtype=mse.dtype)
    weight = loss_weight(weighting, snr, prediction, min_snr_gamma, p2_k, p2_gamma)
    loss = weight * mse
    vlb = None
    if learned_variance:
        vlb = vlb_terms(schedule, prediction, output.detach(), x0, x_t, t, frac).float()
        loss = loss + vlb_weight * schedule.num_steps * vlb
    return LossOutput(loss=loss.mean(), mse=mse.detach(), vlb=None if vlb is None else vlb.detach(), t=t)



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
