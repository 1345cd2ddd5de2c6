"""`train --init-from RUN` (``train(config, init_from=RUN)``): a new run that starts from another
run's model and EMA weights, with a fresh optimizer, LR schedule and step count; architecture,
kind and latent-space mismatches are one clear error; the checkpoint records the provenance."""

import json
import os
import subprocess
import sys

import pytest
import torch

from difflab.checkpoint import ModelRecord, load_state
from difflab.cli import main as cli
from difflab.models import build_model
from difflab.training.config import ConfigError, load_config
from difflab.training.trainer import train
from helpers import TINY, TINY_AE, text_run, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSIFIER = [o.replace("model.name=unet", "model.name=noisy_classifier") for o in TINY]
LATENT = [o.replace("attention_resolutions: [4]", "attention_resolutions: [2]") for o in TINY]  # 4x4 latents


@pytest.fixture(scope="module")
def module_one_thread():
    """one_thread for the module's shared runs (tiny networks are fastest on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def source(tmp_path_factory, module_one_thread):
    """A tiny class-conditional U-Net trained 4 steps."""
    run = tmp_path_factory.mktemp("source")
    train(tiny_config(run, "train.steps=4"), progress=False)
    return run


def run_config(overrides, out, *extra):
    return load_config(None, list(overrides) + [f"train.out_dir={out}", *extra])


@pytest.mark.parametrize("name,overrides", [("diffusion", TINY), ("noisy_classifier", CLASSIFIER),
                                            ("autoencoder", TINY_AE)])
def test_weights_are_copied_and_the_optimizer_and_step_start_fresh(tmp_path, name, overrides):
    """With lr = 0 the one step of the new run leaves the weights as copied: the model equals the
    source's exactly, and the EMA is the first update of the source's EMA towards them."""
    src, new = tmp_path / "src", tmp_path / "new"
    train(run_config(overrides, src, "train.steps=3"), progress=False)
    train(run_config(overrides, new, "train.steps=1", "optim.lr=0"), init_from=src, progress=False)
    src_config, src_w, src_extra = load_state(src, kind=name)
    config, w, extra = load_state(new, kind=name)
    for key, value in src_w["model"].items():
        assert torch.equal(w["model"][key], value), key
    params = {key for key, _ in build_model(config["model"]).named_parameters()}
    for key, value in src_w["ema"].items():  # decay 0.1 at step 0 (warm-up); buffers are copied
        expected = torch.lerp(value, src_w["model"][key], 0.9) if key in params else src_w["model"][key]
        torch.testing.assert_close(w["ema"][key], expected, rtol=0, atol=1e-6, msg=key)
    # a fresh optimizer (one Adam step, not four), schedule and step count
    assert extra["step"] == 1 and extra["lr_scheduler"]["last_epoch"] == 1
    assert {s["step"].item() for s in extra["optimizer"]["state"].values()} == {1.0}
    assert {s["step"].item() for s in src_extra["optimizer"]["state"].values()} == {3.0}
    assert [json.loads(line)["step"] for line in (new / "metrics.jsonl").read_text().splitlines()] == [1]
    # the provenance, in the record
    assert config["init_from"] == {"path": str((src / "checkpoint").resolve()), "step": 3}
    assert "init_from" not in src_config or src_config["init_from"] is None
    if name != "autoencoder":
        assert ModelRecord.from_dict(config).init_from["step"] == 3


def test_resuming_a_fine_tuned_run_keeps_its_provenance(source, tmp_path):
    train(tiny_config(tmp_path, "train.steps=1"), init_from=source, progress=False)
    train(tiny_config(tmp_path, "train.steps=2"), resume=tmp_path, progress=False)
    config, _, extra = load_state(tmp_path)
    assert extra["step"] == 2 and config["init_from"]["step"] == 4


def test_an_architecture_mismatch_is_one_line_naming_the_tensor(source, tmp_path):
    wider = [o.replace("model_channels: 8", "model_channels: 16") for o in TINY]
    args = [f"--set={o}" for o in wider + ["train.steps=1"]]
    result = subprocess.run([sys.executable, "-m", "difflab.cli", "train", *args, "--init-from", str(source),
                             "--out", str(tmp_path / "wider"), "--no-progress"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "time_embed.mlp.0.weight: checkpoint (32, 8) vs model (64, 16)" in result.stderr
    assert result.stderr.startswith(f"difflab train: error: cannot initialise from {source}")


def test_missing_and_unexpected_tensors_and_the_wrong_kind_are_named(source, tmp_path):
    with pytest.raises(ConfigError, match=r"unexpected key label_embed\.weight \(the checkpoint has it"):
        train(tiny_config(tmp_path / "a", "data.class_conditional=false", "train.steps=1"), init_from=source,
              progress=False)
    unconditional = tmp_path / "unconditional"
    train(tiny_config(unconditional, "data.class_conditional=false", "train.steps=1"), progress=False)
    with pytest.raises(ConfigError, match=r"missing key label_embed\.weight \(the model has it"):
        train(tiny_config(tmp_path / "b", "train.steps=1"), init_from=unconditional, progress=False)
    with pytest.raises(ConfigError, match="is a 'diffusion' checkpoint, expected a 'noisy_classifier' one"):
        train(run_config(CLASSIFIER, tmp_path / "c", "train.steps=1"), init_from=source, progress=False)


def test_resume_and_init_from_together_are_refused(source, tmp_path, capsys):
    with pytest.raises(ConfigError, match="--resume and --init-from exclude each other"):
        train(tiny_config(tmp_path), resume=source, init_from=source, progress=False)
    assert cli(["train", "--resume", str(source), "--init-from", str(source), "--out", str(tmp_path)]) == 2
    assert "exclude each other" in capsys.readouterr().err


@pytest.fixture(scope="module")
def autoencoders(tmp_path_factory, module_one_thread):
    """Two tiny KL autoencoders (another seed for the second) trained 2 steps each."""
    root = tmp_path_factory.mktemp("ae")
    for seed in (0, 1):
        train(run_config(TINY_AE, root / f"ae{seed}", "train.steps=2", f"train.seed={seed}"), progress=False)
    return root / "ae0", root / "ae1"


def test_a_latent_model_must_keep_its_autoencoder(source, autoencoders, tmp_path):
    ae, other = autoencoders
    latent_src = tmp_path / "latent"
    train(run_config(LATENT, latent_src, f"data.autoencoder={ae}", "train.steps=1"), progress=False)
    tuned = tmp_path / "tuned"  # the same autoencoder (by another path): fine
    train(run_config(LATENT, tuned, f"data.autoencoder={ae}/checkpoint", "train.steps=1"), init_from=latent_src,
          progress=False)
    assert load_state(tuned)[0]["init_from"]["step"] == 1
    with pytest.raises(ConfigError, match="trained in the latents of another autoencoder"):
        train(run_config(LATENT, tmp_path / "x", f"data.autoencoder={other}", "train.steps=1"),
              init_from=latent_src, progress=False)
    with pytest.raises(ConfigError, match="this run trains on pixels; set data.autoencoder="):
        train(tiny_config(tmp_path / "y", "train.steps=1"), init_from=latent_src, progress=False)
    with pytest.raises(ConfigError, match="it is a pixel-space model but this run trains in the latents"):
        train(run_config(LATENT, tmp_path / "z", f"data.autoencoder={ae}", "train.steps=1"), init_from=source,
              progress=False)


def test_train_autoencoder_cli_takes_init_from(autoencoders, tmp_path):
    config = tmp_path / "ae.yaml"
    config.write_text("model:\n  name: autoencoder_kl\n  preset: tiny\n")
    sets = sum((["--set", o] for o in TINY_AE[3:] + ["train.steps=1"]), [])
    assert cli(["train-autoencoder", str(config), *sets, "--init-from", str(autoencoders[0]),
                "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    saved = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert saved["init_from"]["step"] == 2 and saved["latent_scale"] > 0


def test_train_classifier_noisy_cli_takes_init_from(tmp_path):
    source = tmp_path / "source"
    train(run_config(CLASSIFIER, source, "train.steps=2"), progress=False)
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    sets = sum((["--set", o] for o in CLASSIFIER + ["train.steps=1"]), [])
    assert cli(["train-classifier", "--noisy", str(config), *sets, "--init-from", str(source),
                "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert load_state(tmp_path / "run", kind="noisy_classifier")[0]["init_from"]["step"] == 2
    assert cli(["train-classifier", "--dataset", "digits", "--init-from", str(source)]) == 2  # not without --noisy


def test_a_trainable_text_encoder_keeps_its_vocabulary(tmp_path):
    source = text_run(tmp_path, "small")  # 3 steps on fake Fashion-MNIST captions
    config = json.loads((source / "checkpoint" / "config.json").read_text())
    fashion = config["train_config"]["data"]["dataset"]
    encoder = "{name: small, dim: 16, layers: 1, heads: 2, max_length: 12%s}"
    overrides = [o for o in TINY if "class_conditional" not in o] + [
        f"data.dataset={fashion}", "data.resolution=8", "data.text_conditional=true", "diffusion.cond_drop_prob=0.2",
        "train.steps=1"]
    train(run_config(overrides + [f"model.text_encoder={encoder % ''}"], tmp_path / "same"), init_from=source,
          progress=False)  # the same captions build the same vocabulary
    other = ", vocab: ['[PAD]', '[UNK]', '[CLS]', '[SEP]', a, b]"
    with pytest.raises(ConfigError, match="its trainable text encoder has another vocabulary"):
        train(run_config(overrides + [f"model.text_encoder={encoder % other}"], tmp_path / "other"),
              init_from=source, progress=False)
