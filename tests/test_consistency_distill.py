"""Consistency distillation (``difflab distill --method consistency``,
training/objectives/consistency.py) and multistep consistency sampling (sampling/consistency.py):
the sampler against diffusers' LCMScheduler, the target against a hand-made one, the target
network's EMA, the pseudo-Huber loss, the loss going down, and the distilled run as a normal run
that samples in any of its steps and refuses every other sampler."""

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import Pipeline
from difflab.checkpoint import load_state
from difflab.cli import main as cli
from difflab.data.load import load_dataset
from difflab.models import build_model
from difflab.sampling import consistency, consistency_levels, get_sigmas
from difflab.sampling.ddim import ddim
from difflab.training.config import ConfigError
from difflab.training.objectives import ConsistencyDistillationObjective, TrainingData
from difflab.training.objectives.consistency import default_huber_c, pseudo_huber
from difflab.training.trainer import train
from helpers import distillation_batch, perturbed, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A class-conditional tiny U-Net trained with label dropout (so it can be guided) for a few steps."""
    out = tmp_path_factory.mktemp("teacher")
    train(tiny_config(out, "train.steps=3", "diffusion.cond_drop_prob=0.2"), progress=False)
    return out


def objective(teacher, tmp_path, *extra):
    config = tiny_config(tmp_path, "diffusion.cond_drop_prob=0.2", f"distill.teacher={teacher}",
                         "distill.method=consistency", "distill.levels=6", "distill.steps=2", *extra)
    dataset = load_dataset("digits")
    return ConsistencyDistillationObjective(config, TrainingData(dataset, dataset.images, None, torch.device("cpu")))


def test_the_sampler_is_diffusers_lcm_scheduler_without_its_boundary_skip():
    """LCMScheduler (Luo et al. 2023) with a timestep scaling so large that c_skip ≈ 0, c_out ≈ 1 is
    Algorithm 1 of Song et al.; the same x̂₀ function and the same noise draws give the same images."""
    from diffusers import LCMScheduler

    scheduler = LCMScheduler(timestep_scaling=1e7, prediction_type="sample")
    scheduler.set_timesteps(4)
    alphas = scheduler.alphas_cumprod.double()
    mean, std = 0.3, 0.5

    def x0_of(x, sigma):  # the exact denoiser of N(mean, std²) in σ-space
        return (std**2 * x + sigma**2 * mean) / (std**2 + sigma**2)

    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(7)
    sample = z.clone()
    for t in scheduler.timesteps:
        a = float(alphas[t])
        x0 = x0_of(sample.double() / math.sqrt(a), math.sqrt((1 - a) / a)).float()
        sample = scheduler.step(x0, t, sample, generator=g, return_dict=False)[0]

    sigmas = [math.sqrt((1 - float(alphas[t])) / float(alphas[t])) for t in scheduler.timesteps] + [0.0]
    x = z / math.sqrt(float(alphas[scheduler.timesteps[0]]))
    ours = consistency(lambda x, s: x0_of(x.double(), s).float(), x, torch.tensor(sigmas, dtype=torch.float64),
                       noise_source=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, sample, rtol=1e-5, atol=1e-5)


def test_sampling_levels_come_from_the_training_levels():
    levels = [80.0, 40.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.0]
    assert consistency_levels(levels, 1).tolist() == [80.0, 0.0]
    assert consistency_levels(levels, 2).tolist() == [80.0, 5.0, 0.0]
    assert consistency_levels(levels, 8).tolist() == levels
    for bad in (0, 9):
        with pytest.raises(ValueError, match="samples with 1 to 8 steps"):
            consistency_levels(levels, bad)


def test_pseudo_huber_is_its_closed_form():
    a, b = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    c = 0.01
    expected = torch.sqrt(((a - b) ** 2).sum(dim=(1, 2, 3)) + c**2) - c
    torch.testing.assert_close(pseudo_huber(a, b, c), expected)
    assert default_huber_c((3, 32, 32)) == pytest.approx(0.03, abs=5e-4)  # iCT's c at CIFAR-10's size
    # small errors: half the squared error over c; large: the error's norm
    small = torch.full((1, 4), 1e-4)
    assert float(pseudo_huber(small, torch.zeros(1, 4), 1.0)) == pytest.approx(4e-8 / 2, rel=1e-3)


@pytest.mark.parametrize("guided", [False, True])
def test_the_target_is_the_target_networks_x0_after_one_teacher_ddim_step(teacher, tmp_path, guided):
    obj = objective(teacher, tmp_path, *([] if guided else ["distill.guidance_range=null"]))
    perturbed(obj.teacher.network)
    model = perturbed(build_model(obj.model_spec()), seed=3)
    obj.attach(model)
    assert obj.sigmas.tolist() == get_sigmas(obj.schedule, 6, "trailing").tolist() and obj.sigmas[-1] == 0
    w = 3.0
    x0, noise, labels, teacher_denoiser = distillation_batch(obj, guided, w)
    target_denoiser = obj.teacher.denoiser().with_model(obj.target_network.shadow)
    cond = {"class_labels": labels, **({"guidance_scale": torch.full((5,), w)} if guided else {})}
    for i in range(len(obj.sigmas) - 1):
        sigma, sigma_next = float(obj.sigmas[i]), float(obj.sigmas[i + 1])
        x = x0 + sigma * noise
        y = obj.target(x, torch.full((5,), i), {"class_labels": labels},
                          torch.full((5,), w, dtype=torch.float64) if guided else None)
        step = ddim(teacher_denoiser.bind(class_labels=labels), x, torch.tensor([sigma, sigma_next]))
        expected = step if sigma_next == 0 else target_denoiser(step, torch.full((5,), sigma_next), **cond)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    # rows at different levels in one batch: each its own
    rows = torch.tensor([0, 5, 2, 5, 4])
    x = x0 + obj.sigmas[rows].float().view(-1, 1, 1, 1) * noise
    mixed = obj.target(x, rows, {"class_labels": labels}, None if not guided else torch.full((5,), w,
                                                                                               dtype=torch.float64))
    for r in range(5):
        alone = obj.target(x[r:r + 1], rows[r:r + 1], {"class_labels": labels[r:r + 1]},
                              None if not guided else torch.full((1,), w, dtype=torch.float64))
        torch.testing.assert_close(mixed[r:r + 1], alone, rtol=1e-5, atol=1e-5)


def test_the_target_network_is_an_ema_of_the_student(teacher, tmp_path):
    obj = objective(teacher, tmp_path, "distill.target_ema=0.9")
    model = build_model(obj.model_spec())
    obj.attach(model)
    teacher_weights = obj.teacher.network.state_dict()
    assert all(torch.equal(obj.target_network.shadow.state_dict()[k], v) for k, v in teacher_weights.items())
    before = {k: v.clone() for k, v in obj.target_network.shadow.state_dict().items()}
    perturbed(model, seed=4)
    x0 = torch.zeros(2, 1, 8, 8)
    obj.draw(x0, torch.arange(2), 1, torch.Generator().manual_seed(0))
    for (k, old), new in zip(before.items(), model.state_dict().values()):
        if old.is_floating_point():
            torch.testing.assert_close(obj.target_network.shadow.state_dict()[k], 0.9 * old + 0.1 * new)
    state = obj.state_dict()
    assert state and all(k.startswith("target.") for k in state)
    fresh = objective(teacher, tmp_path)
    fresh.attach(build_model(fresh.model_spec()))
    fresh.load_state_dict(state)
    restored, saved = fresh.target_network.shadow.state_dict(), obj.target_network.shadow.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in restored.items())
    with pytest.raises(ValueError, match="no consistency target network"):
        fresh.load_state_dict({})


def test_the_loss_goes_down(teacher, tmp_path):
    config = tiny_config(tmp_path / "student", "diffusion.cond_drop_prob=0.0", f"distill.teacher={teacher}",
                         "distill.method=consistency", "distill.levels=8", "distill.steps=2", "train.steps=40",
                         "optim.batch_size=64", "optim.lr=2e-3", "train.checkpoint_every=1000",
                         "train.sample_every=40")
    train(config, progress=False, objective=ConsistencyDistillationObjective)
    assert (tmp_path / "student" / "samples" / "step-0000040.png").is_file()  # previewed with 2 consistency steps
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses


def test_a_consistency_run_samples_in_any_of_its_steps_through_the_cli_and_refuses_other_samplers(
        teacher, tmp_path, capsys):
    out = tmp_path / "student"
    args = ["distill", str(teacher), "--method", "consistency", "--steps", "2", "--levels", "6",
            "--iterations-per-round", "3", "--batch-size", "8", "--out", str(out), "--no-progress"]
    assert cli(args + ["--seconds", "1e-3"]) == 0  # stops after its second step; --resume finishes
    assert "time budget reached" in capsys.readouterr().out
    config, tensors, extra = load_state(out, with_extra=True)
    assert config["step"] == 2 and any(k.startswith("target.") for k in extra["objective"])
    assert cli(args) == 2
    assert "already holds a distillation: give --resume" in capsys.readouterr().err
    assert cli(args + ["--resume"]) == 0
    config = load_state(out, groups=[], with_extra=False)[0]
    distilled = config["distilled"]
    assert config["step"] == 3 and config["model"]["guidance_embed"]
    assert config["train_config"]["sample"]["method"] == "consistency"
    assert distilled["method"] == "consistency" and distilled["steps"] == 2 and len(distilled["levels"]) == 7
    assert distilled["sigmas"] == consistency_levels(distilled["levels"], 2).tolist()

    # the default steps, then 1 and 6; a PNG remakes its image to the bit, through the CLI and the Python API
    for steps in ([], ["--steps", "1"], ["--steps", "6"]):
        assert cli(["sample", str(out), "--n", "3", "--seed", "5", "--class", "2", "--guidance-scale", "3",
                    *steps, "--out", str(tmp_path / "s")]) == 0
        png = tmp_path / "s" / "images" / sorted(os.listdir(tmp_path / "s" / "images"))[1]
        record = json.loads(Image.open(png).info["difflab"])
        assert record["method"] == "consistency" and record["steps"] == (int(steps[1]) if steps else 2)
        assert cli(["sample", "--from-png", str(png), "--out", str(tmp_path / "again")]) == 0
        again = tmp_path / "again" / "images" / os.listdir(tmp_path / "again" / "images")[0]
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(again)))
        images = Pipeline.load(out, device="cpu")(class_label=2, n=3, seed=5, guidance_scale=3.0,
                                                  steps=int(steps[1]) if steps else None)
        assert np.array_equal(np.asarray(images[1]), np.asarray(Image.open(png)))
    capsys.readouterr()

    for flags in (["--steps", "7"], ["--method", "ddim"], ["--spacing", "karras"], ["--eta", "0"]):
        assert cli(["sample", str(out), "--n", "1", "--out", str(tmp_path / "bad"), *flags]) == 2
        err = capsys.readouterr().err
        assert "consistency-distilled on 6 noise levels" in err and "--steps 1 to 6" in err, err
        assert len(err.strip().splitlines()) == 1
    assert cli(["sample", str(out), "--n", "1", "--guidance-scale", "9", "--out", str(tmp_path / "bad")]) == 2
    assert "distilled for guidance scales in [1, 5]" in capsys.readouterr().err


def test_bad_consistency_settings_are_one_line(teacher, tmp_path, capsys):
    base = ["distill", str(teacher), "--method", "consistency", "--out", str(tmp_path / "x")]
    for flags, message in ((["--steps", "8", "--levels", "6"], "--steps must be in 1 ... --levels (6)"),
                           (["--steps", "2", "--start-steps", "8"], "--start-steps belongs to progressive")):
        assert cli(base + flags) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ConfigError, match="distill.steps .* must be at most distill.levels"):
        objective(teacher, tmp_path, "distill.steps=9")
    with pytest.raises(ConfigError, match="distill.method"):
        objective(teacher, tmp_path, "distill.method=magic")
