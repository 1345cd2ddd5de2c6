"""Training under faults and user mistakes: a NaN, an exploding loss, a full disk, a read-only
folder, a second writer or a changed setting on resume each stop the run with one clear message,
and the checkpoint on disk is always the last good one (docs/training.md, Reliability)."""

import errno
import json
import math
import os

import pytest
import torch

import difflab.checkpoint as checkpoint
from difflab import losses
from difflab.checkpoint import load_state
from difflab.cli import main as cli
from difflab.run_lock import RunLock, RunLocked
from difflab.training import trainer
from difflab.training.config import ConfigError
from difflab.training.divergence import PATIENCE, DivergenceGuard, TrainingDiverged
from difflab.training.trainer import CheckpointNotWritten, train
from helpers import TINY, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run):
    return load_state(run)[1]["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- items 1 and 6: a resumed run takes the new settings; metrics.jsonl holds one curve ----------
def test_a_learning_rate_changed_on_resume_applies(tmp_path):
    """The issue's scenario, scaled down: train at lr 1e-3, resume with lr 1e-4 and more steps."""
    train(tiny_config(tmp_path, "train.steps=4", "train.checkpoint_every=2"), progress=False)
    train(tiny_config(tmp_path, "train.steps=6", "optim.lr=1e-4", "optim.betas=[0.8, 0.99]",
                      "optim.weight_decay=0.01"), resume=tmp_path, progress=False)
    logged = {row["step"]: row["lr"] for row in rows(tmp_path)}
    assert logged == {1: 1e-3, 2: 1e-3, 3: 1e-3, 4: 1e-3, 5: pytest.approx(1e-4), 6: pytest.approx(1e-4)}
    config, _, extra = load_state(tmp_path)
    assert config["train_config"]["optim"]["lr"] == pytest.approx(1e-4)  # config.json: what ran
    group = extra["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(1e-4) and group["initial_lr"] == pytest.approx(1e-4)
    assert tuple(group["betas"]) == (0.8, 0.99) and group["weight_decay"] == 0.01


def test_a_schedule_changed_on_resume_continues_at_the_saved_step(tmp_path):
    train(tiny_config(tmp_path, "train.steps=4"), progress=False)
    train(tiny_config(tmp_path, "train.steps=8", "optim.lr_schedule=linear", "optim.min_lr_fraction=0.5"),
          resume=tmp_path, progress=False)
    lrs = [row["lr"] for row in rows(tmp_path)][4:]  # factor after step s: 1 - 0.5·s/8 (linear to 0.5 at 8)
    assert lrs == pytest.approx([1e-3 * (1 - 0.5 * s / 8) for s in range(5, 9)])


@pytest.mark.parametrize("change", ["model.options={model_channels: 16, channel_mult: [1, 2], num_res_blocks: 1, "
                                    "attention_resolutions: [4], num_heads: 1, norm_groups: 4}",
                                    "optim.batch_size=32", "diffusion.prediction=v", "data.dataset=fashion-mnist"])
def test_a_setting_that_cannot_change_on_resume_is_refused_by_name(tmp_path, change):
    train(tiny_config(tmp_path, "train.steps=2"), progress=False)
    key = change.split("=")[0]
    with pytest.raises(ConfigError, match=rf"cannot resume .* with {key}=.*trained with {key}=.*cannot change"):
        train(tiny_config(tmp_path, "train.steps=4", change), resume=tmp_path, progress=False)
    assert load_state(tmp_path)[2]["step"] == 2


def test_metrics_after_a_resume_hold_each_step_once(tmp_path):
    """A run killed after logging steps 3 and 4 (its checkpoint at 2) and in the middle of a line:
    the resumed run drops those rows and logs steps 3 and 4 again."""
    train(tiny_config(tmp_path, "train.steps=2"), progress=False)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 99.0}\n{"step": 4, "loss": 99.0}\n{"step": 5, "lo')
    train(tiny_config(tmp_path, "train.steps=4"), resume=tmp_path, progress=False)
    logged = rows(tmp_path)
    assert [row["step"] for row in logged] == [1, 2, 3, 4] and 99.0 not in [row["loss"] for row in logged]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".metrics")] == []  # no temporary file left


# -- items 2 and 3: a diverging run never overwrites its last good checkpoint ----------------------
def test_nan_weights_are_never_checkpointed(tmp_path):
    """lr = 1e38 makes the weights inf/NaN in the first update; checkpoint_every=1 would save them."""
    with pytest.raises(TrainingDiverged, match="NaN or inf at step 1 .*no checkpoint of this run .*none is good"):
        train(tiny_config(tmp_path, "optim.lr=1e38", "train.checkpoint_every=1", "train.steps=3"), progress=False)
    assert not (tmp_path / "checkpoint").exists()


def test_an_exploding_learning_rate_on_resume_keeps_the_last_good_checkpoint(tmp_path):
    train(tiny_config(tmp_path, "train.steps=4", "train.checkpoint_every=2"), progress=False)
    good = weights(tmp_path)
    with pytest.raises(TrainingDiverged, match=r"step 5.*last good checkpoint \(.*checkpoint, step 4\) is kept"):
        train(tiny_config(tmp_path, "train.steps=40", "optim.lr=1e10", "train.checkpoint_every=1"),
              resume=tmp_path, progress=False)
    assert load_state(tmp_path)[2]["step"] == 4
    assert_same_weights(weights(tmp_path), good)


@pytest.mark.parametrize("extra", [[], ["optim.grad_clip=null"], ["train.log_every=5", "train.checkpoint_every=5"]])
def test_lr_1e10_stops_with_the_divergence_message(tmp_path, extra):
    with pytest.raises(TrainingDiverged, match="training diverged. Lower optim.lr.*none is good"):
        train(tiny_config(tmp_path, "optim.lr=1e10", "train.steps=60", *extra), progress=False)
    assert not (tmp_path / "checkpoint").exists()


def test_a_finite_but_exploding_loss_stops_after_patience_windows(tmp_path, monkeypatch):
    """From step 5 the loss is multiplied by 1e6 (its gradient too, which Adam scales away): the
    weights stay finite, the windows 5, 6, 7 are suspect, no checkpoint is written after step 4."""
    real_loss = losses.diffusion_loss
    calls = {"n": 0}

    def exploding(*args, **kwargs):
        calls["n"] += torch.is_grad_enabled()
        out = real_loss(*args, **kwargs)
        if calls["n"] > 4:
            out.loss = out.loss * 1e6
        return out

    monkeypatch.setattr(losses, "diffusion_loss", exploding)
    with pytest.raises(TrainingDiverged, match=rf"loss exploded: .* at step 7, above 10x its median .* for "
                                               rf"{PATIENCE} log windows in a row.*step 4\) is kept"):
        train(tiny_config(tmp_path, "train.steps=20", "train.checkpoint_every=1"), progress=False)
    assert load_state(tmp_path)[2]["step"] == 4


def test_the_divergence_rule_ignores_noise_and_fires_on_a_sustained_explosion():
    guard = DivergenceGuard()
    for step, loss in enumerate([1.0, 0.5, 8.0, 0.3, 0.2, 30.0, 0.25, 0.2, 0.9]):  # spikes, never 3 in a row
        guard.window(step, loss)
    assert not guard.suspect
    guard.window(10, 0.2e-3)  # tiny losses never fall below the floor of 1.0 ...
    guard.window(11, 0.9)  # ... so 1e-4 → 0.9 is not suspect
    assert not guard.suspect
    for step in range(PATIENCE - 1):
        guard.window(20 + step, 50.0)
        assert guard.suspect
    with pytest.raises(TrainingDiverged, match="loss exploded"):
        guard.window(30, 50.0)
    with pytest.raises(TrainingDiverged, match="became nan"):
        DivergenceGuard().window(1, math.nan)
    with pytest.raises(TrainingDiverged, match="gradient norm"):
        DivergenceGuard().window(1, 0.5, gradients_finite=False)


# -- a full disk, a read-only folder: one message, the previous checkpoint intact ----------------
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    train(tiny_config(tmp_path, "train.steps=2", "train.checkpoint_every=2"), progress=False)
    good = weights(tmp_path)

    def disk_full(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"\0" * 10)  # half-written
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(CheckpointNotWritten, match=r"checkpoint of step 4 not written: .*(disk is full|No space "
                                                   r"left).* the last good checkpoint is the one of step 2 .*--resume"
                       ) as info:
        train(tiny_config(tmp_path, "train.steps=4", "train.checkpoint_every=2"), resume=tmp_path, progress=False)
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == ["checkpoint"]
    assert load_state(tmp_path)[2]["step"] == 2
    assert_same_weights(weights(tmp_path), good)
    assert not (tmp_path / "run.lock").exists()  # released on the way out
    # the command line: one line, exit status 2
    sets = [item for s in TINY for item in ("--set", s)]
    code = cli(["train", *sets, "--set", "train.steps=4", "--resume", str(tmp_path), "--out", str(tmp_path),
                "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "step 2" in err


def test_a_failed_rename_keeps_a_loadable_checkpoint(tmp_path, monkeypatch):
    train(tiny_config(tmp_path, "train.steps=2", "train.checkpoint_every=2"), progress=False)
    good = weights(tmp_path)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if ".checkpoint." in str(src) or ".checkpoint." in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CheckpointNotWritten, match="step 4 not written: .*the one of step 2"):
        train(tiny_config(tmp_path, "train.steps=4", "train.checkpoint_every=2"), resume=tmp_path, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert load_state(tmp_path)[2]["step"] == 2
    assert_same_weights(weights(tmp_path), good)


def test_a_read_only_run_folder_is_found_before_the_data_loads(tmp_path, monkeypatch):
    """chmod does not stop root (CI): the folder refuses every file created in it instead."""
    folder = tmp_path / "run"
    folder.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(folder)) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the folder was checked")

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(trainer, "load_dataset", no_data)
    with pytest.raises(PermissionError, match=f"cannot write in {folder}"):
        train(tiny_config(folder, "train.steps=1"), progress=False)
    assert list(folder.iterdir()) == []


def test_an_output_path_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    sets = [item for s in TINY for item in ("--set", s)]
    assert cli(["train", *sets, "--out", str(tmp_path / "file"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and len(err.strip().splitlines()) == 1


# -- item 4: one writer per run folder ---------------------------------------------------------
def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path, capsys):
    with RunLock(tmp_path):  # the first run, in this process
        with pytest.raises(RunLocked, match=rf"in use by another difflab train \(pid {os.getpid()} on host"):
            train(tiny_config(tmp_path, "train.steps=1"), progress=False)
        sets = [item for s in TINY for item in ("--set", s)]
        assert cli(["train", *sets, "--out", str(tmp_path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "--out DIR" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "metrics.jsonl").exists()
    train(tiny_config(tmp_path, "train.steps=1"), progress=False)  # free again
    assert not (tmp_path / "run.lock").exists()


def test_the_lock_is_released_when_training_fails(tmp_path):
    with pytest.raises(TrainingDiverged):
        train(tiny_config(tmp_path, "optim.lr=1e38", "train.steps=2"), progress=False)
    assert not (tmp_path / "run.lock").exists()
    with RunLock(tmp_path):
        pass


# -- item 5: every mistake one ConfigError before the first step --------------------------------
@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "'train.steps' must be an integer >= 1, got 0"),
    ("train.steps=-3", "'train.steps' must be an integer >= 1"),
    ("optim.batch_size=0", "'optim.batch_size' must be an integer >= 1"),
    ("optim.batch_size=-4", "'optim.batch_size' must be an integer >= 1"),
    ("optim.batch_size=100000", "'optim.batch_size' must be at most the number of training images (1442"),
    ("train.checkpoint_every=0", "'train.checkpoint_every' must be an integer >= 1"),
    ("train.log_every=0", "'train.log_every' must be an integer >= 1"),
    ("train.sample_every=-1", "'train.sample_every' must be an integer >= 0"),
    ("train.num_preview=0", "'train.num_preview' must be an integer >= 1"),
    ("data.resolution=0", "'data.resolution' must be between 1 and 4096"),
    ("diffusion.cond_drop_prob=2", "'diffusion.cond_drop_prob' must be in [0, 1), got 2.0"),
    ("diffusion.cond_drop_prob=1", "'diffusion.cond_drop_prob' must be in [0, 1)"),
    ("optim.lr=-1e-3", "'optim.lr' must be a finite number >= 0"),
    ("optim.lr=.inf", "'optim.lr' must be a finite number >= 0"),
    ("optim.grad_accum=0", "'optim.grad_accum' must be an integer >= 1"),
    ("train.ema_decay=1", "'train.ema_decay' must be in [0, 1)"),
    ("optim.betas=[0.9]", "'optim.betas' must be two numbers in [0, 1)"),
    ("sample.method=unipc3", "'sample.method' must be a sampler: ddpm, "),
    ("sample.spacing=even", "'sample.spacing' must be a step spacing: leading, "),
    ("sample.steps=0", "'sample.steps' must be an integer >= 1"),
    ("sample.guidance_scale=.nan", "'sample.guidance_scale' must be a finite number"),
    ("diffusion.schedule=cosinus", "do not make a noise schedule: unknown noise schedule 'cosinus'"),
    ("train.device=tpu", "'train.device': unknown device 'tpu'"),
    ("model.options={model_channels: 8, chanel_mult: [1, 2]}", "section 'model' ('unet', preset None): unknown unet"),
])
def test_a_config_mistake_is_one_line_before_the_first_step(tmp_path, capsys, override, message):
    sets = [item for s in TINY for item in ("--set", s)]
    assert cli(["train", *sets, "--set", override, "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("flags, message", [
    (["--device", "foo"], "unknown device 'foo'"),
    (["--resolution", "0"], "--resolution must be at least 1"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
])
def test_a_classifier_flag_mistake_is_one_line(tmp_path, capsys, flags, message):
    assert cli(["train-classifier", "--dataset", "digits", "--out", str(tmp_path / "clf"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "clf").exists()
