"""Training objectives: model.name picks one, the diffusion record is a ModelRecord, config
errors name the key, and a new objective is a class that `train` takes as it is (with the
loop's determinism, resume and checkpoints for free)."""

import json

import pytest
import torch

from difflab import process
from difflab.checkpoint import ModelRecord, load_state
from difflab.training.config import ConfigError, load_config
from difflab.training.objectives import (
    AutoencoderObjective,
    DiffusionObjective,
    NoisyClassifierObjective,
    Objective,
    StepLoss,
    objective_for,
)
from difflab.training.trainer import train
from helpers import TINY, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def logged(run, key="loss"):
    return [json.loads(line)[key] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_model_name_picks_the_objective():
    for name, expected in [("unet", DiffusionObjective), ("dit", DiffusionObjective),
                           ("noisy_classifier", NoisyClassifierObjective), ("autoencoder_kl", AutoencoderObjective),
                           ("autoencoder_vq", AutoencoderObjective)]:
        assert objective_for(load_config(None, [f"model.name={name}"])) is expected


def test_a_diffusion_checkpoint_is_a_model_record_with_no_unknown_keys(tmp_path):
    train(tiny_config(tmp_path, "train.steps=1"), progress=False)
    saved, _, _ = load_state(tmp_path)
    record = ModelRecord.from_dict(saved)
    assert record.other == {} and record.kind == "diffusion" and record.step == 1 and record.init_from is None
    assert record.num_classes == 10 and record.image_shape == (1, 8, 8) and record.model["name"] == "unet"


def test_config_errors_of_the_objectives_name_the_key(tmp_path):
    from PIL import Image

    folder = tmp_path / "flat"  # an image folder without class sub-folders: no labels
    folder.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), 40 * i).save(folder / f"{i}.png")
    with pytest.raises(ConfigError, match="data.class_conditional is true but dataset .* has no class labels"):
        train(tiny_config(tmp_path / "a", f"data.dataset={folder}"), progress=False)
    classifier = [o.replace("model.name=unet", "model.name=noisy_classifier") for o in TINY]
    with pytest.raises(ConfigError, match="a noisy classifier needs class labels"):
        train(load_config(None, classifier + [f"data.dataset={folder}", f"train.out_dir={tmp_path / 'b'}"]),
              progress=False)
    with pytest.raises(ConfigError, match="takes no captions: set data.text_conditional=false"):
        train(load_config(None, classifier + ["data.text_conditional=true", f"train.out_dir={tmp_path / 'c'}"]),
              progress=False)


class HandWrittenEpsilonLoss(DiffusionObjective):
    """DDPM's L_simple written out by hand, with the mean t logged: the diffusion objective's inputs
    (x0, t, ε, cond) in another loss."""

    def loss(self, net, inputs):
        x0, t, noise = inputs["x0"], inputs["t"], inputs["noise"]
        x_t = process.q_sample(self.schedule, x0, t, noise)
        eps = net(x_t, t.to(x0), **inputs["cond"])
        return StepLoss((eps.float() - noise).square().mean(), {"mean_t": t.float().mean()})


def test_a_subclass_changes_only_the_loss(tmp_path):
    train(tiny_config(tmp_path / "default", "train.steps=3"), progress=False)
    train(tiny_config(tmp_path / "custom", "train.steps=3"), objective=HandWrittenEpsilonLoss, progress=False)
    assert logged(tmp_path / "custom") == pytest.approx(logged(tmp_path / "default"), rel=1e-5)
    assert all(0 <= t < 100 for t in logged(tmp_path / "custom", "mean_t"))


class Denoise(Objective):
    """A toy objective written against the base class: the U-Net at t = 0 learns x0 from
    x0 + 0.2·ε. Its own checkpoint kind; no preview."""

    kind = "toy_denoiser"

    def model_spec(self):
        channels, _, side = self.data.shape
        return {"name": "unet", **self.config.model.options, "in_channels": channels, "image_size": side}

    def draw(self, x0, idx, step, generator):
        return {"x0": x0, "noise": torch.randn(x0.shape, generator=generator, device=x0.device)}

    def loss(self, net, inputs):
        x0 = inputs["x0"]
        denoised = net(x0 + 0.2 * inputs["noise"], torch.zeros(len(x0)))
        return StepLoss((denoised - x0).square().mean())

    def checkpoint_config(self, init_from=None):
        return {"model": self.spec, "train_config": self.config.to_dict(), "init_from": init_from}


def test_a_new_objective_trains_resumes_exactly_and_fine_tunes_through_train(tmp_path):
    full, part, tuned = tmp_path / "full", tmp_path / "part", tmp_path / "tuned"
    train(tiny_config(full, "train.steps=4"), objective=Denoise, progress=False)
    train(tiny_config(part, "train.steps=2"), objective=Denoise, progress=False)
    train(tiny_config(part, "train.steps=4"), objective=Denoise, resume=part, progress=False)
    assert logged(part) == logged(full) and logged(full)[-1] < logged(full)[0]
    saved, weights, _ = load_state(full, kind="toy_denoiser")
    assert saved["step"] == 4 and "time_embed.mlp.0.weight" in weights["model"]
    train(tiny_config(tuned, "train.steps=1"), objective=Denoise, init_from=full, progress=False)
    assert load_state(tuned, kind="toy_denoiser")[0]["init_from"]["step"] == 4
