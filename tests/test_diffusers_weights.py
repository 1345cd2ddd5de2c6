"""diffusers' AutoencoderKL loaded into difflab's: the same encoder moments and decoder output on
the same weights (a peer check of the shared LDM trunk), old attention names, clear errors."""

import json

import pytest
import torch

from difflab.models.autoencoder import AutoencoderConfig, AutoencoderKL
from difflab.models.diffusers_weights import (
    autoencoder_kl_from_diffusers,
    config_from_diffusers,
    load_diffusers_autoencoder_kl,
)

diffusers = pytest.importorskip("diffusers", reason="pip install diffusers (the dev extra)")


def randomized(model):
    """Random weights everywhere (zero-initialized layers would hide wrong mappings)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


@pytest.mark.parametrize("widths,blocks", [((8, 16), 1), ((8, 16, 16), 2)])
def test_outputs_match_diffusers(widths, blocks):
    theirs = randomized(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths), block_out_channels=widths, layers_per_block=blocks,
        latent_channels=3, norm_num_groups=4, sample_size=16))
    ours = autoencoder_kl_from_diffusers(dict(theirs.config), theirs.state_dict()).eval()
    assert ours.config.downsample_padding == "ldm" and ours.config.factor == 2 ** (len(widths) - 1)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        their_posterior = theirs.encode(x).latent_dist
        posterior = ours.encode(x)
        torch.testing.assert_close(posterior.mean, their_posterior.mean, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(posterior.logvar, their_posterior.logvar, atol=1e-4, rtol=1e-4)
        z = their_posterior.mean
        torch.testing.assert_close(ours.decode(z), theirs.decode(z).sample, atol=1e-4, rtol=1e-4)
    # the default symmetric padding is a different network: the check above can fail
    symmetric = AutoencoderKL(AutoencoderConfig(**{**ours.config.__dict__, "downsample_padding": "symmetric"}))
    symmetric.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert not torch.allclose(symmetric.eval().encode(x).mean, posterior.mean, atol=1e-3)


def test_folder_loading_old_attention_names_and_errors(tmp_path):
    from safetensors.torch import save_file

    theirs = randomized(diffusers.AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=4,
                                                down_block_types=("DownEncoderBlock2D",) * 2,
                                                up_block_types=("UpDecoderBlock2D",) * 2, sample_size=8))
    old_names = {k.replace("to_q.", "query.").replace("to_k.", "key.").replace("to_v.", "value.")
                 .replace("to_out.0.", "proj_attn."): v.contiguous() for k, v in theirs.state_dict().items()}
    save_file(old_names, tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **dict(theirs.config),
                                                      "scaling_factor": 0.5}))
    ours, scale = load_diffusers_autoencoder_kl(tmp_path)
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours.eval().reconstruct(x), theirs.decode(theirs.encode(x).latent_dist.mean).sample,
                                   atol=1e-4, rtol=1e-4)
    assert scale == 0.5

    with pytest.raises(FileNotFoundError, match="a .bin file is not read"):
        load_diffusers_autoencoder_kl(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="down_block_types"):
        config_from_diffusers({**dict(theirs.config), "down_block_types": ["AttnDownEncoderBlock2D"] * 2})
    with pytest.raises(ValueError, match="do not fit"):
        autoencoder_kl_from_diffusers({**dict(theirs.config), "layers_per_block": 2}, theirs.state_dict())


def test_import_autoencoder_command_writes_a_usable_run(tmp_path, capsys):
    from safetensors.torch import save_file

    from difflab.cli import main as cli
    from difflab.latent import load_autoencoder

    theirs = randomized(diffusers.AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                                norm_num_groups=4, latent_channels=2, sample_size=32,
                                                down_block_types=("DownEncoderBlock2D",) * 2,
                                                up_block_types=("UpDecoderBlock2D",) * 2))
    folder = tmp_path / "vae"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()},
              folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **dict(theirs.config)}))
    assert cli(["import-autoencoder", str(folder), "--out", str(tmp_path / "run"), "--image-size", "8"]) == 0
    assert "latent scale 0.18215" in capsys.readouterr().out
    model, info = load_autoencoder(tmp_path / "run")
    assert info.image_shape == (1, 8, 8) and info.latent_shape == (2, 4, 4) and info.latent_scale == 0.18215
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(x), theirs.decode(theirs.encode(x).latent_dist.mean).sample,
                                   atol=1e-4, rtol=1e-4)
    assert cli(["reconstruct", str(tmp_path / "run"), "--data", "digits:test", "--n", "4", "--grid", "0",
                "--out", str(tmp_path / "recon")]) == 0
    assert cli(["import-autoencoder", str(folder), "--out", str(tmp_path / "bad"), "--image-size", "9"]) == 2
    assert "not divisible by the downsampling factor" in capsys.readouterr().err
    assert cli(["import-autoencoder", str(tmp_path / "nowhere"), "--out", str(tmp_path / "bad")]) == 2
