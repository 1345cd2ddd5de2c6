"""Post-hoc EMA: choose the averaging length after training (Karras et al. 2024, "Analyzing and
Improving the Training Dynamics of Diffusion Models", §3 and appendix C).

**Power-function EMA.** With ``t`` the number of optimizer steps taken, the average is updated as

    θ̂(t) = β(t)·θ̂(t−1) + (1 − β(t))·θ(t),    β(t) = (1 − 1/t)^(γ+1),

which weighs the weights of step τ ≤ t in proportion to τ^γ: the profile

    p_{t,γ}(τ) = (γ + 1)·τ^γ / t^(γ+1)    on 0 < τ ≤ t.

Unlike a constant decay, its length grows with training: the profile's standard deviation is a
fixed fraction σ_rel of t, σ_rel² = (γ + 1) / ((γ + 2)²·(γ + 3)) (the paper's Eq. 3).

**Reconstruction.** Training keeps two such averages (σ_rel 0.05 and 0.10, the paper's pair) and
saves both every few steps. Any other profile p_r — another σ_rel, at the last step or an earlier
one — is then approximated by a weighted sum of the snapshots, Σ_i x_i·θ̂_i, whose profile
Σ_i x_i·p_i is closest to p_r in L² over τ: the normal equations A·x = b with A_ij = ⟨p_i, p_j⟩ and
b_i = ⟨p_i, p_r⟩, where for t_a ≤ t_b

    ⟨p_{t_a,γ_a}, p_{t_b,γ_b}⟩ = (γ_a + 1)(γ_b + 1)·(t_a/t_b)^γ_b / ((γ_a + γ_b + 1)·t_b).

Because the average is linear in the weights, the weighted sum of the snapshots is the average
with profile Σ_i x_i·p_i exactly; :func:`reconstruct` reports how far that profile is from p_r.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_checkpoint, save_checkpoint

SNAPSHOT_KIND = "posthoc_ema_snapshot"
SNAPSHOT_FOLDER = "posthoc-ema"  # inside the run folder: one checkpoint folder per snapshot
DEFAULT_SIGMA_RELS = (0.05, 0.10)  # the pair the paper tracks


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent γ ≥ 0 whose profile has relative width σ_rel: the root of
    σ_rel²·(γ + 2)²·(γ + 3) = γ + 1 (Eq. 3 solved for γ). The width falls monotonically from the
    flat profile's 1/√12 ≈ 0.289 at γ = 0 towards 0, so σ_rel must lie in between."""
    if not 0.0 < sigma_rel < 12 ** -0.5:
        raise ValueError(f"a relative EMA width sigma_rel must be in (0, {12 ** -0.5:.3f}), got {sigma_rel:g}")
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if gamma_to_sigma_rel(mid) > sigma_rel:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def gamma_to_sigma_rel(gamma: float) -> float:
    """The relative width of the profile τ^γ on (0, t]: √((γ + 1) / ((γ + 2)²·(γ + 3)))."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


class PowerEMA:
    """Power-function EMAs of a model's weights, one per σ_rel (module docstring). ``update(model,
    t)`` after the optimizer's t-th step (t ≥ 1); at t = 1 each average is the weights themselves."""

    def __init__(self, model: nn.Module, sigma_rels: Sequence[float] = DEFAULT_SIGMA_RELS):
        if not sigma_rels:
            raise ValueError("post-hoc EMA needs at least one sigma_rel")
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        self.averages = [{name: value.detach().clone() for name, value in model.state_dict().items()}
                         for _ in self.gammas]
        self.float_names = [name for name, value in self.averages[0].items() if value.is_floating_point()]
        self.other_names = [name for name, value in self.averages[0].items() if not value.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module, t: int) -> None:
        if t < 1:
            raise ValueError(f"the step count t must be >= 1, got {t}")
        current = model.state_dict()
        for gamma, average in zip(self.gammas, self.averages):
            beta = (1.0 - 1.0 / t) ** (gamma + 1.0)
            torch._foreach_lerp_([average[n] for n in self.float_names],
                                 [current[n].detach() for n in self.float_names], 1.0 - beta)
            for name in self.other_names:  # integer buffers (e.g. counters) are copied, not averaged
                average[name].copy_(current[name])

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The averages as checkpoint tensor groups ``posthoc_ema_0``, ``posthoc_ema_1``, …"""
        return {f"posthoc_ema_{k}": average for k, average in enumerate(self.averages)}

    def load(self, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore the averages from :meth:`tensors`' groups (a resumed run)."""
        for k, average in enumerate(self.averages):
            saved = groups.get(f"posthoc_ema_{k}")
            if saved is None or saved.keys() != average.keys():
                raise ValueError(f"the checkpoint has no post-hoc EMA average {k} for this model")
            for name, value in average.items():
                value.copy_(saved[name])

    def save_snapshot(self, run_folder: Path, step: int) -> Path:
        """Write the averages of ``step`` to ``RUN/posthoc-ema/step-NNNNNNN`` (an atomic checkpoint)."""
        config = {"kind": SNAPSHOT_KIND, "step": step, "sigma_rels": list(self.sigma_rels),
                  "gammas": list(self.gammas)}
        return save_checkpoint(Path(run_folder) / SNAPSHOT_FOLDER / f"step-{step:07d}", config, self.tensors())


def profile_dot(t_a: float, gamma_a: float, t_b: float, gamma_b: float) -> float:
    """⟨p_{t_a,γ_a}, p_{t_b,γ_b}⟩ = ∫ p_a(τ)·p_b(τ) dτ (module docstring), in a form that does not
    overflow for large t and γ."""
    if t_a > t_b:
        t_a, gamma_a, t_b, gamma_b = t_b, gamma_b, t_a, gamma_a
    return (gamma_a + 1) * (gamma_b + 1) * (t_a / t_b) ** gamma_b / ((gamma_a + gamma_b + 1) * t_b)


def coefficients(snapshots: Sequence[tuple[float, float]], target: tuple[float, float]) -> tuple[torch.Tensor, float]:
    """The weights x of the snapshots (t_i, γ_i) whose combined profile is nearest to the target
    (t_r, γ_r) in L², and that fit's relative error ‖Σ x_i p_i − p_r‖ / ‖p_r‖."""
    n = len(snapshots)
    a = torch.tensor([[profile_dot(*snapshots[i], *snapshots[j]) for j in range(n)] for i in range(n)],
                     dtype=torch.float64)
    b = torch.tensor([profile_dot(*s, *target) for s in snapshots], dtype=torch.float64)
    x = torch.linalg.lstsq(a, b.unsqueeze(1), rcond=None, driver="gelsd").solution.squeeze(1)
    target_norm2 = profile_dot(*target, *target)
    residual2 = max(float(x @ a @ x - 2 * x @ b + target_norm2), 0.0)
    return x, math.sqrt(residual2 / target_norm2)


def list_snapshots(run_folder: str | Path) -> list[tuple[int, Path]]:
    """The run's snapshots as (step, folder), by step."""
    folder = Path(run_folder) / SNAPSHOT_FOLDER
    found = []
    if folder.is_dir():
        for entry in folder.iterdir():
            match = re.fullmatch(r"step-(\d+)", entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), entry))
    return sorted(found)


def remove_snapshots_after(run_folder: str | Path, step: int) -> None:
    """Delete the snapshots of steps after ``step`` (a resumed run redoes those steps)."""
    import shutil

    for snap_step, folder in list_snapshots(run_folder):
        if snap_step > step:
            shutil.rmtree(folder)


def _snapshots_up_to(run_folder: str | Path, step: int | None) -> tuple[int, list[tuple[int, Path]]]:
    """(the target step, the snapshots at or before it); one clear error when there are none."""
    found = list_snapshots(run_folder)
    if not found:
        raise FileNotFoundError(f"{run_folder} has no post-hoc EMA snapshots ({SNAPSHOT_FOLDER}/): train it with "
                                "train.posthoc_ema_every set to a number of steps, e.g. --set "
                                "train.posthoc_ema_every=100")
    step = found[-1][0] if step is None else step
    if step > found[-1][0]:
        raise ValueError(f"{run_folder}'s last post-hoc EMA snapshot is of step {found[-1][0]}: an average at step "
                         f"{step} is not there to make; give --step {found[-1][0]} or less")
    used = [(s, folder) for s, folder in found if s <= step]
    if not used:
        raise ValueError(f"{run_folder} has no post-hoc EMA snapshot at or before step {step} (the first is at step "
                         f"{found[0][0]})")
    return step, used


def _gammas(folder: Path) -> list[float]:
    config, _, _ = load_checkpoint(folder, kind=SNAPSHOT_KIND, groups=[], with_extra=False)
    return [float(g) for g in config["gammas"]]


def scan_widths(run_folder: str | Path, sigma_rels: Sequence[float], step: int | None = None) -> list[str]:
    """Lines for ``difflab posthoc-ema --list``: the snapshots, and how closely each width can be made."""
    step, used = _snapshots_up_to(run_folder, step)
    profiles = [(float(s), g) for s, folder in used for g in _gammas(folder)]
    gammas = [g for s, g in profiles if s == used[-1][0]]
    lines = [f"{len(used)} snapshots of steps {used[0][0]} ... {used[-1][0]}, averages of sigma_rel "
             + ", ".join(f"{gamma_to_sigma_rel(g):.3f}" for g in gammas) + f"; made at step {step}:"]
    for sigma_rel in sigma_rels:
        _, error = coefficients(profiles, (float(step), sigma_rel_to_gamma(sigma_rel)))
        lines.append(f"  sigma_rel {sigma_rel:.3f}: profile fit error {100 * error:.1f} %")
    return lines


class Snapshots:
    """A run's snapshots up to ``step`` (default: the last one's), read once; :meth:`average` makes
    the EMA of any width from them."""

    def __init__(self, run_folder: str | Path, step: int | None = None):
        self.step, used = _snapshots_up_to(run_folder, step)
        self.count = len(used)
        self.profiles: list[tuple[float, float]] = []  # (t_i, γ_i) of each average below
        self.averages: list[dict[str, torch.Tensor]] = []
        for s, folder in used:
            config, tensors, _ = load_checkpoint(folder, kind=SNAPSHOT_KIND, with_extra=False)
            for k, gamma in enumerate(config["gammas"]):
                self.profiles.append((float(s), float(gamma)))
                self.averages.append(tensors[f"posthoc_ema_{k}"])

    def average(self, sigma_rel: float) -> tuple[dict[str, torch.Tensor], dict]:
        """The EMA of relative width ``sigma_rel`` at the step → (state dict, a record of the fit:
        σ_rel, γ, step, the number of snapshots used and the profile's relative L² error)."""
        gamma_r = sigma_rel_to_gamma(sigma_rel)
        x, error = coefficients(self.profiles, (float(self.step), gamma_r))
        state = combine(self.averages, x.tolist())
        record = {"sigma_rel": sigma_rel, "gamma": gamma_r, "step": self.step, "snapshots": self.count,
                  "profile_error": error}
        return state, record


def combine(averages: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Σ_i weights_i·averages_i, summed in float64 and returned in the averages' dtypes; integer
    buffers are the last average's."""
    state: dict[str, torch.Tensor] = {}
    for weight, average in zip(weights, averages):
        for name, value in average.items():
            state[name] = state.get(name, 0) + value.double() * weight if value.is_floating_point() else value
    last = averages[-1]
    return {name: value.to(last[name].dtype) for name, value in state.items()}


def reconstruct(run_folder: str | Path, sigma_rel: float, step: int | None = None,
                ) -> tuple[dict[str, torch.Tensor], dict]:
    """The EMA of relative width ``sigma_rel`` at ``step`` (default: the last snapshot's) from the
    run's snapshots up to that step; see :meth:`Snapshots.average`."""
    return Snapshots(run_folder, step).average(sigma_rel)
