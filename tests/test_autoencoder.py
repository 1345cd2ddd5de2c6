"""Latent diffusion's autoencoders: shapes, the KL term, vector quantization (nearest codes,
straight-through gradient, EMA codebook updates, dead-code restarts), training through the shared
trainer with exact resume, the latent scale, the CLI commands and their errors."""

import json

import numpy as np
import pytest
import torch

from difflab.checkpoint import load_state
from difflab.cli import main as cli
from difflab.latent import load_autoencoder
from difflab.models import (
    AutoencoderConfig,
    AutoencoderKL,
    AutoencoderVQ,
    AutoencoderVQConfig,
    DiagonalGaussian,
    build_model,
    estimate_latent_scale,
)
from difflab.models.vq import VectorQuantizer
from difflab.training.config import load_config
from difflab.training.trainer import train
from helpers import TINY_AE

SMALL = dict(in_channels=3, model_channels=8, num_res_blocks=1, norm_groups=4)


def logged(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model_class", [AutoencoderKL, AutoencoderVQ])
@pytest.mark.parametrize("channel_mult,factor", [((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
def test_shapes_for_f4_and_f8(model_class, channel_mult, factor):
    config_class = AutoencoderConfig if model_class is AutoencoderKL else AutoencoderVQConfig
    cfg = config_class(image_size=32, channel_mult=channel_mult, z_channels=4, attention_resolutions=(16,), **SMALL)
    model = model_class(cfg)
    assert cfg.factor == factor and model.latent_shape == (4, 32 // factor, 32 // factor)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    encoded = model.encode(x)
    z = encoded.sample(torch.Generator().manual_seed(0)) if isinstance(encoded, DiagonalGaussian) else encoded
    assert z.shape == (2, 4, 32 // factor, 32 // factor)
    assert model.decode(z).shape == x.shape and model(x).reconstruction.shape == x.shape
    assert model.encode(torch.zeros(1, 3, 64, 64)) is not None  # any size divisible by f


def test_clear_errors_for_sizes_not_divisible_by_f():
    with pytest.raises(ValueError, match=r"AutoencoderConfig\.image_size=36 is not divisible by the downsampling "
                                         r"factor f=2\^\(levels-1\)=8"):
        build_model({"name": "autoencoder_kl", "preset": "kl-f8", "image_size": 36})
    model = build_model({"name": "autoencoder_vq", "preset": "tiny"})  # f = 2
    with pytest.raises(ValueError, match=r"image size \(7, 7\) is not divisible .* f=2"):
        model.encode(torch.zeros(1, 1, 7, 7))
    with pytest.raises(ValueError, match=r"takes images \(N, 1, H, W\)"):
        model.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown autoencoder_kl preset 'kl-f3'"):
        build_model({"name": "autoencoder_kl", "preset": "kl-f3"})


def test_kl_of_the_posterior():
    zero = DiagonalGaussian(torch.zeros(3, 8, 4, 4))  # μ = 0, log σ² = 0: N(0, I)
    assert torch.equal(zero.kl(), torch.zeros(3))
    moments = torch.randn(3, 8, 4, 4)
    posterior = DiagonalGaussian(moments)
    mean, logvar = moments.chunk(2, dim=1)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(posterior.kl(), expected)
    clamped = DiagonalGaussian(torch.cat([torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), -100.0)], dim=1))
    assert clamped.logvar.item() == -30.0
    noise = torch.randn(3, 4, 4, 4)
    torch.testing.assert_close(posterior.sample(noise=noise), mean + torch.exp(0.5 * logvar) * noise)


def test_nearest_code_matches_brute_force():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=37, dim=3)
    z = torch.randn(4, 3, 5, 5)
    q = quantizer(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = ((flat[:, None, :] - quantizer.codebook[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(q.indices.flatten(), brute)
    torch.testing.assert_close(q.z_q.permute(0, 2, 3, 1).reshape(-1, 3), quantizer.codebook[brute])
    assert torch.equal(quantizer.nearest(flat, chunk=7), brute)  # chunking changes nothing
    torch.testing.assert_close(q.commitment, 0.25 * ((quantizer.codebook[brute] - flat) ** 2).mean())
    counts = torch.bincount(brute, minlength=37).float() / len(brute)
    nonzero = counts[counts > 0]
    torch.testing.assert_close(q.perplexity, torch.exp(-(nonzero * nonzero.log()).sum()))
    assert q.usage.item() == pytest.approx(len(nonzero) / 37)


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = build_model({"name": "autoencoder_vq", "preset": "tiny"})
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    z_e = model.encode(x).detach().requires_grad_(True)
    q = model.quantize(z_e)
    q.z_q.sum().backward()
    assert torch.equal(z_e.grad, torch.ones_like(z_e))  # d z_q / d z_e = I (straight-through)
    model(x).reconstruction.square().sum().backward()
    assert model.encoder.stem.weight.grad.abs().sum() > 0


def test_ema_codebook_update_by_hand():
    quantizer = VectorQuantizer(codebook_size=2, dim=1, decay=0.5, epsilon=1e-5)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0], [10.0]]))
        quantizer.embed_sum.copy_(quantizer.codebook)
    q = quantizer(torch.tensor([1.0, 2.0, 9.0]).view(1, 1, 1, 3), update=True)
    assert q.indices.flatten().tolist() == [0, 0, 1]
    assert q.z_q.flatten().tolist() == [0.0, 0.0, 10.0]  # quantized with the codebook before the update
    # N = 0.5·[1, 1] + 0.5·[2, 1] = [1.5, 1];  m = 0.5·[0, 10] + 0.5·[1 + 2, 9] = [1.5, 9.5]
    assert quantizer.cluster_size.tolist() == [1.5, 1.0]
    assert quantizer.embed_sum.flatten().tolist() == [1.5, 9.5]
    n, eps = 2.5, 1e-5
    smoothed = [(1.5 + eps) / (n + 2 * eps) * n, (1.0 + eps) / (n + 2 * eps) * n]  # Laplace smoothing
    torch.testing.assert_close(quantizer.codebook.flatten(), torch.tensor([1.5 / smoothed[0], 9.5 / smoothed[1]]))
    before = quantizer.codebook.clone()
    quantizer(torch.tensor([1.0, 2.0, 9.0]).view(1, 1, 1, 3), update=False)
    assert torch.equal(quantizer.codebook, before)


def test_dead_codes_restart_on_encoder_outputs():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=4, dim=2, decay=0.9, dead_code_threshold=1.0)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]]))
        quantizer.embed_sum.copy_(quantizer.codebook)
    z = torch.tensor([[0.1, 0.2], [0.3, -0.1], [-0.2, 0.0]]).T.reshape(1, 2, 1, 3)
    quantizer(z, update=True)
    batch = {tuple(v) for v in z.reshape(2, 3).T.tolist()}
    assert all(tuple(quantizer.codebook[k].tolist()) in batch for k in (1, 2, 3))  # unused codes moved onto the batch
    assert quantizer.cluster_size[1:].tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(quantizer.embed_sum[1:], quantizer.codebook[1:])


@pytest.mark.parametrize("name,crop", [("autoencoder_kl", None), ("autoencoder_vq", None), ("autoencoder_kl", 4)])
def test_trains_through_the_trainer_and_resumes_exactly(tmp_path, name, crop):
    overrides = [o.replace("autoencoder_kl", name) for o in TINY_AE] + ([f"data.random_crop={crop}"] if crop else [])
    full = train(load_config(None, overrides + [f"train.out_dir={tmp_path / 'full'}", "train.steps=6",
                                                "train.sample_every=3"]), progress=False)
    assert (tmp_path / "full" / "samples" / "step-0000006.png").exists()  # reconstruction grids
    part = load_config(None, overrides + [f"train.out_dir={tmp_path / 'part'}", "train.steps=3"])
    train(part, progress=False)
    part.train.steps = 6
    train(part, resume=tmp_path / "part", progress=False)
    full_log, part_log = logged(tmp_path / "full"), logged(tmp_path / "part")
    keys = ["loss", "recon_l1", "psnr"] + (
        ["kl"] if name == "autoencoder_kl" else ["commitment", "perplexity", "codebook_usage"])
    assert [[r[k] for k in keys] for r in full_log] == [[r[k] for k in keys] for r in part_log]

    saved = json.loads((full / "config.json").read_text())
    assert saved["kind"] == "autoencoder" and saved["model"]["name"] == name and saved["step"] == 6
    assert saved["image_shape"] == [1, 8, 8] and saved["latent_shape"] == [2, 4, 4]
    assert saved["psnr_split"] == "test" and saved["psnr_images"] == 64 and saved["latent_scale"] > 0
    model, info = load_autoencoder(tmp_path / "full")
    assert isinstance(model, AutoencoderKL if name == "autoencoder_kl" else AutoencoderVQ) and not model.training
    assert info.latent_scale == saved["latent_scale"] and info.latent_shape == (2, 4, 4) and info.psnr == saved["psnr"]
    with pytest.raises(ValueError, match="'autoencoder' checkpoint, expected a 'diffusion'"):
        load_state(tmp_path / "full")  # what `difflab train --resume` or sampling would read


def test_random_crop_errors(tmp_path):
    from difflab.training.config import ConfigError

    for crop, message in ((5, "multiple of the autoencoder's factor f=2"), (10, "between 2 and the image side 8")):
        config = load_config(None, TINY_AE + [f"data.random_crop={crop}", "train.steps=1",
                                              f"train.out_dir={tmp_path / str(crop)}"])
        with pytest.raises(ConfigError, match=message):
            train(config, progress=False)
    diffusion = load_config(None, ["data.dataset=digits", "data.random_crop=4", "train.steps=1",
                                   f"train.out_dir={tmp_path / 'unet'}"])
    with pytest.raises(ConfigError, match="data.random_crop trains autoencoders on crops"):
        train(diffusion, progress=False)


def test_latent_scale_gives_unit_variance():
    from difflab.data import load_dataset, to_float

    torch.manual_seed(0)
    images = load_dataset("digits", "test").images[:100]
    vq = build_model({"name": "autoencoder_vq", "preset": "tiny"}).eval()
    scale = estimate_latent_scale(vq, images, batch_size=32)
    with torch.no_grad():
        z = vq.encode(to_float(images))
    assert (z * scale).std().item() == pytest.approx(1.0, rel=1e-4)
    kl = build_model({"name": "autoencoder_kl", "preset": "tiny"}).eval()
    scale = estimate_latent_scale(kl, images)
    assert scale == estimate_latent_scale(kl, to_float(images))  # uint8 or float images, same seed
    with torch.no_grad():
        z = kl.encode(to_float(images)).sample(torch.Generator().manual_seed(1))
    assert (z * scale).std().item() == pytest.approx(1.0, rel=0.02)  # another posterior sample


def test_cli_train_autoencoder_and_reconstruct(tmp_path, capsys):
    config = tmp_path / "ae.yaml"
    config.write_text("model:\n  name: autoencoder_vq\n  preset: tiny\ntrain:\n  steps: 3\n")
    sets = []
    for item in TINY_AE[3:]:
        sets += ["--set", item]
    assert cli(["train-autoencoder", str(config), *sets, "--no-progress", "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "on 64 images of test" in printed and "latent scale" in printed
    out = tmp_path / "recon"
    assert cli(["reconstruct", str(tmp_path / "run"), "--data", "digits:test", "--n", "20", "--grid", "6",
                "--out", str(out)]) == 0
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (20, 8, 8, 1) and samples.dtype == np.uint8 and (out / "grid.png").exists()
    assert "rFID: difflab eval" in capsys.readouterr().out

    diffusion = tmp_path / "diffusion.yaml"
    diffusion.write_text("model:\n  name: unet\n")
    assert cli(["train-autoencoder", str(diffusion)]) == 2
    assert "set model.name to one of autoencoder_kl, autoencoder_vq" in capsys.readouterr().err
    assert cli(["reconstruct", str(tmp_path / "nowhere"), "--data", "digits:test"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shipped_autoencoder_configs_build():
    from difflab.training.objectives import autoencoder_spec

    class Emoji:  # the shape of the emoji set, without rendering it
        channels, resolution = 3, 64

    for file, model_class in (("kl-emoji64", AutoencoderKL), ("vq-emoji64", AutoencoderVQ),
                              ("kl-emoji64-cpu", AutoencoderKL)):
        config = load_config(f"configs/autoencoder-{file}.yaml")
        model = build_model(autoencoder_spec(config, Emoji))
        assert isinstance(model, model_class) and model.latent_shape == (3, 16, 16)
