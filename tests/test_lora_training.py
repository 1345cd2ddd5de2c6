"""Training a LoRA beside a frozen base (issue 22, items 1 and 4): train-lora on a folder of
pictures, the adapters file, sampling with --lora at scales, fusing, and a changed base."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from difflab import Pipeline
from difflab.checkpoint import weights_sha256
from difflab.cli import main as cli
from difflab.errors import UserError
from difflab.pipelines import DiffusionModel
from difflab.training.config import ConfigError, load_config
from difflab.training.objectives import LoraObjective
from difflab.training.trainer import train
from helpers import TINY, pictures, text_run, tiny_autoencoder

pytestmark = pytest.mark.usefixtures("one_thread")


def lora_config(tmp_path):
    path = tmp_path / "lora.yaml"
    path.write_text("data:\n  resolution: 8\n  channels: 1\noptim:\n  batch_size: 4\n  lr: 0.01\n"
                    "train:\n  steps: 3\n  sample_every: 3\n  num_preview: 2\n  log_every: 1\nlora:\n  rank: 2\n"
                    # a base trained 3 steps has its attention outputs still at zero: adapt those too
                    "  targets: ['*.attn.qkv', '*.proj_out']\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = text_run(root, "small")
    out = root / "lora-run"
    assert cli(["train-lora", str(lora_config(root)), "--base", str(base), "--images", str(pictures(root / "pics")),
                "--prompt", "a photo of a sks boot", "--out", str(out), "--no-progress"]) == 0
    return root, base, out


def test_train_lora_writes_small_adapters_and_leaves_the_base(trained):
    root, base, out = trained
    assert (out / "lora.safetensors").is_file() and (out / "samples").is_dir()
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["kind"] == "lora" and config["prompt"] == "a photo of a sks boot"
    model = DiffusionModel.load(base)
    assert config["base"]["weights_sha256"] == weights_sha256(model.network.state_dict())
    pipe = Pipeline(model)
    lora = pipe.load_lora(out)
    assert lora.num_parameters() < 0.3 * sum(p.numel() for p in model.network.parameters())


def test_sampling_with_the_lora_at_scales_and_fused(trained):
    root, base, out = trained
    pipe = Pipeline.load(base)
    kwargs = dict(prompt="a photo of a sks boot", n=3, steps=3, output="tensor")
    plain = pipe(**kwargs)
    lora = pipe.load_lora(out / "lora.safetensors", scale=0.0)
    assert torch.equal(pipe(**kwargs), plain)
    lora.scale = 1.0
    hooked = pipe(**kwargs)
    assert not torch.equal(hooked, plain)
    pipe.fuse_lora()
    fused = pipe(**kwargs)
    assert (fused.int() - hooked.int()).abs().max() <= 1
    pipe.unfuse_lora()
    assert torch.equal(pipe(**kwargs), hooked)
    pipe.unload_lora()
    assert torch.equal(pipe(**kwargs), plain)


def test_cli_lora_flag_record_and_from_png(trained, capsys):
    root, base, out = trained
    samples = root / "samples"
    assert cli(["sample", str(base), "--prompt", "a photo of a sks boot", "--lora", f"{out}:0.7", "--n", "2",
                "--steps", "3", "--out", str(samples)]) == 0
    first, second = sorted((samples / "images").glob("*.png"))
    record = json.loads(Image.open(second).text["difflab"])
    assert record["loras"] == [{"path": str(out / "lora.safetensors"), "scale": 0.7}]
    again = root / "again"
    assert cli(["sample", "--from-png", str(second), "--out", str(again)]) == 0
    (remade,) = sorted((again / "images").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(second)), np.asarray(Image.open(remade)))
    # another base: refused with one line, --force applies it
    other = root / "other"  # the base with one weight changed
    shutil.copytree(base, other)
    weights = load_file(str(other / "checkpoint" / "ema.safetensors"))
    first = sorted(weights)[0]
    weights[first] = weights[first] + 0.01
    save_file(weights, str(other / "checkpoint" / "ema.safetensors"))
    args = ["sample", str(other), "--prompt", "x", "--lora", str(out), "--n", "1", "--steps", "2", "--out",
            str(root / "o")]
    assert cli(args) != 0
    err = capsys.readouterr().err
    assert "other weights" in err and "--force" in err and "Traceback" not in err
    assert cli([*args, "--force"]) == 0


def test_bad_lora_runs_are_one_clear_error(trained, tmp_path):
    root, base, _ = trained
    common = ["data.resolution=8", "data.channels=1", "optim.batch_size=4", "train.steps=1",
              f"data.dataset={pictures(tmp_path / 'pics')}", f"train.out_dir={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match="give the training images' prompt"):
        train(load_config(None, common + [f"lora.base={base}"]), progress=False, objective=LoraObjective)
    with pytest.raises(ConfigError, match="give --base RUN"):
        train(load_config(None, common + ["lora.prompt=x"]), progress=False, objective=LoraObjective)
    with pytest.raises(ConfigError, match="no layer of the UNet matches"):
        train(load_config(None, common + [f"lora.base={base}", "lora.prompt=x", "lora.targets=[nothing]"]),
              progress=False, objective=LoraObjective)


def test_a_lora_on_a_class_conditional_dit(tmp_path):
    dit = TINY[:4] + ["model.name=dit", "model.options={patch_size: 2, hidden_size: 16, depth: 2, num_heads: 2}"] + \
        TINY[5:]
    base = tmp_path / "dit"
    train(load_config(None, dit + [f"train.out_dir={base}", "train.steps=2", "diffusion.cond_drop_prob=0.1"]),
          progress=False)
    out = tmp_path / "lora"
    train(load_config(None, [f"lora.base={base}", "lora.class_name='3'", f"data.dataset={pictures(tmp_path / 'p')}",
                             "data.resolution=8", "optim.batch_size=4", "train.steps=2", "train.sample_every=0",
                             f"train.out_dir={out}"]), progress=False, objective=LoraObjective)
    pipe = Pipeline.load(base)
    plain = pipe(class_label=3, n=2, steps=2, output="tensor")
    lora = pipe.load_lora(out)
    assert all(".attn." in name for name in lora.layer_names)
    lora.scale = 0.0
    assert torch.equal(pipe(class_label=3, n=2, steps=2, output="tensor"), plain)
    with pytest.raises(UserError, match="holds no lora.safetensors"):
        pipe.load_lora(tmp_path)


def test_a_lora_on_a_latent_base(tmp_path):
    autoencoder = tiny_autoencoder(tmp_path / "ae")
    base = tmp_path / "base"
    latent = ["data.class_conditional=true", "diffusion.cond_drop_prob=0.1", f"data.autoencoder={autoencoder}"]
    train(load_config(None, TINY + latent + [f"train.out_dir={base}", "train.steps=2"]), progress=False)
    out = tmp_path / "lora"
    train(load_config(None, [f"lora.base={base}", "lora.class_name='3'", f"data.dataset={pictures(tmp_path / 'p')}",
                             "data.resolution=8", "data.channels=1", f"data.autoencoder={autoencoder}",
                             "lora.targets=['*.conv2']", "optim.batch_size=4", "train.steps=2", "train.sample_every=0",
                             f"train.out_dir={out}"]), progress=False, objective=LoraObjective)
    pipe = Pipeline.load(base)
    x, t, y = torch.randn(2, *pipe.model.image_shape), torch.tensor([10.0, 50.0]), torch.tensor([3, 3])
    with torch.no_grad():
        plain = pipe.model.network(x, t, y)
        lora = pipe.load_lora(out)
        assert lora.layer_names and all(name.endswith(".conv2") for name in lora.layer_names)  # conv LoRA
        assert not torch.equal(pipe.model.network(x, t, y), plain)  # the adapters act on the latent model
    assert pipe(class_label=3, n=2, steps=2, output="tensor").shape == (2, 1, 8, 8)
