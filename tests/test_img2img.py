"""img2img / SDEdit (issue 19, item 1): the walk's timesteps against diffusers, strength 0 and 1,
the fixed-steps convention, bad input, the pipeline, the CLI and its PNG record."""

import types

import numpy as np
import pytest
import torch
from PIL import Image

import difflab
from difflab.cli import main as cli
from difflab.errors import UserError
from difflab.pipelines import DiffusionModel, generate
from difflab.pipelines.generate import Edit, SamplerSettings
from difflab.pipelines.img2img import load_init_images
from difflab.pipelines.png_info import read_record
from difflab.sampling import SAMPLERS, get_sigmas, strength_tail
from difflab.sampling.spacing import fixed_strength_walk
from difflab.schedules import linear
from difflab.training.trainer import train
from helpers import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("img2img")
    return train(tiny_config(root / "plain", "train.steps=3", "diffusion.cond_drop_prob=0.2"), progress=False).parent


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Four 8x8 grey PNGs (one of them 12x12, to be resized) in a folder."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for i in range(4):
        size = 12 if i == 3 else 8
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(folder / f"{i}.png")
    return folder


# -- the walk ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [10, 25, 50])
@pytest.mark.parametrize("strength", [0.3, 0.5, 0.75, 0.99, 1.0])
def test_walk_equals_diffusers_img2img_get_timesteps(spacing, steps, strength):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              timestep_spacing=spacing, steps_offset=0)
    scheduler.set_timesteps(steps)
    theirs, count = StableDiffusionImg2ImgPipeline.get_timesteps(types.SimpleNamespace(scheduler=scheduler), steps,
                                                                 strength, "cpu")
    schedule = linear()
    ours = strength_tail(get_sigmas(schedule, steps, spacing), strength)
    t = schedule.t_from_sigma(ours[:-1]).round().long()
    assert t.tolist() == theirs.tolist() and len(ours) - 1 == count


@pytest.mark.parametrize("strength", [0.3, 0.5, 0.7, 1.0])
def test_fixed_convention_runs_exactly_steps_steps_from_the_tail_of_a_longer_walk(strength):
    schedule = linear()
    walk = fixed_strength_walk(schedule, 10, "trailing", strength)
    longer = get_sigmas(schedule, int(10 / strength + 1e-9), "trailing")
    assert len(walk) == 11 and torch.equal(walk, longer[-11:])


def test_strength_1_is_text_to_image_and_0_the_input(run, inputs):
    model = DiffusionModel.load(run)
    init = load_init_images(inputs, model)
    plain, _ = generate(model, 4, steps=4, seed=3)
    for mode in ("diffusers", "fixed"):
        full, _ = generate(model, 4, steps=4, seed=3, edit=Edit(init, 1.0, mode))
        assert torch.equal(full, plain)
        same, _ = generate(model, 4, steps=4, seed=3, edit=Edit(init, 0.0, mode))
        assert torch.equal(same, init.images)
    half, _ = generate(model, 4, steps=4, seed=3, edit=Edit(init, 0.5))
    assert not torch.equal(half, plain) and not torch.equal(half, init.images)


def test_bad_strengths_are_clear_errors(run, inputs):
    model = DiffusionModel.load(run)
    init = load_init_images(inputs, model)
    for strength in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
            generate(model, 4, steps=4, edit=Edit(init, strength))
    with pytest.raises(ValueError, match="runs no step"):
        generate(model, 4, steps=4, edit=Edit(init, 0.1))
    with pytest.raises(ValueError, match="unknown strength step convention"):
        generate(model, 4, steps=4, edit=Edit(init, 0.5, "a1111"))


def test_bad_init_images_are_clear_errors(run, tmp_path):
    model = DiffusionModel.load(run)
    with pytest.raises(UserError, match="does not exist"):
        load_init_images(tmp_path / "missing.png", model)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot be read as an image"):
        load_init_images(tmp_path / "broken.png", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        load_init_images(tmp_path / "empty", model)
    with pytest.raises(ValueError, match="uint8"):
        load_init_images(torch.zeros(1, 1, 8, 8), model)


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_every_sampler_edits_with_cfg_and_per_image_seeds(run, inputs, method):
    model = DiffusionModel.load(run)
    init = load_init_images(inputs, model)
    steps = 6 if method != "heun" else 4
    kwargs = dict(method=method, steps=steps, seed=5, guidance=difflab.pipelines.Guidance(scale=2.0),
                  edit=Edit(init, 0.5))
    together, _ = generate(model, 4, batch_size=4, **kwargs)
    alone, _ = generate(model, 4, batch_size=1, **kwargs)
    assert torch.equal(together, alone) and together.shape == (4, 1, 8, 8)


def test_pipeline_takes_pil_tensors_and_paths_and_records_the_edit(run, inputs):
    pipe = difflab.Pipeline.load(run, device="cpu")
    pil = [Image.open(p) for p in sorted(inputs.glob("*.png"))]
    from_pil = pipe(image=pil, strength=0.5, steps=4, class_label=1, output="tensor")
    from_path = pipe(image=inputs, strength=0.5, steps=4, class_label=1)
    assert torch.equal(from_pil, torch.stack([torch.from_numpy(np.array(i))[None] for i in from_path]))
    tensor = load_init_images(inputs, pipe.model).images
    assert torch.equal(pipe(image=tensor, strength=0.5, steps=4, class_label=1, output="tensor"), from_pil)
    import json

    record = json.loads(from_path[0].info["difflab"])
    assert record["strength"] == 0.5 and record["strength_mode"] == "diffusers"
    assert record["init_image"].endswith("0.png")
    fixed = pipe(image=inputs, strength=0.5, strength_mode="fixed", steps=4, class_label=1, output="tensor")
    assert not torch.equal(fixed, from_pil)


def test_cli_img2img_writes_its_record_and_from_png_remakes_it(run, inputs, tmp_path):
    out = tmp_path / "edit"
    assert cli(["sample", str(run), "--init-image", str(inputs), "--strength", "0.6", "--strength-steps", "fixed",
                "--steps", "4", "--class", "2", "--out", str(out)]) == 0
    images = sorted((out / "images").glob("*.png"))
    assert len(images) == 4  # one per init image
    record = read_record(images[2])
    assert (record["strength"], record["strength_mode"]) == (0.6, "fixed")
    assert record["init_image"] == str(inputs / "2.png")
    again = tmp_path / "again"
    assert cli(["sample", "--from-png", str(images[2]), "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(images[2])), np.asarray(Image.open(again / "images" / "00000.png")))


def test_cli_from_png_refuses_an_edit_whose_input_is_gone(run, inputs, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes((inputs / "0.png").read_bytes())
    out = tmp_path / "edit"
    assert cli(["sample", str(run), "--init-image", str(folder / "a.png"), "--strength", "0.5", "--steps", "4",
                "--out", str(out)]) == 0
    (folder / "a.png").unlink()
    assert cli(["sample", "--from-png", str(out / "images" / "00000.png"), "--out", str(tmp_path / "x")]) != 0
    assert "not there any more: give it with --init-image" in capsys.readouterr().err
    assert cli(["sample", str(run), "--init-image", str(folder / "a.png"), "--strength", "0.5",
                "--out", str(tmp_path / "y")]) != 0
    assert cli(["sample", str(run), "--strength", "0.5", "--out", str(tmp_path / "z")]) != 0
    assert "give it with --init-image" in capsys.readouterr().err


def test_explicit_x_start_hook_still_works(run):
    model = DiffusionModel.load(run)
    x_start = torch.zeros(2, *model.image_shape)
    images, _ = generate(model, 2, steps=4, x_start=x_start, strength=0.5)
    assert images.shape == (2, 1, 8, 8)
    assert torch.equal(generate(model, 2, steps=4, x_start=x_start, strength=0.0)[0],
                       torch.full((2, 1, 8, 8), 128, dtype=torch.uint8))
    settings = SamplerSettings.resolve(model, steps=4)
    assert len(settings.walk(model, 0.5, "fixed")) == 5


@pytest.mark.parametrize("mode,expected", [("diffusers", 5), ("fixed", 10)])
def test_pipeline_x_start_honours_the_strength_convention(run, mode, expected):
    """Regression: Pipeline(x_start=, strength=, strength_mode="fixed") ran the diffusers convention."""
    steps = []
    difflab.Pipeline.load(run)(class_label=0, n=1, x_start=torch.zeros(1, 1, 8, 8), strength=0.5, strength_mode=mode,
                               method="ddim", steps=10, callback=lambda step: steps.append(step), output="tensor")
    assert len(steps) == expected


def test_classifier_guidance_and_a_text_model_edit(run, inputs, tmp_path):
    """img2img under classifier guidance (an unconditional-style noisy classifier on the digits),
    and img2img + inpainting on a text-conditioned model, from the CLI."""
    from helpers import TINY, text_run

    sets = sum((["--set", o.replace("model.name=unet", "model.name=noisy_classifier")] for o in TINY), [])
    assert cli(["train-classifier", "--noisy", "configs/demo-digits.yaml", *sets, "--set", "train.steps=2",
                "--no-progress", "--out", str(tmp_path / "clf")]) == 0
    base = ["sample", str(run), "--init-image", str(inputs), "--strength", "0.5", "--steps", "4", "--class", "3"]
    assert cli([*base, "--out", str(tmp_path / "plain")]) == 0
    assert cli([*base, "--classifier", str(tmp_path / "clf"), "--classifier-scale", "50",
                "--out", str(tmp_path / "guided")]) == 0
    plain = np.load(tmp_path / "plain" / "samples.npz")
    guided = np.load(tmp_path / "guided" / "samples.npz")
    assert not np.array_equal(plain[plain.files[0]], guided[guided.files[0]])
    assert read_record(tmp_path / "guided" / "images" / "00000.png")["classifier_scale"] == 50

    text = text_run(tmp_path, "small")
    out = tmp_path / "text"
    assert cli(["sample", str(text), "--init-image", str(inputs), "--strength", "0.7", "--mask-shape", "top-half",
                "--prompt", "a shirt", "--steps", "4", "--out", str(out)]) == 0
    made = np.asarray(Image.open(out / "images" / "00000.png"))
    assert np.array_equal(made[4:], np.asarray(Image.open(inputs / "0.png"))[4:])
    assert read_record(out / "images" / "00000.png")["prompt"] == "a shirt"
