"""DreamBooth (issue 22, item 2): prior preservation's class images (generated once, cached), the
two-term loss, the full model as a normal run, and the LoRA variant."""

import json

import pytest
import torch

from difflab.checkpoint import weights_sha256
from difflab.cli import main as cli
from difflab.pipelines import DiffusionModel, generate
from difflab.training.config import ConfigError, load_config
from difflab.training.objectives import DreamBoothObjective
from difflab.training.objectives import dreambooth as dreambooth_module
from difflab.training.trainer import train
from helpers import TINY, pictures, text_run

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = ["data.resolution=8", "data.channels=1", "optim.batch_size=4", "optim.lr=0.01", "train.steps=3",
            "train.log_every=1", "train.sample_every=3", "train.num_preview=2", "dreambooth.prior_images=6"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return text_run(tmp_path_factory.mktemp("db"), "small")


def test_full_dreambooth_with_prior_preservation(base, tmp_path):
    out = tmp_path / "db"
    sets = sum((["--set", s] for s in SETTINGS), [])
    assert cli(["train-dreambooth", "--base", str(base), "--images", str(pictures(tmp_path / "pics")),
                "--instance-prompt", "a photo of a sks boot", "--class-prompt", "a photo of a boot", *sets,
                "--out", str(out), "--no-progress", str(write_config(tmp_path))]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("instance_loss" in r and "prior_loss" in r for r in rows)
    assert abs(rows[0]["loss"] - rows[0]["instance_loss"] - rows[0]["prior_loss"]) < 1e-5  # lambda = 1
    assert len(list((out / "class-images").glob("*.png"))) == 6
    tuned, original = DiffusionModel.load(out), DiffusionModel.load(base)
    assert tuned.record.init_from["weights_sha256"] == weights_sha256(original.network.state_dict())
    assert tuned.record.trained_with_label_dropout  # the base's CFG carries over
    assert weights_sha256(tuned.network.state_dict()) != weights_sha256(original.network.state_dict())
    images, _ = generate(tuned, 2, prompts=["a photo of a sks boot"], steps=2)
    assert images.shape == (2, 1, 8, 8)


def write_config(tmp_path):
    path = tmp_path / "db.yaml"
    path.write_text("train:\n  steps: 3\n")
    return path


def test_class_images_are_generated_once_and_reused(base, tmp_path, monkeypatch):
    model = DiffusionModel.load(base)
    first = dreambooth_module.class_images(model, "a photo of a boot", 3, tmp_path, 0, "hash")

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached class images should have been read")

    monkeypatch.setattr(dreambooth_module, "generate", no_generation)
    assert torch.equal(dreambooth_module.class_images(model, "a photo of a boot", 3, tmp_path, 0, "hash"), first)
    with pytest.raises(AssertionError):  # another base: made again
        dreambooth_module.class_images(model, "a photo of a boot", 3, tmp_path, 0, "other hash")


def test_dreambooth_lora_writes_adapters_and_prior_needs_text(base, tmp_path):
    out = tmp_path / "dbl"
    assert cli(["train-dreambooth", str(write_config(tmp_path)), "--base", str(base), "--images",
                str(pictures(tmp_path / "pics")), "--instance-prompt", "a photo of a sks boot", "--class-prompt",
                "a photo of a boot", "--lora", "--set", "lora.targets=['*.attn.qkv', '*.proj_out']",
                *sum((["--set", s] for s in SETTINGS), []), "--out", str(out), "--no-progress"]) == 0
    assert (out / "lora.safetensors").is_file()
    assert json.loads((out / "checkpoint" / "config.json").read_text())["kind"] == "lora"
    class_base = tmp_path / "class-base"
    train(load_config(None, TINY + [f"train.out_dir={class_base}", "train.steps=1"]), progress=False)
    config = load_config(None, [f"dreambooth.base={class_base}", "dreambooth.class_name='3'",
                                "dreambooth.class_prompt=a digit", f"data.dataset={pictures(tmp_path / 'p2')}",
                                "data.resolution=8", "optim.batch_size=4", f"train.out_dir={tmp_path / 'x'}"])
    with pytest.raises(ConfigError, match="needs a text-conditioned base"):
        train(config, progress=False, objective=DreamBoothObjective)
