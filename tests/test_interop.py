"""`difflab import` / `difflab export` end to end (difflab.interop): tiny random-weight diffusers
pipelines built with diffusers' own classes and saved with save_pretrained (no download), imported
as difflab runs, sampled side by side with diffusers, exported back, and bad input refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from difflab.cli import main  # noqa: E402
from difflab.conditioning import TextConditioning  # noqa: E402
from difflab.pipelines.generate import SamplerSettings, plan  # noqa: E402
from difflab.pipelines.guidance_policy import Guidance  # noqa: E402
from difflab.pipelines.loading import DiffusionModel  # noqa: E402
from difflab.sampling import sample  # noqa: E402
from helpers import perturbed  # noqa: E402
from ldm_layout import file_state, to_ldm_unet, to_ldm_vae  # noqa: E402

UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
            norm_num_groups=8)
VAE = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
           up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, layers_per_block=1,
           sample_size=16)
CLIP = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="quick_gelu")
PROMPT = "a photo of an astronaut riding a horse, (detailed)"


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A Stable-Diffusion-1.x-like pipeline folder with tiny random components."""
    from difflab.text.bpe import ClipTokenizer

    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    tokenizer_dir = ClipTokenizer.from_open_clip(pad="end").save(root / "tok")
    pipe = diffusers.StableDiffusionPipeline(
        vae=perturbed(diffusers.AutoencoderKL(**VAE), 1),
        text_encoder=transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP)).eval(),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=perturbed(diffusers.UNet2DConditionModel(**UNET), 2),
        scheduler=diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                          clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                                          timestep_spacing="trailing"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "pipe", safe_serialization=True)
    return root / "pipe"


@pytest.fixture(scope="module")
def sd_run(sd_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "sd"
    assert main(["import", str(sd_folder), "--out", str(run), "--image-size", "16"]) == 0
    return run


@pytest.mark.parametrize("negative", [None, "blurry, low quality"], ids=["cfg", "negative-prompt"])
def test_imported_sd_samples_like_diffusers(sd_folder, sd_run, negative):
    """DDIM 20 steps, CFG 7.5, the same initial noise: the same latents and images as diffusers'
    StableDiffusionPipeline to 1e-3 (with and without a negative prompt)."""
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = pipe(PROMPT, num_inference_steps=20, guidance_scale=7.5, latents=noise.clone(), height=16, width=16,
                      negative_prompt=negative, output_type="latent").images
        their_images = pipe.vae.decode(theirs / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    model = DiffusionModel.load(sd_run)
    assert model.record.sample_defaults["spacing"] == "trailing" and model.prediction == "epsilon"
    settings = SamplerSettings.resolve(model, "ddim", 20, "trailing", None)
    job = plan(model, 1, settings, prompts=[PROMPT], guidance=Guidance(scale=7.5, negative_prompt=negative))
    with torch.no_grad():
        ours = sample(job.denoiser, noise, sigmas=settings.walk(model), method="ddim", cond=job.cond([0]))
        our_images = model.latent.decode(ours)
    assert (theirs - noise).abs().max() > 0.1  # sampling moved the latents: the comparison can fail
    assert (ours - theirs).abs().max() < 1e-3
    assert (our_images - their_images).abs().max() < 1e-3


def test_imported_sd_runs_through_sample_cli(sd_run, tmp_path):
    import numpy as np
    from PIL import Image

    def images(out, *extra):
        assert main(["sample", str(sd_run), "--n", "2", "--steps", "3", "--out", str(out), *extra]) == 0
        return [np.asarray(Image.open(p)) for p in sorted((out / "images").glob("*.png"))]

    plain = images(tmp_path / "plain", "--prompt", "a red cat")
    assert len(plain) == 2
    # A1111's emphasis: weight 1 is the plain prompt, another weight changes the images
    same = images(tmp_path / "same", "--prompt", "a (red:1.0) cat", "--prompt-weights")
    heavier = images(tmp_path / "heavier", "--prompt", "a (red:1.8) cat", "--prompt-weights")
    assert all(np.array_equal(a, b) for a, b in zip(plain, same))
    assert not all(np.array_equal(a, b) for a, b in zip(plain, heavier))


def test_export_round_trip_sd(sd_folder, sd_run, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", str(sd_run), "--format", "diffusers", "--out", str(out)]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(out)
    original = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder)
    for name in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(pipe, name).state_dict(), getattr(original, name).state_dict()
        assert mine.keys() == theirs.keys()
        # SD 1.x's 1×1-convolution proj_in/proj_out come back as the equal linear layers (use_linear_projection)
        assert all(torch.equal(mine[k], theirs[k].reshape(mine[k].shape)) for k in mine), name
    again = tmp_path / "again"
    assert main(["import", str(out), "--out", str(again), "--image-size", "16"]) == 0
    a, b = DiffusionModel.load(sd_run), DiffusionModel.load(again)
    assert all(torch.equal(a.network.state_dict()[k], v) for k, v in b.network.state_dict().items())


def test_ddpm_unet_folder_and_demo_sized_export(tmp_path):
    """A lone UNet2DModel folder with its scheduler beside it; exported back, identical tensors."""
    root = tmp_path / "ddpm"
    unet = perturbed(diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                                          layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                          up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                          attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1), 4)
    unet.save_pretrained(root / "unet", safe_serialization=True)
    diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").save_pretrained(
        root / "scheduler")
    run = tmp_path / "run"
    assert main(["import", str(root / "unet"), "--out", str(run)]) == 0
    model = DiffusionModel.load(run)
    assert model.record.schedule["name"] == "cosine" and model.prediction == "v"
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    back = diffusers.UNet2DModel.from_pretrained(out / "unet")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in unet.state_dict().items())
    scheduler = diffusers.DDIMScheduler.from_pretrained(out / "scheduler")
    assert torch.allclose(scheduler.alphas_cumprod, diffusers.DDPMScheduler(
        beta_schedule="squaredcos_cap_v2").alphas_cumprod)
    assert (out / "model_index.json").is_file()  # an unconditional pixel model: a DDPMPipeline


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_clear_line(sd_folder, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "vae")
    assert "lists vae, but the folder lacks it" in _error(capsys, ["import", str(broken), "--out", str(tmp_path)])

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04 pickle")
    assert "never loads" in _error(capsys, ["import", str(ckpt), "--out", str(tmp_path / "r2")])

    unsupported = tmp_path / "unsupported"
    shutil.copytree(sd_folder, unsupported)
    config_file = unsupported / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D"]}))
    assert "SimpleCrossAttnDownBlock2D" in _error(capsys, ["import", str(unsupported), "--out", str(tmp_path / "r3")])

    config_file.write_text(json.dumps({**config, "block_out_channels": [32, 96]}))
    err = _error(capsys, ["import", str(unsupported), "--out", str(tmp_path / "r4")])
    assert "shapes disagree" in err or "missing" in err or "unexpected" in err

    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(2)}, str(foreign))
    assert "cannot place" in _error(capsys, ["import", str(foreign), "--out", str(tmp_path / "r6")])

    assert "does not exist" in _error(capsys, ["import", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r5")])
    assert "does not exist" in _error(capsys, ["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e")])


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    """A DiT-XL/2-like pipeline folder (learned sigma, class labels) with tiny random components; each
    block's copy of the time/class embedder is block 0's, as in checkpoints converted from DiT's code."""
    root = tmp_path_factory.mktemp("dit")
    torch.manual_seed(0)
    transformer = perturbed(diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000), 5)  # DiTPipeline takes label 1000 as the null label
    first = transformer.transformer_blocks[0].norm1.emb
    for block in transformer.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(first.state_dict())
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=perturbed(diffusers.AutoencoderKL(**VAE), 6),
                                 scheduler=diffusers.DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True,
                                                                   clip_sample=False))
    pipe.save_pretrained(root / "pipe", safe_serialization=True)
    return root / "pipe"


def test_imported_dit_samples_like_diffusers(dit_folder, tmp_path):
    run = tmp_path / "dit"
    assert main(["import", str(dit_folder), "--out", str(run), "--image-size", "16"]) == 0
    model = DiffusionModel.load(run)
    assert model.learned_variance and model.num_classes == 1000
    pipe = diffusers.DiTPipeline.from_pretrained(dit_folder)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = pipe(class_labels=[3], guidance_scale=4.0, num_inference_steps=20, output_type="pt",
                      generator=torch.Generator().manual_seed(7)).images  # (1, H, W, C) in [0, 1]
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))  # the pipeline's first draw
    settings = SamplerSettings.resolve(model, "ddim", 20, "trailing", None)
    job = plan(model, 1, settings, class_index=3, guidance=Guidance(scale=4.0))
    with torch.no_grad():
        latents = sample(job.denoiser, noise, sigmas=settings.walk(model), method="ddim", cond=job.cond([0]))
        ours = (model.latent.decode(latents) / 2 + 0.5).clamp(0, 1)
    theirs = torch.as_tensor(theirs).reshape(ours.shape) if theirs.shape == ours.shape else torch.as_tensor(
        theirs).permute(0, 3, 1, 2)
    assert (ours - theirs).abs().max() < 1e-3


@pytest.mark.parametrize("scheduler", [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True,
         prediction_type="v_prediction", timestep_spacing="trailing"),
], ids=["linear", "scaled-linear", "cosine", "sd2-zero-snr-v"])
def test_scheduler_configs_map_both_ways(scheduler):
    from difflab.interop.scheduler import schedule_from_diffusers, schedule_to_diffusers
    from difflab.schedules import schedule_from_config

    theirs = diffusers.DDPMScheduler(**scheduler)
    view = schedule_from_diffusers(dict(theirs.config))
    ours = schedule_from_config(view["schedule"])
    assert torch.allclose(ours.alphas_cumprod.float(), theirs.alphas_cumprod, atol=1e-6)
    assert view["prediction"] == {"epsilon": "epsilon", "v_prediction": "v"}[theirs.config.prediction_type]
    back = diffusers.DDIMScheduler(**{k: v for k, v in schedule_to_diffusers(
        view["schedule"], view["prediction"]).items() if not k.startswith("_")})
    assert torch.allclose(back.alphas_cumprod, theirs.alphas_cumprod, atol=1e-6)


def test_imported_sd_takes_img2img_and_controlnet(sd_run, tmp_path):
    from difflab.models.controlnet import ControlNet
    from difflab.pipelines.pipeline import Pipeline

    pipe = Pipeline(DiffusionModel.load(sd_run))
    image = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    edited = pipe("a cat", image=image, strength=0.5, steps=4, output="tensor")
    assert edited.shape == (1, 3, 16, 16)
    base = pipe.model.network
    net = ControlNet.from_model(base, hint_channels=3, hint_factor=2).eval()
    g = torch.Generator().manual_seed(0)
    x, t, context = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500.0]), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        control = net(x, t, torch.rand(1, 3, 16, 16, generator=g), context=context)
        assert torch.equal(base(x, t, context=context, control=control), base(x, t, context=context))


def test_single_file_imports_as_the_folder_does(sd_folder, sd_run, tmp_path):
    """An original-layout single file built from the same tiny weights (with the documented key
    mapping, written independently in tests/test_ldm_single_file.py) gives the same run."""
    from safetensors.torch import save_file


    pipe = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder)
    tensors = {**to_ldm_unet(pipe.unet.state_dict(), dict(pipe.unet.config)),
               **to_ldm_vae(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels)),
               **{f"cond_stage_model.transformer.{k}": v for k, v in file_state(pipe.text_encoder).items()},
               "alphas_cumprod": pipe.scheduler.alphas_cumprod.clone()}
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    run = tmp_path / "single"
    # the tiny model's heads and group counts are not in the shapes: its folder's configs give them
    assert main(["import", str(path), "--out", str(run), "--image-size", "16", "--config", str(sd_folder)]) == 0
    a, b = DiffusionModel.load(sd_run), DiffusionModel.load(run)
    assert torch.allclose(a.schedule.alphas_cumprod, b.schedule.alphas_cumprod)
    g = torch.Generator().manual_seed(8)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([400.0])
    for m in (a, b):
        m.context = TextConditioning(m.text_encoder, "cpu").encode(["a cat"])
    with torch.no_grad():
        assert torch.equal(a.context["context"], b.context["context"])
        assert (a.network(x, t, **a.context) - b.network(x, t, **b.context)).abs().max() < 1e-6
        assert torch.equal(a.latent.decode(x), b.latent.decode(x))
