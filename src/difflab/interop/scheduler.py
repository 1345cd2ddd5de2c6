"""diffusers' scheduler config ↔ difflab's noise schedule, parametrisation and sampling defaults.

A diffusers ``scheduler/scheduler_config.json`` mixes three things difflab keeps apart: the
training noise schedule (``beta_schedule``, ``beta_start``, ``beta_end``, ``num_train_timesteps``,
``trained_betas``, ``rescale_betas_zero_snr``: Lin et al. 2024's zero terminal SNR), what the
network predicts (``prediction_type``, ``variance_type``) and how to sample by default (the class,
``timestep_spacing``). The mapping:

==============================  ==========================================================
diffusers                       difflab
==============================  ==========================================================
``beta_schedule: linear``       schedule ``linear`` (DDPM, Ho et al. 2020)
``beta_schedule: scaled_linear``  schedule ``scaled_linear`` (LDM / Stable Diffusion)
``beta_schedule: squaredcos_cap_v2``  schedule ``cosine`` (improved DDPM, s = 0.008, β ≤ 0.999)
``beta_schedule: sigmoid``      schedule ``sigmoid``
``trained_betas``               schedule ``discrete`` with those betas
``rescale_betas_zero_snr``      ``zero_terminal_snr: true``
``prediction_type``             ``epsilon`` / ``v`` (``v_prediction``) / ``x0`` (``sample``)
``variance_type: learned_range``  ``learned_variance`` (improved DDPM's interpolation)
``timestep_spacing``            ``sample.spacing`` (``leading``, ``trailing``, ``linspace``)
scheduler class                 ``sample.method`` (DDIM → ddim, Euler → euler, DPM-Solver++ → dpmpp_2m, …)
==============================  ==========================================================

``steps_offset`` (1 in Stable Diffusion 1.x's config) shifts diffusers' leading timesteps by one
of 1000; difflab's ``leading`` spacing has no offset, a difference far below sampling noise.
"""

from __future__ import annotations

from collections.abc import Mapping

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine",
                  "sigmoid": "sigmoid"}
PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "x0"}
METHODS = {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm", "EulerDiscreteScheduler": "euler",
           "EulerAncestralDiscreteScheduler": "euler_ancestral", "HeunDiscreteScheduler": "heun",
           "DPMSolverMultistepScheduler": "dpmpp_2m", "UniPCMultistepScheduler": "unipc",
           "PNDMScheduler": "dpmpp_2m", "LMSDiscreteScheduler": "dpmpp_2m"}  # no PNDM/LMS here: the nearest


def schedule_from_diffusers(config: Mapping) -> dict:
    """difflab's view of a diffusers scheduler config.

    Returns:
        ``{"schedule": …, "prediction": …, "learned_variance": …, "sample": {"method", "spacing"}}``,
        the schedule as :func:`difflab.schedules.schedule_from_config` reads it.

    Raises:
        ValueError: naming a setting difflab has no equivalent of.
    """
    steps = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        schedule = {"name": "discrete", "betas": [float(b) for b in config["trained_betas"]]}
    else:
        kind = config.get("beta_schedule", "linear")
        if kind not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule={kind!r} has no difflab equivalent; difflab maps "
                             f"{', '.join(BETA_SCHEDULES)} and trained_betas")
        schedule = {"name": BETA_SCHEDULES[kind], "num_steps": steps}
        if kind != "squaredcos_cap_v2":
            schedule.update(beta_start=float(config.get("beta_start", 1e-4)),
                            beta_end=float(config.get("beta_end", 0.02)))
    if config.get("rescale_betas_zero_snr"):
        schedule["zero_terminal_snr"] = True
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction_type={prediction!r} has no difflab equivalent; difflab maps "
                         f"{', '.join(PREDICTIONS)}")
    variance = config.get("variance_type") or "fixed_small"
    if variance not in ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned_range"):
        raise ValueError(f"variance_type={variance!r} has no difflab equivalent; difflab maps fixed variances "
                         f"and learned_range (improved DDPM's interpolation)")
    spacing = config.get("timestep_spacing", "leading")
    return {
        "schedule": schedule, "prediction": PREDICTIONS[prediction],
        "learned_variance": variance == "learned_range",
        "sample": {"method": METHODS.get(config.get("_class_name", ""), "ddim"),
                   "spacing": spacing if spacing in ("leading", "trailing", "linspace") else "leading"},
    }


def schedule_to_diffusers(schedule: Mapping, prediction: str, learned_variance: bool = False,
                          spacing: str = "trailing", clip_sample: bool = False) -> dict:
    """A ``DDIMScheduler`` config for a difflab model's schedule and parametrisation; ``clip_sample``:
    clip x̂₀ to [−1, 1] as difflab does for pixel models (not for latents).

    Raises:
        ValueError: a continuous-time schedule (``vp``, ``ve``, ``edm``, …), which diffusers'
            discrete schedulers cannot express.
    """
    schedule = dict(schedule)
    name = schedule.pop("name")
    config = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.42.1",
              "num_train_timesteps": int(schedule.get("num_steps", 1000)), "clip_sample": clip_sample,
              "set_alpha_to_one": True, "steps_offset": 0,
              "prediction_type": {v: k for k, v in PREDICTIONS.items()}[prediction],
              "timestep_spacing": spacing if spacing in ("leading", "trailing", "linspace") else "trailing",
              "rescale_betas_zero_snr": bool(schedule.pop("zero_terminal_snr", False))}
    if learned_variance:
        config["variance_type"] = "learned_range"
    inverse = {v: k for k, v in BETA_SCHEDULES.items()}
    if name == "discrete":
        config["trained_betas"] = list(schedule["betas"])
        config["num_train_timesteps"] = len(schedule["betas"])
    elif name == "cosine" and (schedule.get("s", 0.008), schedule.get("max_beta", 0.999)) != (0.008, 0.999):
        raise ValueError(f"diffusers' squaredcos_cap_v2 is the cosine schedule with s=0.008, max_beta=0.999; "
                         f"this model's has s={schedule.get('s')}, max_beta={schedule.get('max_beta')}")
    elif name in inverse:
        config["beta_schedule"] = inverse[name]
        if name != "cosine":
            config.update(beta_start=schedule.get("beta_start"), beta_end=schedule.get("beta_end"))
    else:
        raise ValueError(f"diffusers' discrete schedulers have no equivalent of difflab's {name!r} schedule "
                         f"(continuous time); export models trained on a discrete schedule")
    return config
