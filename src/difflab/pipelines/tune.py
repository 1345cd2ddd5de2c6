"""Tune a checkpoint's few-step schedule (:mod:`difflab.sampling.tuning`) and find it again at
sampling time.

A tuned schedule lives in the checkpoint folder, ``checkpoint/tuned-steps/METHOD-STEPS.json``,
so it goes wherever the weights go and disappears when training writes new weights (the
checkpoint folder is replaced as a whole). ``difflab sample`` uses it when the method and
steps match, no spacing is named, and it was tuned at the same guidance scale.
"""

from __future__ import annotations

import time
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
    init: str | tuple[str, ...] = ("trailing", "generic"),
    class_index: int | None = None,
    guidance: Guidance | None = None,
    prompts: list[str] | None = None,
    reference_steps: int = 200,
    max_evals: int | None = None,
    max_seconds: float | None = None,
    progress: bool = False,
    compile: bool = False,
) -> TunedSigmas:
    """Tune ``steps`` levels of ``method`` on n calibration images (seeds SEED …), then check them
    on n fresh ones (seeds SEED + 10⁶ …). The search starts from the best of the ``init``
    spacings on the calibration images. Conditioning (classes in turn, prompts, guidance) is
    what :func:`~difflab.pipelines.generate` would use; the levels are tuned in the model's own
    space (latents for a latent model). ``compile`` runs the thousands of solves with the
    denoiser's step under ``torch.compile`` (:mod:`difflab.sampling.compiled`); ``max_seconds``
    bounds the search and the check together (:func:`~difflab.sampling.tuning.tune_sigmas`)."""
    guidance = guidance or Guidance()
    job = plan(model, n, SamplerSettings.resolve(model, method, steps), seed=seed, class_index=class_index,
               guidance=guidance, prompts=prompts, compile=compile)
    cond = job.cond(range(n))
    tuned = tune_sigmas(job.denoiser, starting_noise(model, job.seeds), method=method, steps=steps, init=init,
                        cond=cond, reference_steps=reference_steps, max_evals=max_evals, max_seconds=max_seconds,
                        progress=progress)
    if tuned.evaluations:  # with none (max_seconds spent on the reference solve) there is nothing to check
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


# -- tuned levels shipped with every trained run (`difflab train`, train.tune_steps) ----------
SHIPPED_STEPS = 10  # tuned besides the run's own sample.steps: the few-step budget users reach for first
BUDGET_SHARE = 0.1  # of the training's wall clock, when train.tune_seconds is null
# below this the default budget is skipped: on 2 CPU cores the reference solves of a 1-2 M-parameter
# guided model take ~25 s per step count, and the search needs tens of solves beyond them
MIN_BUDGET_S = 60.0
REFERENCE_STEPS = 100  # the shipped search's reference solve (UniPC-3, log-SNR): ~1e-6 off, far below the errors tuned
CALIBRATION_IMAGES = 64  # as `difflab tune-steps --n`


def shipped_step_counts(requested, sample_steps: int) -> tuple[int, ...]:
    """The step counts ``difflab train`` tunes after training: ``train.tune_steps``, or by
    default the run's ``sample.steps`` and 10 (counts below 2 have no level to choose)."""
    counts = requested if requested is not None else (sample_steps, SHIPPED_STEPS)
    return tuple(sorted({int(c) for c in counts if c >= 2}))


def shipped_budget(tune_seconds: float | None, trained_seconds: float) -> float | None:
    """Seconds the tuning after training may take: ``train.tune_seconds``, or by default a tenth
    of the training's own wall clock; None (skip) when the default comes to under 60 s."""
    if tune_seconds is not None:
        return float(tune_seconds)
    budget = BUDGET_SHARE * trained_seconds
    return budget if budget >= MIN_BUDGET_S else None


def ship_tuned_levels(checkpoint: str | Path, step_counts: tuple[int, ...], seconds: float, *,
                      device: str | torch.device = "cpu", prompts: list[str] | None = None,
                      n: int = CALIBRATION_IMAGES) -> list[str]:
    """Tune the checkpoint's own sampler (its ``sample.method``, from its spacing or the generic
    levels of :mod:`~difflab.sampling.generic_levels`, whichever starts better) at each
    of ``step_counts`` within ``seconds`` in all, and write every schedule that beats that spacing
    on fresh noise into the checkpoint, where ``difflab sample`` and :class:`~difflab.Pipeline`
    find it. ``prompts``: captions to tune a text-conditioned model with. Returns one line per
    step count, for the log."""
    model = DiffusionModel.load(checkpoint, device=device)
    lines, start = [], time.perf_counter()
    for i, steps in enumerate(step_counts):
        settings = SamplerSettings.resolve(model, None, steps)  # a stochastic method: tune_sigmas refuses it
        starts = (settings.spacing, "generic")  # the run's spacing, or the generic levels if they start better
        share = (seconds - (time.perf_counter() - start)) / (len(step_counts) - i)  # what earlier ones left
        tuned = tune_steps(model, method=settings.method, steps=steps, n=n, prompts=prompts, init=starts,
                           reference_steps=REFERENCE_STEPS, max_seconds=share)
        if not tuned.evaluations:
            lines.append(f"{settings.method}, {steps} steps: not tuned: its {max(share, 0.0):.0f} s went to the "
                         f"{REFERENCE_STEPS}-step reference solve (raise train.tune_seconds)")
            continue
        what = (f"{settings.method}, {steps} steps ({tuned.evaluations} solves of {n} images): error against a "
                f"{tuned.reference_steps}-step solve on fresh noise {tuned.heldout_error_init:.3g} with {tuned.init} "
                f"spacing, {tuned.heldout_error:.3g} tuned")
        if tuned.heldout_error < tuned.heldout_error_init:
            lines.append(f"{what}; written to {tuned.save(tuned_path(model, settings.method, steps))}")
        else:
            lines.append(f"{what}; not written (no better than {tuned.init} spacing)")
    return lines
