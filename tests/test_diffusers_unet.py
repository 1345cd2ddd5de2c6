"""diffusers' UNet2DModel / UNet2DConditionModel ↔ difflab's UNet (difflab.models.diffusers_unet):
tiny random-weight models built with diffusers' own classes, saved with save_pretrained, loaded by
our importer; outputs compared on the same inputs, and the export read back by diffusers."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from difflab.models.diffusers_unet import (  # noqa: E402
    load_diffusers_unet,
    save_diffusers_unet,
    unet_config_from_diffusers,
)
from difflab.models.unet import UNet, UNetConfig  # noqa: E402
from helpers import SD1, SD2, perturbed  # noqa: E402

DDPM = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None, norm_num_groups=8,
            flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6)


def saved(model, path):
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.mark.parametrize("config", [SD1, SD2], ids=["sd1", "sd2"])
def test_unet2d_condition_equals_diffusers(config, tmp_path):
    theirs = perturbed(diffusers.UNet2DConditionModel(**config))
    ours = load_diffusers_unet(saved(theirs, tmp_path / "unet")).eval()
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 24, generator=g)
    for t in (torch.tensor([0, 999]), torch.tensor([17.5, 500.25])):
        with torch.no_grad():
            expected = theirs(x, t, encoder_hidden_states=context).sample
            got = ours(x, t.float(), context=context)
        assert (got - expected).abs().max() < 1e-4


@pytest.mark.parametrize("extra", [{}, {"num_class_embeds": 5}, {"resnet_time_scale_shift": "scale_shift",
                                                                 "attn_norm_num_groups": 8, "attention_head_dim": 16}],
                         ids=["ddpm", "classes", "scale-shift"])
def test_unet2d_equals_diffusers(extra, tmp_path):
    theirs = perturbed(diffusers.UNet2DModel(**{**DDPM, **extra}))
    ours = load_diffusers_unet(saved(theirs, tmp_path / "unet")).eval()
    g = torch.Generator().manual_seed(2)
    x, labels = torch.randn(3, 3, 16, 16, generator=g), torch.tensor([0, 4, 2])
    kw = {"class_labels": labels} if extra.get("num_class_embeds") else {}
    with torch.no_grad():
        expected = theirs(x, torch.tensor([3, 250, 998]), **kw).sample
        got = ours(x, torch.tensor([3.0, 250.0, 998.0]), **kw)
    assert (got - expected).abs().max() < 1e-4


def test_learned_sigma_splits_the_output_channels(tmp_path):
    theirs = perturbed(diffusers.UNet2DModel(**{**DDPM, "out_channels": 6}))
    ours = load_diffusers_unet(saved(theirs, tmp_path / "unet"), learned_sigma=True)
    assert ours.config.learned_sigma and ours.config.out_channels == 3


@pytest.mark.parametrize("cfg", [
    UNetConfig(in_channels=1, image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), num_heads=2, norm_groups=8, num_classes=10),  # the digits demo's
    UNetConfig(in_channels=4, image_size=8, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(8, 4), num_head_channels=8, norm_groups=8, context_dim=12,
               attention_bias=False, transformer_norm_eps=1e-6, concat_channels=5, learned_sigma=True),
], ids=["class-unet", "text-unet"])
def test_export_round_trip(cfg, tmp_path):
    ours = perturbed(UNet(cfg), seed=3)
    folder = save_diffusers_unet(ours, tmp_path / "unet")
    back = load_diffusers_unet(folder)
    assert back.config == cfg
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    cls = diffusers.UNet2DConditionModel if cfg.context_dim else diffusers.UNet2DModel
    theirs = cls.from_pretrained(folder).eval()
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(2, cfg.in_channels, 8, 8, generator=g), torch.tensor([10.0, 900.0])
    with torch.no_grad():
        if cfg.context_dim:
            concat, context = torch.randn(2, 5, 8, 8, generator=g), torch.randn(2, 3, 12, generator=g)
            expected = theirs(torch.cat([x, concat], 1), t, encoder_hidden_states=context).sample
            got = ours(x, t, context=context, concat=concat)
        else:
            labels = torch.tensor([1, 10])  # a class and the null label
            expected, got = theirs(x, t, class_labels=labels).sample, ours(x, t, class_labels=labels)
    assert (got - expected).abs().max() < 1e-4


def test_difflab_text_layout_exports_only_without_self_attention_bias(tmp_path):
    cfg = UNetConfig(in_channels=4, image_size=8, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,), num_heads=2, norm_groups=8, context_dim=12)
    with pytest.raises(ValueError, match="no equivalent of difflab's attention_bias=None"):
        save_diffusers_unet(UNet(cfg), tmp_path / "unet")


@pytest.mark.parametrize("change, message", [
    ({"only_cross_attention": True}, "only_cross_attention=True"),
    ({"down_block_types": ("CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D")}, "SimpleCrossAttnDownBlock2D"),
    ({"up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")}, "do not mirror"),
    ({"attention_head_dim": (2, 3)}, "heads of different widths"),
    ({"layers_per_block": (1, 2)}, "varies per level"),
])
def test_unsupported_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        unet_config_from_diffusers({"_class_name": "UNet2DConditionModel", **SD1, **change})


def test_bad_weights_and_files(tmp_path):
    theirs = diffusers.UNet2DModel(**DDPM)
    folder = saved(theirs, tmp_path / "unet")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "block_out_channels": [32, 64, 128]}))
    with pytest.raises(ValueError, match="shapes disagree with the config|missing|unexpected"):
        load_diffusers_unet(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="a pickle, which difflab never loads"):
        load_diffusers_unet(folder)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_diffusers_unet(tmp_path)
