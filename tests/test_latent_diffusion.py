"""Latent diffusion end to end: a tiny autoencoder, diffusion in its scaled latents (cached or
encoded on the fly), one checkpoint holding both, and `difflab sample` decoding to pixels."""

import json

import numpy as np
import pytest
import torch

from difflab.cli import main as cli
from difflab.latent import LatentSpace
from difflab.pipelines import DiffusionModel, generate
from helpers import TINY, TINY_AE


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae")
    config = root / "ae.yaml"
    config.write_text("model:\n  name: autoencoder_kl\n  preset: tiny\ntrain:\n  steps: 3\n")
    sets = sum((["--set", x] for x in TINY_AE[3:]), [])
    assert cli(["train-autoencoder", str(config), *sets, "--no-progress", "--out", str(root / "run")]) == 0
    run = root / "run"
    return run


def latent_run(tmp_path, autoencoder, *extra):
    # digits 8x8 → tiny KL autoencoder (f = 2, z = 2) → 4x4x2 latents
    sets = sum((["--set", x.replace("attention_resolutions: [4]", "attention_resolutions: [2]")] for x in TINY), [])
    out = tmp_path / "latent"
    assert cli(["train", *sets, "--set", f"data.autoencoder={autoencoder}", "--set", "train.steps=3",
                *sum((["--set", x] for x in extra), []), "--no-progress", "--out", str(out)]) == 0
    return out


def test_latent_space_scales_and_round_trips_shapes(autoencoder):
    latent = LatentSpace.from_checkpoint(autoencoder)
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    z = latent.encode(images, generator=torch.Generator().manual_seed(0))
    assert z.shape == (5, 2, 4, 4) and latent.latent_shape == (2, 4, 4)
    raw = latent.autoencoder.encode(images.float() / 127.5 - 1).sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, raw * latent.scale)
    assert latent.decode(z).shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match="takes images of shape"):
        latent.encode(torch.zeros(1, 1, 16, 16, dtype=torch.uint8))


@pytest.mark.parametrize("cache", ["true", "false"])
def test_train_in_latents_and_sample_pixels_from_one_checkpoint(tmp_path, autoencoder, cache):
    run = latent_run(tmp_path, autoencoder, f"data.latent_cache={cache}", "data.hflip=true")
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    assert config["image_shape"] == [2, 4, 4] and config["model"]["in_channels"] == 2
    assert config["latent"]["image_shape"] == [1, 8, 8] and (run / "checkpoint" / "autoencoder.safetensors").exists()
    model = DiffusionModel.load(run)
    images, labels = generate(model, 4, steps=3, class_index=2)
    assert images.shape == (4, 1, 8, 8) and images.dtype == torch.uint8 and labels.tolist() == [2] * 4
    out = tmp_path / "samples"
    assert cli(["sample", str(run), "--n", "3", "--steps", "2", "--out", str(out)]) == 0
    assert np.load(out / "samples.npz")["samples"].shape == (3, 8, 8, 1)


def test_latent_run_logs_finite_losses_and_bpd_refuses_it(tmp_path, autoencoder):
    a = latent_run(tmp_path / "a", autoencoder, "data.latent_cache=true")
    losses = [json.loads(line)["loss"] for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert cli(["bpd", str(a), "--data", "digits:test", "--n", "4"]) == 2  # bits/dim is for pixel models


def test_previews_of_a_latent_model_do_not_clip_latents(tmp_path):
    """x̂₀ = 3 in latent space decodes to white (3/3); clipped to 1 first it would be grey (1/3)."""
    from PIL import Image

    from difflab.checkpoint import ModelRecord
    from difflab.pipelines.preview import preview_grid
    from difflab.schedules import linear

    class ThirdDecoder:
        def decode(self, z):
            return z / 3

    class Three(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            return torch.full_like(x, 3.0)

    record = ModelRecord(kind="diffusion", model={}, schedule=linear().to_config(), image_shape=(1, 4, 4),
                         prediction="x0", train_config={"sample": {"steps": 2}})
    path = preview_grid(Three(), record, tmp_path / "grid.png", n=2, seed=0, latent=ThirdDecoder())
    grid = np.asarray(Image.open(path).convert("L"))
    assert grid.max() == 255  # the samples are white, not the grey of clipped latents


def test_controlnet_on_a_latent_base_reads_pixel_control_images(tmp_path, autoencoder):
    """The control image stays at pixel resolution (8x8); the hint encoder downsamples it by the
    autoencoder's factor (2) to the latents' 4x4, and the samples decode to pixels."""
    from difflab.pipelines.controlnet import Control, ControlNetModel
    from difflab.pipelines.img2img import InitImages

    base = latent_run(tmp_path, autoencoder, "data.latent_cache=true", "data.hflip=false")
    net = tmp_path / "cn"
    sets = sum((["--set", x.replace("attention_resolutions: [4]", "attention_resolutions: [2]")] for x in TINY), [])
    config = tmp_path / "cn.yaml"
    config.write_text("controlnet:\n  control: {kind: canny, sigma: 1.0}\n  hint_widths: [4, 8]\n")
    assert cli(["train-controlnet", str(config), "--base", str(base), *sets, "--set", f"data.autoencoder={autoencoder}",
                "--set", "data.hflip=false", "--set", "train.steps=2", "--no-progress", "--out", str(net)]) == 0
    checkpoint = json.loads((net / "checkpoint" / "config.json").read_text())
    assert checkpoint["model"]["hint_factor"] == 2 and checkpoint["image_shape"] == [2, 4, 4]
    edges = (torch.rand(3, 1, 8, 8) > 0.7).to(torch.uint8) * 255
    control = Control(ControlNetModel.load(net), InitImages(edges, [None] * 3), 1.0)
    model = DiffusionModel.load(base)
    images, _ = generate(model, 3, steps=2, class_index=1, controls=[control])
    assert images.shape == (3, 1, 8, 8) and images.dtype == torch.uint8
    off, _ = generate(model, 3, steps=2, class_index=1,
                      controls=[Control(ControlNetModel.load(net), InitImages(edges, [None] * 3), 0.0)])
    plain, _ = generate(model, 3, steps=2, class_index=1)
    assert torch.equal(off, plain)  # scale 0 is the base, bit for bit, in latent space too


def test_random_placement_moves_pixels_before_encoding_and_refuses_a_latent_cache(tmp_path, autoencoder, capsys):
    run = latent_run(tmp_path / "a", autoencoder, "data.latent_cache=false", "data.random_placement=[0.5, 1]")
    assert json.loads((run / "checkpoint" / "config.json").read_text())["step"] == 3
    sets = sum((["--set", x.replace("attention_resolutions: [4]", "attention_resolutions: [2]")] for x in TINY), [])
    code = cli(["train", *sets, "--set", f"data.autoencoder={autoencoder}", "--set", "data.latent_cache=true",
                "--set", "data.random_placement=[0.5, 1]", "--no-progress", "--out", str(tmp_path / "b")])
    assert code == 2 and "set data.latent_cache: false" in capsys.readouterr().err
