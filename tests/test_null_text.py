"""Null-text inversion (Mokady et al. 2023; issue 19, item 3's "beyond"): real images that sample
back under classifier-free guidance, from Python and through `difflab invert --null-text`,
`difflab sample --noise` and `difflab edit --noise`, on a tiny run with the frozen MiniLM encoder."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main as cli
from difflab.conditioning import TextConditioning
from difflab.editing import prompt_to_prompt
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.inversion import invert_images
from difflab.pipelines.null_text import NullText, null_text_inversion
from helpers import minilm_text_run, perturb_head, text_run

PROMPT, EDIT = "a photo of a sneaker", "a photo of a sandal"
STEPS, SCALE = 6, 3.0


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("null-text")
    run = minilm_text_run(folder)
    model = DiffusionModel.load(run)
    perturb_head(model.network)
    with torch.no_grad():  # three training steps leave the text almost unheard: make guidance matter
        for name, p in model.network.named_parameters():
            if ".cross." in name or "proj_out" in name:
                p.mul_(30)
    # the images to invert: the model's own unguided samples, saved as PNGs (what a user has)
    images, _ = generate(model, 3, method="ddim", steps=STEPS, prompts=[PROMPT], guidance=Guidance(scale=1.0))
    pictures = folder / "pictures"
    pictures.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(pictures / f"{i}.png")
    return run, model, images, pictures


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(255.0**2 / mse)).mean())


def test_null_text_inversion_reconstructs_under_guidance(minilm_run):
    _, model, images, _ = minilm_run
    noise = invert_images(model, images, steps=STEPS, prompt=PROMPT)
    plain, _ = generate(model, 3, method="ddim", steps=STEPS, noise=noise, prompts=[PROMPT],
                        guidance=Guidance(scale=SCALE))
    inverted = null_text_inversion(model, images, PROMPT, guidance_scale=SCALE, steps=STEPS, inner_steps=20)
    assert inverted.contexts.shape[:2] == (STEPS, 3) and torch.equal(inverted.noise, noise)
    back, _ = generate(model, 3, method="ddim", steps=STEPS, prompts=[PROMPT], guidance=Guidance(scale=SCALE),
                       null_text=inverted)
    assert psnr(back, images) > psnr(plain, images) + 3  # the tuned contexts keep the guided walk on the images
    assert inverted.losses[-1] < 1e-2


def test_untuned_contexts_are_plain_guided_sampling(minilm_run):
    """With every step's context the empty caption's, the per-step substitution changes nothing."""
    _, model, images, _ = minilm_run
    noise = torch.randn(2, *model.image_shape, generator=torch.Generator().manual_seed(0))
    null = TextConditioning(model.text_encoder).null()["context"]
    untuned = NullText(noise, null.expand(STEPS, 2, -1, -1).clone(), STEPS, "trailing", SCALE, torch.zeros(STEPS))
    kwargs = {"method": "ddim", "steps": STEPS, "spacing": "trailing", "prompts": [PROMPT],
              "guidance": Guidance(scale=SCALE)}
    plain, _ = generate(model, 2, noise=noise, **kwargs)
    same, _ = generate(model, 2, null_text=untuned, **kwargs)
    assert torch.equal(plain, same)
    with pytest.raises(ValueError, match="tuned for DDIM, 6 steps"):
        generate(model, 2, null_text=untuned, **{**kwargs, "steps": 5})
    with pytest.raises(ValueError, match="not 3"):
        generate(model, 3, null_text=untuned, **kwargs)
    wrong_scale = dataclasses.replace(untuned, guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance scale 2"):
        generate(model, 2, null_text=wrong_scale, **kwargs)


def test_invert_sample_and_edit_commands(minilm_run, tmp_path):
    run, model, images, pictures = minilm_run
    inv = tmp_path / "inv"
    assert cli(["invert", str(run), "--images", str(pictures), "--prompt", PROMPT, "--null-text", "--steps",
                str(STEPS), "--guidance-scale", str(SCALE), "--inner-steps", "20", "--out", str(inv)]) == 0
    with np.load(inv / "noise.npz") as npz:
        assert npz["null_contexts"].shape[:2] == (STEPS, 3) and float(npz["null_guidance_scale"]) == SCALE
    # sample --noise takes the walk and the scale from the file: what generate(null_text=...) gives
    assert cli(["sample", str(run), "--noise", str(inv / "noise.npz"), "--prompt", PROMPT,
                "--out", str(tmp_path / "s")]) == 0
    back = torch.from_numpy(np.stack([np.array(Image.open(path))
                                      for path in sorted((tmp_path / "s" / "images").glob("*.png"))]))[:, None]
    with np.load(inv / "noise.npz") as npz:
        inverted = NullText.from_arrays(npz, torch.from_numpy(npz["noise"]))
    expected, _ = generate(DiffusionModel.load(run), 3, method="ddim", steps=STEPS, prompts=[PROMPT],
                           guidance=Guidance(scale=SCALE), null_text=inverted)
    assert torch.equal(back, expected)
    assert cli(["edit", str(run), "--noise", str(inv / "noise.npz"), "--prompt", PROMPT, "--edit", EDIT,
                "--out", str(tmp_path / "e")]) == 0
    assert len(list((tmp_path / "e" / "edit").iterdir())) == 3


def test_edit_command_on_real_images(minilm_run, tmp_path, capsys):
    """`difflab edit --image DIR --prompt P --edit P*`: null-text inversion and prompt-to-prompt in one
    command; the inversion is kept in OUT/noise.npz, and a second edit from it gives the same sources."""
    run, _, _, pictures = minilm_run
    out = tmp_path / "e"
    assert cli(["edit", str(run), "--image", str(pictures), "--prompt", PROMPT, "--edit", EDIT, "--steps", str(STEPS),
                "--guidance-scale", str(SCALE), "--out", str(out)]) == 0
    with np.load(out / "noise.npz") as npz:
        assert npz["null_contexts"].shape[:2] == (STEPS, 3)
    again = tmp_path / "again"
    assert cli(["edit", str(run), "--noise", str(out / "noise.npz"), "--prompt", PROMPT, "--edit", EDIT,
                "--out", str(again)]) == 0
    for name in ("00000.png", "00002.png"):
        first, second = (np.array(Image.open(folder / "source" / name)) for folder in (out, again))
        assert np.array_equal(first, second)
    capsys.readouterr()
    assert cli(["edit", str(run), "--image", str(pictures), "--noise", str(out / "noise.npz"), "--prompt", PROMPT,
                "--edit", EDIT, "--out", str(tmp_path / "x")]) != 0
    assert "drop --noise" in capsys.readouterr().err
    assert cli(["edit", "--from-png", str(out / "edit" / "00000.png"), "--out", str(tmp_path / "y")]) != 0
    assert "edit the picture again with `difflab edit --image`" in capsys.readouterr().err


def test_null_text_edit_keeps_the_source_row(minilm_run):
    """prompt_to_prompt(null_text=...): the source rows are the null-text reconstruction itself."""
    _, model, images, _ = minilm_run
    inverted = null_text_inversion(model, images[:2], PROMPT, guidance_scale=SCALE, steps=STEPS)
    sources, edits, _ = prompt_to_prompt(model, PROMPT, EDIT, null_text=inverted)
    back, _ = generate(model, 2, method="ddim", steps=STEPS, prompts=[PROMPT], guidance=Guidance(scale=SCALE),
                       null_text=inverted)
    assert (sources.float() - back.float()).abs().max() <= 1 and not torch.equal(sources, edits)
    from difflab import Pipeline

    piped = Pipeline(model)(PROMPT, null_text=inverted, output="tensor")  # walk, scale and n from the inversion
    assert torch.equal(piped, back)


def test_bad_input_is_one_clear_error(minilm_run, tmp_path, capsys):
    run, model, images, pictures = minilm_run
    with pytest.raises(ValueError, match="scale > 1"):
        null_text_inversion(model, images, PROMPT, guidance_scale=1.0, steps=STEPS)
    with pytest.raises(ValueError, match="diverged at step 1"):
        null_text_inversion(model, images, PROMPT, guidance_scale=SCALE, steps=STEPS, lr=float("inf"))
    for argv, message in (
        (["--null-text", "--guidance-scale", "3"], "needs the images' caption"),
        (["--prompt", PROMPT, "--guidance-scale", "3"], "add --null-text"),
        (["--prompt", PROMPT, "--null-text", "--guidance-scale", "1"], "scale > 1"),
    ):
        assert cli(["invert", str(run), "--images", str(pictures), "--steps", str(STEPS), *argv,
                    "--out", str(tmp_path / "x")]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    inv = tmp_path / "inv"
    assert cli(["invert", str(run), "--images", str(pictures), "--prompt", PROMPT, "--null-text", "--steps",
                str(STEPS), "--guidance-scale", "3", "--inner-steps", "1", "--out", str(inv)]) == 0
    capsys.readouterr()
    for argv, message in ((["--steps", "4"], "contradicts the null-text inversion"),
                          (["--method", "euler"], "contradicts the null-text inversion"),
                          (["--n", "2"], "sample exactly those")):
        assert cli(["sample", str(run), "--noise", str(inv / "noise.npz"), "--prompt", PROMPT, *argv,
                    "--out", str(tmp_path / "y")]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert cli(["sample", str(run), "--noise", str(tmp_path / "bad.npz"), "--prompt", PROMPT,
                "--out", str(tmp_path / "z")]) != 0
    assert "not a readable .npz" in capsys.readouterr().err


def test_a_trainable_text_encoder_is_one_clear_error(tmp_path):
    run = text_run(tmp_path, "small")
    model = DiffusionModel.load(run)
    images, _ = generate(model, 1, steps=2, prompts=[PROMPT], guidance=Guidance(scale=1.0))
    with pytest.raises(ValueError, match="no frozen text encoder"):
        null_text_inversion(model, images, PROMPT, guidance_scale=3.0, steps=2)


def test_pipeline_invert_and_edit(minilm_run):
    """Pipeline.invert (plain and null-text) and Pipeline.edit (seeds, or real images in one call)."""
    from difflab import Pipeline

    _, model, images, pictures = minilm_run
    pipe = Pipeline(model)
    noise = pipe.invert(pictures, prompt=PROMPT, steps=STEPS)  # a folder, as the CLI reads it
    assert torch.equal(noise, invert_images(model, images, steps=STEPS, prompt=PROMPT))
    back = pipe(PROMPT, noise=noise, method="ddim", steps=STEPS, guidance_scale=1, output="tensor")  # n from noise
    assert back.shape == images.shape
    with pytest.raises(ValueError, match="null_text=True"):
        pipe.invert(images, prompt=PROMPT, guidance_scale=3.0)
    sources, edits = pipe.edit(PROMPT, EDIT, image=images[:2], steps=STEPS, guidance_scale=SCALE, output="tensor")
    inverted = pipe.invert(images[:2], prompt=PROMPT, steps=STEPS, null_text=True, guidance_scale=SCALE)
    expected, _, _ = prompt_to_prompt(model, PROMPT, EDIT, null_text=inverted)
    assert torch.equal(sources, expected) and edits.shape == sources.shape
    pil_sources, pil_edits = pipe.edit(PROMPT, EDIT, n=2, seed=1, steps=STEPS)
    assert len(pil_sources) == len(pil_edits) == 2 and pil_edits[0].size == (8, 8)
    with pytest.raises(ValueError, match="one of them"):
        pipe.edit(PROMPT, EDIT, image=images[:1], null_text=inverted)


@pytest.mark.parametrize("kind", ["latent", "dit"])
def test_null_text_on_a_latent_model_and_a_dit(kind, tmp_path):
    """The inversion encodes a latent model's pictures and tunes the context a DiT's cross-attention
    reads; untuned contexts stay plain guided sampling; the tuned ones return the images."""
    from helpers import tiny_autoencoder

    extra = ([f"data.autoencoder={tiny_autoencoder(tmp_path / 'ae')}", "data.hflip=false"] if kind == "latent" else
             ["model.name=dit", "model.options={patch_size: 2, hidden_size: 16, depth: 2, num_heads: 2}"])
    model = DiffusionModel.load(minilm_text_run(tmp_path, *extra))
    perturb_head(model.network)
    images, _ = generate(model, 2, method="ddim", steps=STEPS, prompts=[PROMPT], guidance=Guidance(scale=1.0))
    inverted = null_text_inversion(model, images, PROMPT, guidance_scale=SCALE, steps=STEPS, inner_steps=20)
    assert inverted.noise.shape == (2, *model.image_shape)  # latents for the latent model
    back, _ = generate(model, 2, method="ddim", steps=STEPS, prompts=[PROMPT], guidance=Guidance(scale=SCALE),
                       null_text=inverted)
    plain, _ = generate(model, 2, method="ddim", steps=STEPS, prompts=[PROMPT], guidance=Guidance(scale=SCALE),
                        noise=invert_images(model, images, steps=STEPS, prompt=PROMPT))
    assert back.shape == images.shape and psnr(back, images) >= psnr(plain, images)
