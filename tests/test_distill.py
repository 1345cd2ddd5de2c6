"""Progressive distillation (``difflab distill``, training/objectives/distill.py): the target's
algebra, the loss going down, the w input's zero initialisation, and the distilled run as a normal
run that samples only on the grid it learned."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import Pipeline
from difflab.checkpoint import load_state
from difflab.cli import main as cli
from difflab.data.load import load_dataset
from difflab.denoiser import Denoiser
from difflab.device import memory_format
from difflab.models import build_model
from difflab.sampling.ddim import ddim
from difflab.training.config import ConfigError
from difflab.training.objectives import DistillationObjective, TrainingData
from difflab.training.objectives.distill import distillation_target
from difflab.training.trainer import train
from helpers import distillation_batch, perturbed, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

TEACHER_STEPS = 3


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A class-conditional tiny U-Net trained with label dropout (so it can be guided) for a few steps."""
    out = tmp_path_factory.mktemp("teacher")
    train(tiny_config(out, f"train.steps={TEACHER_STEPS}", "diffusion.cond_drop_prob=0.2"), progress=False)
    return out


def objective(teacher, tmp_path, *extra):
    """The distillation objective of a round with a 4-step teacher grid, built as the trainer builds it."""
    config = tiny_config(tmp_path, "diffusion.cond_drop_prob=0.2", f"distill.teacher={teacher}", "distill.steps=2",
                         *extra)
    dataset = load_dataset("digits")
    return DistillationObjective(config, TrainingData(dataset, dataset.images, None, torch.device("cpu")))


@pytest.mark.parametrize("guided", [False, True])
def test_one_step_to_the_target_lands_where_the_teachers_two_ddim_steps_do(teacher, tmp_path, guided):
    obj = objective(teacher, tmp_path, *([] if guided else ["distill.guidance_range=null"]))
    perturbed(obj.teacher.network)  # every layer away from its (zero) initialisation
    assert (obj.guidance_range is not None) == guided
    w = 3.0
    x0, noise, labels, teacher_denoiser = distillation_batch(obj, guided, w)
    for i in range(len(obj.sigmas) - 1):
        rows = torch.full((5,), i)
        sigma, mid, end = (float(obj.teacher_sigmas[2 * i + k]) for k in range(3))
        x = x0 + sigma * noise
        target = obj.target(x, rows, {"class_labels": labels}, torch.full((5,), w, dtype=torch.float64) if guided
                            else None)
        # the teacher's two DDIM steps, by the sampler itself
        two = ddim(teacher_denoiser.bind(class_labels=labels), x, torch.tensor([sigma, mid, end]))
        # one DDIM step of a "student" whose x̂₀ is the target
        student = Denoiser(lambda x_t, t, x0=target: x0, obj.schedule, prediction="x0")
        one = ddim(student.bind(), x, torch.tensor([sigma, end]))
        torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(two, ddim(teacher_denoiser.bind(class_labels=labels), x, torch.tensor([sigma, end])))
        assert target.abs().max() <= 1 + 1e-5  # a convex combination of the teacher's clipped x̂₀


def test_the_target_is_the_papers_in_z_space():
    """x̃ = (z'' − (σ''/σ) z) / (α'' − (σ''/σ) α) of Salimans & Ho, with z = α·x and σ_z = α·σ (VP)."""
    g = torch.Generator().manual_seed(1)
    x, x_next = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    sigma, sigma_next = torch.tensor([2.0, 0.7, 0.3], dtype=torch.float64), torch.tensor([0.9, 0.2, 0.0],
                                                                                        dtype=torch.float64)
    alpha, alpha_next = (1 + sigma**2) ** -0.5, (1 + sigma_next**2) ** -0.5
    sz, sz_next = alpha * sigma, alpha_next * sigma_next
    z, z_next = alpha[:, None] * x.double(), alpha_next[:, None] * x_next.double()
    ratio = (sz_next / sz)[:, None]
    paper = (z_next - ratio * z) / (alpha_next[:, None] - ratio * alpha[:, None])
    torch.testing.assert_close(distillation_target(x, x_next, sigma, sigma_next).double(), paper, rtol=1e-5,
                               atol=1e-5)


def test_the_w_input_starts_at_zero_so_the_student_is_the_teachers_conditional_network(teacher, tmp_path):
    obj = objective(teacher, tmp_path)
    perturbed(obj.teacher.network)
    torch.manual_seed(0)
    student = memory_format(build_model(obj.model_spec()), True)  # channels-last, as the teacher was loaded
    obj.attach(student)
    student.eval()
    g = torch.Generator().manual_seed(2)
    x, t, labels = torch.randn(4, 1, 8, 8, generator=g), torch.tensor([3.0, 40.0, 70.0, 99.0]), torch.arange(4)
    expected = obj.teacher.network(x, t, labels)
    for w in (1.0, 2.5, 5.0, 0.0):
        got = student(x, t, labels, guidance_scale=torch.full((4,), w))
        assert torch.equal(got, expected)
    # and it is an input: the gradient reaches the embedding's zero layer
    student(x, t, labels, guidance_scale=torch.full((4,), 3.0)).square().sum().backward()
    assert student.guidance_embed.mlp[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="distilled for guided sampling: pass guidance_scale"):
        student(x, t, labels)
    with pytest.raises(ValueError, match="without a guidance input"):
        obj.teacher.network(x, t, labels, guidance_scale=torch.ones(4))


@pytest.mark.parametrize("base", [
    {"name": "dit", "in_channels": 1, "image_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 1, "num_heads": 2,
     "num_classes": 3},
    {"name": "unet", "in_channels": 1, "image_size": 8, "model_channels": 8, "channel_mult": [1, 2],
     "num_res_blocks": 1, "attention_resolutions": [4], "num_heads": 1, "norm_groups": 4, "num_classes": 3},
], ids=["dit", "unet"])
def test_guidance_embed_off_is_bit_identical_to_no_option(base):
    torch.manual_seed(0)
    plain = build_model(base)
    torch.manual_seed(0)
    off = build_model({**base, "guidance_embed": False})
    torch.manual_seed(0)
    on = build_model({**base, "guidance_embed": True})
    assert plain.state_dict().keys() == off.state_dict().keys()
    assert all(torch.equal(v, off.state_dict()[k]) for k, v in plain.state_dict().items())
    # with it on, the other weights are drawn as without it
    assert all(torch.equal(v, on.state_dict()[k]) for k, v in plain.state_dict().items())


def test_the_loss_goes_down(teacher, tmp_path):
    config = tiny_config(tmp_path / "student", "diffusion.cond_drop_prob=0.0", f"distill.teacher={teacher}",
                         "distill.steps=2", "train.steps=40", "optim.batch_size=64", "optim.lr=2e-3",
                         "train.checkpoint_every=1000", "train.sample_every=40")
    train(config, progress=False, objective=DistillationObjective)
    # the preview sampled on the student's grid, whatever the config's sample section says (unipc_3, 4 steps)
    assert (tmp_path / "student" / "samples" / "step-0000040.png").is_file()
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses


def test_a_distilled_run_samples_through_the_cli_and_refuses_other_grids(teacher, tmp_path, capsys):
    out = tmp_path / "student"
    args = ["distill", str(teacher), "--steps", "2", "--start-steps", "8", "--iterations-per-round", "3",
            "--batch-size", "8", "--out", str(out), "--no-progress"]
    # a budget that ends the first round after its second step (the clock starts after the first, and a
    # step takes more than 1 ms); --resume finishes the job
    assert cli(args + ["--seconds", "1e-3"]) == 0
    assert "time budget reached in the round of 4 steps" in capsys.readouterr().out
    assert load_state(out / "rounds" / "4-steps", groups=[], with_extra=False)[0]["step"] == 2
    assert cli(args) == 2
    assert "already holds a distillation: give --resume" in capsys.readouterr().err
    assert cli(args + ["--resume"]) == 0
    config = load_state(out, groups=[], with_extra=False)[0]
    assert config["kind"] == "diffusion" and config["step"] == 3 and config["model"]["guidance_embed"]
    distilled = config["distilled"]
    assert distilled["method"] == "ddim" and distilled["steps"] == 2 and distilled["guidance_range"] == [1.0, 5.0]
    four = load_state(out / "rounds" / "4-steps", groups=[], with_extra=False)[0]["distilled"]
    assert distilled["sigmas"] == four["sigmas"][::2] and distilled["sigmas"][-1] == 0.0
    assert distilled["teacher"]["path"] == str((out / "rounds" / "4-steps").resolve())

    # sampling: the student's own grid, the guidance scale as its w input
    assert cli(["sample", str(out), "--n", "3", "--seed", "5", "--class", "2", "--guidance-scale", "3",
                "--out", str(tmp_path / "s")]) == 0
    png = tmp_path / "s" / "images" / sorted(os.listdir(tmp_path / "s" / "images"))[1]
    assert cli(["sample", "--from-png", str(png), "--out", str(tmp_path / "again")]) == 0
    again = tmp_path / "again" / "images" / os.listdir(tmp_path / "again" / "images")[0]
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(again)))
    images = Pipeline.load(out, device="cpu")(class_label=2, n=3, seed=5, guidance_scale=3.0)
    assert np.array_equal(np.asarray(images[1]), np.asarray(Image.open(png)))  # the Python API, the same image
    assert cli(["sample", str(out / "rounds" / "4-steps"), "--n", "2", "--out", str(tmp_path / "s4")]) == 0
    capsys.readouterr()

    # anything else: one line naming what it was distilled for
    for flags in (["--steps", "4"], ["--method", "unipc_3"], ["--spacing", "karras"], ["--eta", "1"]):
        assert cli(["sample", str(out), "--n", "1", "--out", str(tmp_path / "bad"), *flags]) == 2
        err = capsys.readouterr().err
        assert "this run was distilled for DDIM with 2 steps" in err and "--steps 2" in err, err
        assert "4-steps samples with 4" in err and len(err.strip().splitlines()) == 1
    assert cli(["sample", str(out), "--n", "1", "--guidance-scale", "9", "--out", str(tmp_path / "bad")]) == 2
    assert "distilled for guidance scales in [1, 5]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="distilled for DDIM with 2 steps"):
        Pipeline.load(out, device="cpu")(class_label=1, n=1, steps=8)


def test_a_start_that_is_not_a_power_of_two_away_and_a_mismatched_teacher_are_one_line(teacher, tmp_path, capsys):
    assert cli(["distill", str(teacher), "--steps", "4", "--start-steps", "12", "--out", str(tmp_path / "x")]) == 2
    assert "must be --steps 4 times a power of two" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="distill.teacher"):
        objective(None, tmp_path)
    with pytest.raises(ConfigError, match="data.class_conditional must be True"):
        objective(teacher, tmp_path, "data.class_conditional=false")
