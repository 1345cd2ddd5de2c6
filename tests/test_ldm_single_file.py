"""Original-layout (CompVis LDM / Stable Diffusion 1.x, 2.x) single files → diffusers / transformers
layouts (difflab.interop.ldm_single_file).

Tiny diffusers / transformers models with perturbed weights are written in the original layout by
this file's own inverse mappings (diffusers → LDM, from the documented rules and the models'
configs, not from the keys); the module must give back exactly the same state dict, and a config
with which the original class loads it strictly and computes the same outputs."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from difflab.interop.ldm_single_file import (  # noqa: E402
    clip_config_from_state,
    ldm_clip_to_transformers,
    ldm_scheduler_config,
    ldm_unet_to_diffusers,
    ldm_vae_to_diffusers,
    read_single_file,
    split_components,
    unet_config_from_ldm,
    vae_config_from_ldm,
)
from helpers import SD1, SD2, perturbed  # noqa: E402
from ldm_layout import file_state, to_ldm_unet, to_ldm_vae, to_open_clip  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = {**SD1, "num_class_embeds": 5}
PROJECTION = {**SD1, "class_embed_type": "projection", "projection_class_embeddings_input_dim": 12}
VAE = dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
CLIP = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=16)


def assert_same_state(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    different = [k for k in expected if got[k].shape != expected[k].shape or not torch.equal(got[k], expected[k])]
    assert not different, different[:5]


# ------------------------------------------------------------------------------------------------
# U-Net: diffusers → LDM, from the config (the module reads the levels from the keys instead)
# ------------------------------------------------------------------------------------------------

def unet_output(model, x, t, context, config):
    kw = {}
    if config.get("num_class_embeds"):
        kw["class_labels"] = torch.tensor([1, 4])
    elif config.get("class_embed_type") == "projection":
        kw["class_labels"] = torch.randn(2, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(x, t, encoder_hidden_states=context, **kw).sample


@pytest.mark.parametrize(("config", "heads"), [(SD1, {"heads": 4}), (SD2, {"head_width": 16}),
                                               (CLASSES, {"heads": 4}), (PROJECTION, {"heads": 4})],
                         ids=["sd1", "sd2", "classes", "projection"])
def test_unet_round_trip(config, heads):
    theirs = perturbed(diffusers.UNet2DConditionModel(**config))
    expected = theirs.state_dict()
    ldm = to_ldm_unet(expected, config)
    assert_same_state(ldm_unet_to_diffusers(ldm), expected)

    converted = unet_config_from_ldm(ldm, **heads, image_size=16, norm_groups=8)
    for name in ("in_channels", "out_channels", "layers_per_block", "cross_attention_dim"):
        assert converted[name] == config[name]
    assert converted["down_block_types"] == list(config["down_block_types"])
    assert converted["up_block_types"] == list(config["up_block_types"])
    assert converted["use_linear_projection"] == config.get("use_linear_projection", False)
    assert converted["transformer_layers_per_block"] == config.get("transformer_layers_per_block", 1)
    rebuilt = diffusers.UNet2DConditionModel(**converted).eval()
    rebuilt.load_state_dict(ldm_unet_to_diffusers(ldm), strict=True)
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 24, generator=g)
    t = torch.tensor([3, 998])
    torch.testing.assert_close(unet_output(rebuilt, x, t, context, config),
                               unet_output(theirs, x, t, context, config), rtol=0, atol=1e-6)


def test_unet_heads_follow_sd_conventions_or_ask():
    ldm = to_ldm_unet(diffusers.UNet2DConditionModel(**SD1).state_dict(), SD1)
    with pytest.raises(ValueError, match="neither SD 1.x's 768 nor SD 2.x's 1024: pass heads or head_width"):
        unet_config_from_ldm(ldm)
    sd1 = to_ldm_unet(diffusers.UNet2DConditionModel(**{**SD1, "cross_attention_dim": 768}).state_dict(), SD1)
    assert unet_config_from_ldm(sd1)["attention_head_dim"] == 8  # SD 1.x: 8 heads at every level
    wide = {**SD2, "cross_attention_dim": 1024, "block_out_channels": (64, 128), "attention_head_dim": (1, 2)}
    sd2 = to_ldm_unet(diffusers.UNet2DConditionModel(**wide).state_dict(), wide)
    assert unet_config_from_ldm(sd2)["attention_head_dim"] == [1, 2]  # SD 2.x: 64-channel heads
    with pytest.raises(ValueError, match="does not divide"):
        unet_config_from_ldm(ldm, head_width=24)


def test_unet_keys_it_cannot_map_are_named():
    ldm = to_ldm_unet(diffusers.UNet2DConditionModel(**SD1).state_dict(), SD1)
    ldm["model.diffusion_model.input_blocks.1.0.in_layers.9.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"cannot map: input_blocks\.1\.0\.in_layers\.9\.weight"):
        ldm_unet_to_diffusers(ldm)


# ------------------------------------------------------------------------------------------------
# Autoencoder
# ------------------------------------------------------------------------------------------------

def test_vae_round_trip():
    theirs = perturbed(diffusers.AutoencoderKL(**VAE))
    expected = theirs.state_dict()
    ldm = to_ldm_vae(expected, levels=2)
    assert "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight" in ldm  # the finest level, 64 → 32
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert_same_state(ldm_vae_to_diffusers(ldm), expected)

    config = vae_config_from_ldm(ldm, norm_groups=8)
    assert config["block_out_channels"] == [32, 64] and config["layers_per_block"] == 1
    assert config["latent_channels"] == 4 and config["scaling_factor"] == 0.18215
    rebuilt = diffusers.AutoencoderKL(**config).eval()
    rebuilt.load_state_dict(ldm_vae_to_diffusers(ldm), strict=True)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).sample, theirs(x).sample, rtol=0, atol=1e-6)


def test_vae_attention_inside_a_level_is_named():
    ldm = to_ldm_vae(diffusers.AutoencoderKL(**VAE).state_dict(), levels=2)
    ldm["first_stage_model.encoder.down.1.attn.0.q.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(ValueError, match=r"autoencoder has keys difflab cannot map: encoder\.down\.1\.attn\.0"):
        ldm_vae_to_diffusers(ldm)


# ------------------------------------------------------------------------------------------------
# Text encoder
# ------------------------------------------------------------------------------------------------

def clip_model(act: str, seed: int = 0):
    config = transformers.CLIPTextConfig(**CLIP, hidden_act=act)
    return perturbed(transformers.CLIPTextModel(config), seed)


def loaded_clip(state: dict, config: dict, folder):
    """The CLIPTextModel that transformers reads from ``state`` + ``config`` saved as a model folder,
    every tensor found and used."""
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    model, info = transformers.CLIPTextModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def clip_states(model, ids):
    with torch.no_grad():
        return model(ids, output_hidden_states=True)


@pytest.mark.parametrize("with_text_model", [True, False], ids=["text_model", "bare"])
def test_clip_sd1_round_trip(with_text_model, tmp_path):
    theirs = clip_model("quick_gelu")
    expected = file_state(theirs)
    prefix = "cond_stage_model.transformer."
    ldm = {prefix + (k if with_text_model else k.removeprefix("text_model.")): v for k, v in expected.items()}
    ldm[prefix + ("text_model." if with_text_model else "") + "embeddings.position_ids"] = torch.arange(16)[None]
    state, layout = ldm_clip_to_transformers(ldm)
    assert layout == "sd1"
    assert_same_state(state, expected)
    config = clip_config_from_state(state, layout, heads=4)
    assert config["hidden_act"] == "quick_gelu" and config["num_hidden_layers"] == 3
    rebuilt = loaded_clip(state, config, tmp_path / "text_encoder")
    ids = torch.randint(0, 99, (2, 16), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(clip_states(rebuilt, ids).last_hidden_state,
                               clip_states(theirs, ids).last_hidden_state, rtol=0, atol=1e-6)


def test_clip_sd2_round_trip_and_penultimate_layer(tmp_path):
    theirs = clip_model("gelu")
    expected = file_state(theirs)
    ldm = to_open_clip(expected)
    assert ldm["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    state, layout = ldm_clip_to_transformers(ldm)
    assert layout == "sd2"
    assert_same_state(state, expected)
    config = clip_config_from_state(state, layout, heads=4)
    assert config["hidden_act"] == "gelu" and config["max_position_embeddings"] == 16
    rebuilt = loaded_clip(state, config, tmp_path / "full")
    ids = torch.randint(0, 99, (2, 16), generator=torch.Generator().manual_seed(7))
    full = clip_states(theirs, ids)
    torch.testing.assert_close(clip_states(rebuilt, ids).last_hidden_state, full.last_hidden_state, rtol=0, atol=1e-6)

    # diffusers' layout: the last layer dropped, so last_hidden_state is the penultimate layer + ln_final
    short, _ = ldm_clip_to_transformers(ldm, penultimate=True)
    assert_same_state(short, {k: v for k, v in expected.items() if ".layers.2." not in k})
    config = clip_config_from_state(short, layout, heads=4)
    assert config["num_hidden_layers"] == 2
    rebuilt = loaded_clip(short, config, tmp_path / "penultimate")
    with torch.no_grad():
        penultimate = getattr(theirs, "text_model", theirs).final_layer_norm(full.hidden_states[-2])
    torch.testing.assert_close(clip_states(rebuilt, ids).last_hidden_state, penultimate, rtol=0, atol=1e-6)


def test_clip_heads_default_to_64_channel_heads():
    state, layout = ldm_clip_to_transformers(to_open_clip(file_state(clip_model("gelu"))))
    with pytest.raises(ValueError, match="hidden_size=32 is not a multiple"):
        clip_config_from_state(state, layout)
    wide = {k: torch.zeros(*v.shape[:-1], 1024) if k.endswith("token_embedding.weight") else v
            for k, v in state.items()}
    assert clip_config_from_state(wide, "sd2")["num_attention_heads"] == 16


# ------------------------------------------------------------------------------------------------
# Schedule
# ------------------------------------------------------------------------------------------------


def test_scheduler_config_from_the_schedule_buffers():
    assert ldm_scheduler_config({})["beta_schedule"] == "scaled_linear"
    sd = (torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2).float()
    config = ldm_scheduler_config({"betas": sd}, prediction="v_prediction")
    assert (config["beta_schedule"], config["beta_start"], config["beta_end"]) == ("scaled_linear", 0.00085, 0.012)
    assert config["trained_betas"] is None and config["prediction_type"] == "v_prediction"
    half = ldm_scheduler_config({"betas": sd.half()})  # a float16 file's rounded buffer
    assert (half["beta_schedule"], half["beta_start"], half["beta_end"]) == ("scaled_linear", 0.00085, 0.012)
    for dtype in (torch.float32, torch.float16):
        cumprod = ldm_scheduler_config({"alphas_cumprod": torch.cumprod(1 - sd.double(), 0).to(dtype)})
        assert (cumprod["beta_schedule"], cumprod["beta_start"], cumprod["trained_betas"]) == ("scaled_linear",
                                                                                               0.00085, None)
    ldm = ldm_scheduler_config({"betas": (torch.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2)})  # LDM's CelebA-HQ
    assert (ldm["beta_schedule"], ldm["beta_start"], ldm["beta_end"]) == ("scaled_linear", 0.0015, 0.0195)
    linear = ldm_scheduler_config({"betas": torch.linspace(1e-4, 0.02, 500)})
    assert (linear["beta_schedule"], linear["num_train_timesteps"]) == ("linear", 500)
    cosine = torch.cos(torch.linspace(0, 1.5, 100)).clamp(1e-3, 0.999)
    assert ldm_scheduler_config({"betas": cosine})["trained_betas"] == pytest.approx(cosine.tolist())
    with pytest.raises(ValueError, match="prediction='eps'"):
        ldm_scheduler_config({}, prediction="eps")


# ------------------------------------------------------------------------------------------------
# The file
# ------------------------------------------------------------------------------------------------


def test_split_components_places_every_key(tmp_path):
    state = {"model.diffusion_model.out.2.bias": torch.zeros(4), "first_stage_model.quant_conv.bias": torch.ones(8),
             "cond_stage_model.model.ln_final.bias": torch.ones(3), "betas": torch.full((10,), 0.01),
             "alphas_cumprod": torch.ones(10), "model_ema.decay": torch.tensor(0.9999),
             "model_ema.diffusion_modelout2bias": torch.zeros(4)}
    save_file(state, str(tmp_path / "sd.safetensors"))
    parts = split_components(read_single_file(tmp_path / "sd.safetensors"))
    assert list(parts.unet) == ["out.2.bias"] and list(parts.vae) == ["quant_conv.bias"]
    assert list(parts.text) == ["model.ln_final.bias"]
    assert sorted(parts.other) == ["alphas_cumprod", "betas", "model_ema.decay", "model_ema.diffusion_modelout2bias"]


@pytest.mark.parametrize("name", ["sd.ckpt", "sd.pt", "sd.bin", "sd.pth"])
def test_pickles_are_refused_with_the_conversion(name, tmp_path):
    (tmp_path / name).write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match=r"pickle, which difflab never loads .*safetensors\.torch\.save_file"):
        read_single_file(tmp_path / name)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors does not exist"):
        read_single_file(tmp_path / "nothing.safetensors")
    (tmp_path / "noise.safetensors").write_bytes(b"these bytes are not a safetensors header" * 4)
    with pytest.raises(ValueError, match="noise.safetensors is not a safetensors file"):
        read_single_file(tmp_path / "noise.safetensors")


def test_unknown_prefix_is_named(tmp_path):
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4), "control_model.zero_convs.0.0.weight":
               torch.zeros(2)}, str(tmp_path / "controlnet.safetensors"))
    with pytest.raises(ValueError, match=r"keys difflab cannot place: control_model\.zero_convs\.0\.0\.weight; "
                                         r"it is not a Stable Diffusion"):
        split_components(read_single_file(tmp_path / "controlnet.safetensors"))
