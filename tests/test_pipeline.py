"""The inference layer (issue 17): one sampling path for the CLI, the Pipeline object and the
trainer's previews; its hooks; the checkpoint record; and the regressions it fixed."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import difflab
from difflab.checkpoint import ModelRecord
from difflab.cli import main as cli
from difflab.denoiser import Denoiser
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.png_info import read_record
from difflab.sampling import ddim, ddpm, get_sigmas, sample, strength_tail
from difflab.sampling.ddpm import step_factors
from difflab.schedules import EDMSchedule, VESchedule, cosine, linear
from difflab.training.trainer import train
from helpers import text_run, tiny_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny class-conditional runs: plain (CFG-trained) and with learned variance; previews on."""
    root = tmp_path_factory.mktemp("pipeline")
    plain = train(tiny_config(root / "plain", "train.steps=3", "diffusion.cond_drop_prob=0.2", "train.sample_every=3",
                              "sample.guidance_scale=2"), progress=False)
    learned = train(tiny_config(root / "learned", "train.steps=3", "diffusion.learned_variance=true",
                                "sample.method=ddpm"), progress=False)
    return {"plain": plain.parent, "learned": learned.parent}


# -- the regressions ------------------------------------------------------------------------------
def test_ddpm_samples_a_learned_variance_model_with_its_learned_sigma(runs):
    model = DiffusionModel.load(runs["learned"])
    default, _ = generate(model, 4, method="ddpm", steps=5)
    learned, _ = generate(model, 4, method="ddpm", steps=5, variance="learned")
    small, _ = generate(model, 4, method="ddpm", steps=5, variance="fixed_small")
    assert torch.equal(default, learned) and not torch.equal(default, small)
    out = runs["learned"] / "s"
    assert cli(["sample", str(runs["learned"]), "--n", "2", "--steps", "5", "--variance", "fixed_large",
                "--out", str(out)]) == 0
    assert read_record(out / "images" / "00000.png")["options"] == {"variance": "fixed_large"}


@pytest.mark.parametrize("schedule", [cosine(), linear(), VESchedule(), EDMSchedule()], ids=lambda s: type(s).__name__)
def test_ddpm_step_variance_is_the_forward_step_noise_of_any_schedule(schedule):
    """β/s_prev² of the step σ → σₙ: (σ² − σₙ²)(1 + σₙ²)/(1 + σ²) for VP, σ² − σₙ² for VE (SMLD)."""
    sigma, sigma_next = 3.0, 0.7
    large, factor = step_factors(schedule, sigma, sigma_next)
    if schedule.variance_preserving:
        assert large == pytest.approx((sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2), rel=1e-12)
        assert factor == pytest.approx(((1 + sigma**2) / (1 + sigma_next**2)) ** 0.5, rel=1e-12)
    else:
        assert large == pytest.approx(sigma**2 - sigma_next**2, rel=1e-12) and factor == 1.0


def test_ddpm_fixed_large_on_a_ve_schedule_has_the_exact_marginal():
    """Data δ(0) and its exact denoiser D = 0 on a VE schedule: each step is x_next =
    √(σₙ² − σ̃²)/σ·x + √β·z with β = σ² − σₙ² (the old VP-only factor gave β(1 + σₙ²)/(1 + σ²)), so
    the samples' variance follows a closed-form recursion."""
    schedule = VESchedule()
    denoiser = Denoiser(lambda x_t, t: torch.zeros_like(x_t), schedule, prediction="x0")
    sigmas = torch.tensor([10.0, 4.0, 1.0, 0.3], dtype=torch.float64)
    x = sample(denoiser, torch.randn(20000, 1, 1, 1, dtype=torch.float64), sigmas=sigmas, method="ddpm",
               variance="fixed_large", generator=0)
    expected = 10.0**2  # the prior's variance
    for sigma, sigma_next in zip(sigmas.tolist(), sigmas.tolist()[1:]):
        small_sq = sigma_next**2 * (1 - sigma_next**2 / sigma**2)
        expected = (sigma_next**2 - small_sq) / sigma**2 * expected + (sigma**2 - sigma_next**2)
    assert x.var().item() == pytest.approx(expected, rel=0.04)


def test_ddpm_fixed_small_is_ddim_with_eta_one_to_the_bit():
    denoiser = Denoiser(lambda x_t, t: 0.3 * x_t, linear(), prediction="epsilon").bind()
    sigmas = get_sigmas(linear(), 6, "trailing")
    x = torch.randn(3, 2, 4, 4)
    a = ddpm(denoiser, x, sigmas, noise_source=lambda like: torch.ones_like(like))
    b = ddim(denoiser, x, sigmas, eta=1.0, noise_source=lambda like: torch.ones_like(like))
    assert torch.equal(a, b)


def test_previews_are_what_sample_makes_at_the_same_seed(runs, tmp_path):
    preview = np.asarray(Image.open(runs["plain"] / "samples" / "step-0000003.png"))
    assert cli(["sample", str(runs["plain"]), "--n", "4", "--seed", "0", "--out", str(tmp_path)]) == 0
    assert np.array_equal(preview, np.asarray(Image.open(tmp_path / "grid.png")))
    record = json.loads(Image.open(runs["plain"] / "samples" / "step-0000003.png").text["difflab"])
    assert record["seeds"] == [0, 1, 2, 3] and record["guidance_scale"] == 2


# -- the layering ----------------------------------------------------------------------------------
def test_inference_does_not_import_training():
    code = ("import sys, difflab.pipelines, difflab.commands.sample, difflab.pipelines.pipeline; "
            "bad = sorted(m for m in sys.modules if m.startswith('difflab.training')); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_checkpoint_config_of_the_old_format_still_loads(runs, tmp_path):
    """A config.json as difflab wrote it before ModelRecord (no init_from; keys by hand)."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(runs["plain"] / "checkpoint", old)
    config = json.loads((old / "config.json").read_text())
    legacy = {key: config[key] for key in ("model", "schedule", "prediction", "learned_variance", "image_shape",
                                           "latent", "class_names", "text_encoder", "train_config", "kind", "step",
                                           "checkpoint_files")}
    (old / "config.json").write_text(json.dumps(legacy))
    model = DiffusionModel.load(old)
    assert model.record.init_from is None and model.num_classes == 10
    assert torch.equal(generate(model, 2, steps=2)[0], generate(DiffusionModel.load(runs["plain"]), 2, steps=2)[0])
    record = ModelRecord.from_dict({**legacy, "future_key": 1})
    assert record.to_dict()["future_key"] == 1  # unknown keys survive a rewrite
    with pytest.raises(ValueError, match="lacks schedule"):
        ModelRecord.from_dict({"kind": "diffusion", "model": {}, "image_shape": [1, 8, 8]})


# -- the Pipeline object, PNG records, --from-png ---------------------------------------------------------
def test_pipeline_object_outputs_and_records(runs, tmp_path):
    pipe = difflab.Pipeline.load(runs["plain"], device="cpu")
    images = pipe(class_label=3, n=2, seed=5, steps=3)
    assert len(images) == 2 and images[0].size == (8, 8)
    record = json.loads(images[1].info["difflab"])
    assert record["seed"] == 6 and record["class"] == 3 and record["steps"] == 3 and record["difflab"]
    tensor = pipe(class_label=pipe.class_names[3], n=2, seed=5, steps=3, output="tensor")
    assert tensor.dtype == torch.uint8 and np.array_equal(tensor[1, 0].numpy(), np.asarray(images[1]))
    assert pipe(class_label=3, n=2, seed=5, steps=3, output="numpy").shape == (2, 8, 8, 1)
    path = difflab.save_png(images[1], tmp_path / "one.png")
    assert torch.equal(pipe.from_png(path, output="tensor")[0], tensor[1])
    with pytest.raises(ValueError, match="unknown class"):
        pipe(class_label="unicorn")


def test_from_png_reproduces_image_3_of_a_batch_of_4_alone(runs, tmp_path):
    assert cli(["sample", str(runs["plain"]), "--n", "4", "--seed", "11", "--method", "dpmpp_2m_sde", "--steps", "4",
                "--guidance-scale", "1.5", "--out", str(tmp_path / "batch")]) == 0
    png = tmp_path / "batch" / "images" / "00003.png"
    assert "Seed: 14" in Image.open(png).text["parameters"]
    assert cli(["sample", "--from-png", str(png), "--out", str(tmp_path / "again")]) == 0
    again = tmp_path / "again" / "images" / "00000.png"
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(again)))
    assert read_record(again) == read_record(png)


def test_from_png_refuses_a_png_without_a_record(tmp_path, capsys):
    Image.new("L", (4, 4)).save(tmp_path / "plain.png")
    assert cli(["sample", "--from-png", str(tmp_path / "plain.png")]) == 2
    assert "no difflab generation record" in capsys.readouterr().err


# -- negative prompts ----------------------------------------------------------------------------------
def test_negative_prompt_replaces_the_empty_caption(tmp_path):
    model = DiffusionModel.load(text_run(tmp_path, "small"))
    options = dict(steps=3, prompts=["a photo of a shirt"], guidance=Guidance(scale=3.0))
    plain, _ = generate(model, 2, **options)
    assert torch.equal(generate(model, 2, negative_prompt="", **options)[0], plain)
    assert not torch.equal(generate(model, 2, negative_prompt="a photo of a dress", **options)[0], plain)
    with pytest.raises(ValueError, match="guidance scale 1"):
        generate(model, 2, steps=3, prompts=["a shirt"], negative_prompt="a dress", guidance=Guidance(scale=1.0))


def test_negative_prompt_on_a_class_model_is_one_clear_error(runs, capsys):
    assert cli(["sample", str(runs["plain"]), "--n", "2", "--negative-prompt", "blurry"]) == 2
    assert "needs a text-conditioned model" in capsys.readouterr().err


# -- sampler flags ---------------------------------------------------------------------------------------
def test_eta_and_threshold_flags_reach_the_sampler(runs, tmp_path, capsys):
    def images(*flags):
        out = tmp_path / "-".join(flags)
        assert cli(["sample", str(runs["plain"]), "--n", "2", "--steps", "4", "--method", "ddim", *flags,
                    "--out", str(out)]) == 0
        return np.load(out / "samples.npz")["samples"]

    assert np.array_equal(images("--eta", "0"), images())
    assert not np.array_equal(images("--eta", "1"), images())
    assert not np.array_equal(images("--threshold", "0.6"), images())
    assert cli(["sample", str(runs["plain"]), "--n", "2", "--method", "heun", "--eta", "1"]) == 2
    assert "has no option 'eta'" in capsys.readouterr().err


def test_invert_then_sample_with_ddim_gives_the_images_back(runs, tmp_path):
    model = DiffusionModel.load(runs["plain"])
    images, _ = generate(model, 3, method="ddim", steps=10, class_index=2, guidance=Guidance(scale=1.0))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(folder / f"{i}.png")
    assert cli(["invert", str(runs["plain"]), "--images", str(folder), "--class", "2", "--steps", "10",
                "--out", str(tmp_path / "inv")]) == 0
    noise = np.load(tmp_path / "inv" / "noise.npz")["noise"]
    assert noise.shape == (3, 1, 8, 8)
    assert cli(["sample", str(runs["plain"]), "--noise", str(tmp_path / "inv" / "noise.npz"), "--method", "ddim",
                "--steps", "10", "--class", "2", "--guidance-scale", "1", "--out", str(tmp_path / "back")]) == 0
    back = np.load(tmp_path / "back" / "samples.npz")["samples"].astype(float)
    original = images.permute(0, 2, 3, 1).numpy().astype(float)
    assert np.abs(back - original).mean() < 6  # of 255: DDIM inversion's usual small error


# -- the hooks ---------------------------------------------------------------------------------------------
def test_callback_replacement_keeps_a_known_region(runs):
    """Inpainting's blend through the per-step callback: the known half comes out exactly."""
    model = DiffusionModel.load(runs["plain"])
    known = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8).expand(2, 1, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1  # 1 = keep the known pixels

    def blend(step):
        noised = known + step.sigma_next * torch.randn_like(known)
        return mask * noised + (1 - mask) * step.x

    for method in ("unipc_3", "ddpm", "dpmpp_2m"):
        x = generate(model, 2, method=method, steps=4, class_index=1, callback=blend)[0]
        from difflab.data.convert import to_uint8

        assert torch.equal(x[..., :4], to_uint8(known)[..., :4]), method


def test_x_start_with_strength_runs_the_tail_of_the_walk(runs):
    model = DiffusionModel.load(runs["plain"])
    sigmas = get_sigmas(model.schedule, 10, "trailing")
    assert torch.equal(strength_tail(sigmas, 0.5), sigmas[5:]) and torch.equal(strength_tail(sigmas, 1.0), sigmas)
    with pytest.raises(ValueError, match="runs no step"):
        strength_tail(sigmas, 0.05)
    start = torch.zeros(2, 1, 8, 8)
    steps = []
    generate(model, 2, steps=10, x_start=start, strength=0.3, callback=lambda s: steps.append(s.sigma))
    assert steps == sigmas[7:-1].tolist()
    with pytest.raises(ValueError, match="give strength"):
        generate(model, 2, x_start=start)


def test_image_noise_depends_on_its_seed_only(runs):
    model = DiffusionModel.load(runs["plain"])
    both, _ = generate(model, 4, method="euler_ancestral", steps=4, seeds=[7, 8, 9, 10], batch_size=3)
    alone, _ = generate(model, 1, method="euler_ancestral", steps=4, seeds=[9], class_index=2)
    assert torch.equal(both[2:3], alone)
