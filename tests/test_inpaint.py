"""Inpainting (issue 19, item 2): masks, blend and RePaint; the outside pixels bit-exact (pixel,
latent and DiT models), RePaint's schedule against diffusers, bad masks, the CLI record."""

import numpy as np
import pytest
import torch
from PIL import Image

import difflab
from difflab.cli import main as cli
from difflab.errors import UserError
from difflab.masks import box_mask, shape_mask
from difflab.pipelines import DiffusionModel, generate
from difflab.pipelines.generate import Edit
from difflab.pipelines.img2img import load_init_images
from difflab.pipelines.inpaint import Inpainting, as_mask, feather, read_mask
from difflab.pipelines.png_info import read_record
from difflab.sampling.repaint import repaint, repaint_levels, repaint_sigmas, repaint_timesteps
from difflab.schedules import linear
from difflab.training.trainer import train
from helpers import TINY, TINY_AE, tiny_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny class-conditional U-Net and DiT on the 8x8 digits, and a latent U-Net (tiny KL autoencoder)."""
    root = tmp_path_factory.mktemp("inpaint")
    unet = train(tiny_config(root / "unet", "train.steps=2", "diffusion.cond_drop_prob=0.2"), progress=False).parent
    dit = train(tiny_config(root / "dit", "train.steps=2", "model.name=dit",
                            "model.options={patch_size: 2, hidden_size: 16, depth: 1, num_heads: 2}"),
                progress=False).parent
    config = root / "ae.yaml"
    config.write_text("model:\n  name: autoencoder_kl\n  preset: tiny\ntrain:\n  steps: 2\n")
    ae_sets = sum((["--set", x] for x in TINY_AE[3:]), [])
    assert cli(["train-autoencoder", str(config), *ae_sets, "--no-progress", "--out", str(root / "ae")]) == 0
    sets = sum((["--set", x.replace("attention_resolutions: [4]", "attention_resolutions: [2]")] for x in TINY), [])
    assert cli(["train", *sets, "--set", f"data.autoencoder={root / 'ae'}", "--set", "train.steps=2",
                "--no-progress", "--out", str(root / "latent")]) == 0
    return {"unet": unet, "dit": dit, "latent": root / "latent"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(folder / f"{i}.png")
    return folder


# -- RePaint's schedule -----------------------------------------------------------------------------
@pytest.mark.parametrize("steps,jump,resample", [(250, 10, 10), (50, 5, 3), (20, 10, 2), (7, 3, 4), (10, 10, 10),
                                                 (5, 1, 1), (40, 4, 1)])
def test_repaint_schedule_equals_diffusers(steps, jump, resample):
    from diffusers import RePaintScheduler

    scheduler = RePaintScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    scheduler.set_timesteps(steps, jump, resample)
    stride = 1000 // steps
    assert (torch.tensor(repaint_timesteps(steps, jump, resample)) * stride).tolist() == scheduler.timesteps.tolist()
    # the levels the state visits, as σ, map back to diffusers' t (the step down from t starts at t)
    sigmas = repaint_sigmas(linear(), steps, jump, resample)
    levels = repaint_levels(steps, jump, resample)
    assert levels[-1] == -1 and len(sigmas) == len(levels)
    end = torch.tensor(levels) == -1  # σ = 0: the final denoise, and where the last jumps start from
    assert sigmas[end].eq(0).all() and sigmas[~end].gt(0).all()
    t = linear().t_from_sigma(sigmas[~end]).round().long()
    assert t.tolist() == [k * stride for k in levels if k >= 0]
    downs = [t for t, last in zip(scheduler.timesteps.tolist(), [10**9] + scheduler.timesteps.tolist()) if t < last]
    assert len(downs) == sum(1 for a, b in zip(sigmas.tolist(), sigmas.tolist()[1:]) if b < a)


def test_repaint_undo_step_restores_the_marginal_of_the_higher_level():
    """x ~ N(0, σₙ²) (data 0 noised to σₙ) plus √(σ² − σₙ²)·z has variance σ²: the undo step."""
    sigmas = torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64)  # one undo up, then a final denoise
    seen = []
    x = torch.randn(20000, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.5

    def denoise(x, sigma):
        seen.append(x.var().item())
        return torch.zeros_like(x)

    out = repaint(denoise, x, sigmas, known=torch.zeros_like(x), mask=torch.ones(1, 1, 1, 1, dtype=torch.float64),
                  noise_source=torch.Generator().manual_seed(1))
    assert seen[0] == pytest.approx(4.0, rel=0.04) and torch.equal(out, torch.zeros_like(out))


def test_repaint_shifts_the_mean_under_classifier_guidance_in_mean_mode():
    """ADM Algorithm 1 in RePaint: a step down adds σ_up²·(s_prev/s)·g to the repainted region, as ddpm does."""
    from difflab.denoiser import DenoiserOutput
    from difflab.sampling.common import ancestral_sigma_up
    from difflab.sampling.ddpm import step_factors

    schedule = linear(100)
    gradient = torch.full((2, 1, 4, 4), 0.3, dtype=torch.float64)

    class Guided:
        def __init__(self, shift):
            self.schedule, self.shift = schedule, shift

        def predict(self, x, sigma):
            return DenoiserOutput(torch.zeros_like(x), None, gradient if self.shift else None)

    sigma, sigma_next = float(schedule.sigma_max), 2.0
    sigmas = torch.tensor([sigma, sigma_next], dtype=torch.float64)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * sigma
    mask = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    runs = [repaint(Guided(shift), x, sigmas, known=torch.zeros_like(x), mask=mask,
                    noise_source=torch.Generator().manual_seed(1)) for shift in (False, True)]
    _, factor = step_factors(schedule, sigma, sigma_next)
    expected = ancestral_sigma_up(sigma, sigma_next) ** 2 * factor * gradient
    assert torch.allclose(runs[1] - runs[0], expected)


# -- masks ------------------------------------------------------------------------------------------
def test_masks_from_shapes_boxes_and_pngs(tmp_path):
    left = shape_mask("left-half", (8, 8))
    assert left[0, :, :4].eq(1).all() and left[0, :, 4:].eq(0).all()
    assert shape_mask("centre", (8, 8)).sum() == 16 and shape_mask("bottom-half", (8, 8))[0, 4:].eq(1).all()
    assert box_mask("1,2,5,6", (8, 8)).sum() == 16 and box_mask((0, 0, 8, 8), (8, 8)).eq(1).all()
    for bad in ("1,2,3", "a,b,c,d", "5,0,1,4", "0,0,9,9"):
        with pytest.raises(ValueError, match="mask box"):
            box_mask(bad, (8, 8))
    with pytest.raises(ValueError, match="unknown mask shape"):
        shape_mask("triangle", (8, 8))
    Image.fromarray(np.full((16, 16), 255, np.uint8), "L").save(tmp_path / "big.png")
    with pytest.warns(UserWarning, match="resized"):
        assert read_mask(tmp_path / "big.png", (8, 8)).shape == (1, 1, 8, 8)
    with pytest.raises(UserError, match="does not exist"):
        read_mask(tmp_path / "none.png", (8, 8))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match="cannot be read"):
        read_mask(tmp_path / "bad.png", (8, 8))
    with pytest.raises(ValueError, match="one channel"):
        as_mask(torch.ones(2, 3, 8, 8), (8, 8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        as_mask(torch.full((8, 8), 2.0), (8, 8))
    soft = feather(shape_mask("left-half", (8, 8))[None], 2)
    assert soft[..., 4:].eq(0).all() and 0 < soft[0, 0, 4, 3] < 1 and soft[0, 0, 4, 0] > soft[0, 0, 4, 3]


# -- blend and RePaint ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["unet", "dit", "latent"])
@pytest.mark.parametrize("mode", ["blend", "repaint"])
def test_pixels_outside_the_mask_are_bit_exact(runs, inputs, kind, mode):
    model = DiffusionModel.load(runs[kind])
    init = load_init_images(inputs, model)
    mask = shape_mask("centre", (8, 8))[None]
    edit = Edit(init, None, inpaint=Inpainting(mask, mode, jump_length=2, resample=2, blur=1 if kind == "dit" else 0))
    images, _ = generate(model, 3, steps=6, seed=0, edit=edit)
    outside = mask[0, 0] == 0
    assert torch.equal(images[..., outside], init.images[..., outside])
    assert not torch.equal(images, init.images)
    again, _ = generate(model, 3, steps=6, seed=0, edit=edit, batch_size=1)
    assert torch.equal(images, again)  # per-image seeds: any batch


@pytest.mark.parametrize("method", ["unipc_3", "ddpm", "dpmpp_2m_sde", "heun"])
def test_blend_with_other_samplers_cfg_and_strength(runs, inputs, method):
    model = DiffusionModel.load(runs["unet"])
    init = load_init_images(inputs, model)
    mask = shape_mask("right-half", (8, 8))[None]
    edit = Edit(init, 0.75, inpaint=Inpainting(mask, "blend"))
    images, _ = generate(model, 3, method=method, steps=4, guidance=difflab.pipelines.Guidance(scale=2.0), edit=edit)
    assert torch.equal(images[..., :4], init.images[..., :4])


def test_an_all_black_mask_returns_the_input(runs, inputs):
    model = DiffusionModel.load(runs["latent"])
    init = load_init_images(inputs, model)
    for mode in ("blend", "repaint"):
        edit = Edit(init, None, inpaint=Inpainting(torch.zeros(1, 1, 8, 8), mode))
        assert torch.equal(generate(model, 3, steps=4, edit=edit)[0], init.images)


def test_without_paste_back_the_outside_is_the_models_own_output(runs, inputs, tmp_path):
    """A latent model's decoded output differs from the input outside the mask (the autoencoder's
    round trip); paste-back makes it the input's; only the outside differs between the two."""
    model = DiffusionModel.load(runs["latent"])
    init = load_init_images(inputs, model)
    mask = shape_mask("centre", (8, 8))[None]
    pasted, _ = generate(model, 3, steps=4, edit=Edit(init, None, inpaint=Inpainting(mask, "blend")))
    raw, _ = generate(model, 3, steps=4, edit=Edit(init, None, inpaint=Inpainting(mask, "blend", paste_back=False)))
    outside = mask[0, 0] == 0
    assert torch.equal(pasted[..., outside], init.images[..., outside])
    assert not torch.equal(raw[..., outside], init.images[..., outside])
    assert torch.equal(raw[..., ~outside], pasted[..., ~outside])
    out = tmp_path / "raw"
    assert cli(["sample", str(runs["latent"]), "--init-image", str(inputs), "--mask-shape", "centre", "--steps", "4",
                "--no-paste-back", "--out", str(out)]) == 0
    png = out / "images" / "00000.png"
    assert read_record(png)["paste_back"] is False
    assert cli(["sample", str(runs["latent"]), "--no-paste-back", "--out", str(tmp_path / "nomask")]) == 2
    assert cli(["sample", "--from-png", str(png), "--out", str(tmp_path / "again")]) == 0
    remade = tmp_path / "again" / "images" / "00000.png"
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(remade)))
    pipe = difflab.Pipeline.load(runs["latent"], device="cpu")
    assert torch.equal(pipe(image=inputs, mask="centre", paste_back=False, steps=4, output="tensor"), raw)
    assert np.array_equal(np.asarray(pipe.from_png(png)), np.asarray(Image.open(png)))  # from Python, edit included


def test_repaint_refuses_a_strength_and_bad_modes(runs, inputs):
    model = DiffusionModel.load(runs["unet"])
    init = load_init_images(inputs, model)
    with pytest.raises(ValueError, match="RePaint starts from pure noise"):
        Edit(init, 0.5, inpaint=Inpainting(torch.ones(1, 1, 8, 8), "repaint"))
    with pytest.raises(ValueError, match="unknown inpainting mode"):
        Inpainting(torch.ones(1, 1, 8, 8), "outpaint")


def test_pipeline_and_cli_inpaint_and_record_it(runs, inputs, tmp_path, capsys):
    pipe = difflab.Pipeline.load(runs["unet"], device="cpu")
    images = pipe(image=inputs, mask="left-half", inpaint="repaint", repaint_jumps=2, repaint_resample=2, steps=6,
                  output="tensor")
    assert torch.equal(images[..., 4:], load_init_images(inputs, pipe.model).images[..., 4:])
    Image.fromarray(np.pad(np.full((4, 4), 255, np.uint8), 2), "L").save(tmp_path / "mask.png")
    for flags in (["--mask", str(tmp_path / "mask.png")], ["--mask-box", "2,2,6,6"], ["--mask-shape", "centre"]):
        out = tmp_path / flags[0].strip("-")
        assert cli(["sample", str(runs["unet"]), "--init-image", str(inputs), *flags, "--inpaint", "repaint",
                    "--repaint-jumps", "2", "--repaint-resample", "2", "--steps", "6", "--class", "1",
                    "--out", str(out)]) == 0
        png = out / "images" / "00001.png"
        made = np.asarray(Image.open(png))
        original = np.asarray(Image.open(inputs / "1.png"))
        assert np.array_equal(made[:2], original[:2]) and np.array_equal(made[:, 6:], original[:, 6:])
        record = read_record(png)
        assert record["inpaint"] == "repaint" and record["repaint_jumps"] == 2 and record["init_image"]
        again = tmp_path / ("again" + flags[0])
        assert cli(["sample", "--from-png", str(png), "--out", str(again)]) == 0
        assert np.array_equal(made, np.asarray(Image.open(again / "images" / "00000.png")))
        assert np.array_equal(made, np.asarray(difflab.Pipeline.load(runs["unet"], device="cpu").from_png(png)))
    (tmp_path / "mask.png").unlink()
    with pytest.raises(ValueError, match="was inpainted with the mask .*mask.png, which is not there any more: "
                                         "give it as mask="):
        difflab.Pipeline.input_arguments_of(read_record(tmp_path / "mask" / "images" / "00001.png"))
    assert cli(["sample", str(runs["unet"]), "--mask-shape", "centre", "--out", str(tmp_path / "x")]) != 0
    assert cli(["sample", str(runs["unet"]), "--init-image", str(inputs), "--mask", str(tmp_path / "none.png"),
                "--out", str(tmp_path / "y")]) != 0
    assert "mask" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["dit", "latent"])
def test_img2img_on_a_dit_and_a_latent_model(runs, inputs, kind):
    model = DiffusionModel.load(runs[kind])
    init = load_init_images(inputs, model)
    assert torch.equal(generate(model, 3, steps=4, edit=Edit(init, 0.0))[0], init.images)
    assert torch.equal(generate(model, 3, steps=4, seed=2, edit=Edit(init, 1.0))[0], generate(model, 3, steps=4,
                                                                                               seed=2)[0])
    half, _ = generate(model, 3, steps=4, seed=2, edit=Edit(init, 0.5, "fixed"))
    assert half.shape == init.images.shape and torch.equal(half, generate(model, 3, steps=4, seed=2, batch_size=1,
                                                                           edit=Edit(init, 0.5, "fixed"))[0])
