"""Tune a checkpoint's few-step schedule (:mod:`difflab.sampling.tuning`) and find it again at
sampling time.

A tuned schedule lives in the checkpoint folder, ``checkpoint/tuned-steps/METHOD-STEPS.json``,
so it goes wherever the weights go and disappears when training writes new weights (the
checkpoint folder is replaced as a whole). ``difflab sample`` uses it when the method and
steps match, no spacing is named, and it was tuned at the same guidance scale.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..sampling import NoiseSource
from ..sampling.tuning import TunedSigmas, tune_sigmas
from .generate import SamplerSettings, plan
from .guidance_policy import Guidance, guidance_scale
from .loading import DiffusionModel

TUNED_FOLDER = "tuned-steps"
HELDOUT_OFFSET = 1_000_000  # held-out check noise: seeds SEED + 10⁶ …


def tuned_path(model: DiffusionModel, method: str, steps: int) -> Path:
    if model.path is None:
        raise ValueError("this model was not loaded from a checkpoint folder: give the tuned schedule's path")
    return model.path / TUNED_FOLDER / f"{method}-{steps}.json"


def tune_steps(
    model: DiffusionModel,
    *,
    method: str,
    steps: int,
    n: int = 64,
    seed: int = 10_000_000,
    init: str = "trailing",
    class_index: int | None = None,
    guidance: Guidance | None = None,
    prompts: list[str] | None = None,
    reference_steps: int = 200,
    max_evals: int | None = None,
    progress: bool = False,
    compile: bool = False,
) -> TunedSigmas:
    """Tune ``steps`` levels of ``method`` on n calibration images (seeds SEED …), then check them
    on n fresh ones (seeds SEED + 10⁶ …). Conditioning (classes in turn, prompts, guidance) is
    what :func:`~difflab.pipelines.generate` would use; the levels are tuned in the model's own
    space (latents for a latent model). ``compile`` runs the thousands of solves with the
    denoiser's step under ``torch.compile`` (:mod:`difflab.sampling.compiled`)."""
    guidance = guidance or Guidance()
    job = plan(model, n, SamplerSettings.resolve(model, method, steps), seed=seed, class_index=class_index,
               guidance=guidance, prompts=prompts, compile=compile)
    cond = job.cond(range(n))
    tuned = tune_sigmas(job.denoiser, starting_noise(model, job.seeds), method=method, steps=steps, init=init,
                        cond=cond, reference_steps=reference_steps, max_evals=max_evals, progress=progress)
    heldout = starting_noise(model, [s + HELDOUT_OFFSET for s in job.seeds])
    tuned.check(job.denoiser, heldout, cond=cond)
    tuned.context = {"guidance_scale": guidance_scale(model, guidance), "checkpoint_step": model.record.step,
                     "calibration_images": n}
    return tuned


def starting_noise(model: DiffusionModel, seeds: list[int]):
    """The starting noise :func:`~difflab.pipelines.generate` gives images of these seeds."""
    return NoiseSource(seeds=seeds)(torch.empty((len(seeds), *model.image_shape), device=model.device))


def find_tuned(model: DiffusionModel, method: str, steps: int,
               guidance: Guidance | None) -> tuple[TunedSigmas | None, str | None]:
    """The checkpoint's tuned schedule for ``method`` at ``steps`` if there is one for this
    guidance scale, else None; and, when a file exists but does not fit, why it is not used."""
    if model.path is None:
        return None, None
    path = tuned_path(model, method, steps)
    if not path.is_file():
        return None, None
    tuned = TunedSigmas.load(path)
    want = guidance_scale(model, guidance or Guidance())
    have = tuned.context.get("guidance_scale", 1.0)
    if abs(have - want) > 1e-9:
        return None, (f"not using the tuned schedule {path}: it was tuned at guidance scale {have:g}, "
                      f"this run uses {want:g} (re-run `difflab tune-steps --guidance-scale {want:g}`)")
    return tuned, None
