"""Sampling under faults and user mistakes: every batch is on disk as soon as it is made, an
interrupted run resumes to the same images, and each mistake is one line before any work."""

import errno

import numpy as np
import pytest
from PIL import Image

from difflab import images as images_module
from difflab.cli import main as cli
from difflab.training.trainer import train
from helpers import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampling-faults")
    return train(tiny_config(root / "run", "train.steps=2"), progress=False).parent


def sample(run, out, *flags):
    return cli(["sample", str(run), "--n", "6", "--batch-size", "2", "--steps", "3", "--method", "ddpm",
                "--out", str(out), *flags])


def test_an_interrupted_run_keeps_its_batches_and_resumes_to_the_same_images(run, tmp_path, monkeypatch, capsys):
    assert sample(run, tmp_path / "whole") == 0
    real_save = images_module.save_images
    calls = {"n": 0}

    def save_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third batch
        return real_save(*args, **kwargs)

    monkeypatch.setattr(images_module, "save_images", save_then_interrupt)
    assert sample(run, tmp_path / "cut") == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(list((tmp_path / "cut" / "images").glob("*.png"))) == 4  # two batches were written
    monkeypatch.setattr(images_module, "save_images", real_save)
    assert sample(run, tmp_path / "cut", "--resume") == 0
    assert "4 of 6 images already" in capsys.readouterr().out
    for name in ("00000.png", "00005.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "cut" / "images" / name)),
                              np.asarray(Image.open(tmp_path / "whole" / "images" / name)))
    whole, cut = np.load(tmp_path / "whole" / "samples.npz"), np.load(tmp_path / "cut" / "samples.npz")
    assert np.array_equal(whole["samples"], cut["samples"]) and np.array_equal(whole["labels"], cut["labels"])


def test_resume_refuses_images_of_another_run(run, tmp_path, capsys):
    assert sample(run, tmp_path / "a", "--seed", "5") == 0
    assert sample(run, tmp_path / "a", "--resume") == 2
    assert "made by another run" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "steps must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--n", "0"], "--n must be at least 1"),
    (["--device", "foo"], "unknown device 'foo'"),
    (["--guidance-rescale", "5"], "rescale must be in [0, 1]"),
    (["--spacing", "trailing", "--sigmas", "missing.json"], ""),
])
def test_a_mistake_is_one_line_before_any_work(run, tmp_path, capsys, flags, message):
    code = cli(["sample", str(run), "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "samples.npz").exists()


def test_an_output_path_that_is_a_file_is_found_before_sampling(run, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert cli(["sample", str(run), "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_full_disk_is_one_line_and_earlier_batches_stay(run, tmp_path, monkeypatch, capsys):
    real_save = images_module.save_images
    calls = {"n": 0}

    def disk_full_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "images" / "00002.png"))
        return real_save(*args, **kwargs)

    monkeypatch.setattr(images_module, "save_images", disk_full_on_second)
    assert sample(run, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "00002.png" in err and "Traceback" not in err
    assert len(list((tmp_path / "out" / "images").glob("*.png"))) == 2


def test_debug_shows_the_traceback(run, tmp_path):
    with pytest.raises(ValueError, match="steps must be at least 1"):
        cli(["--debug", "sample", str(run), "--steps", "0", "--out", str(tmp_path)])


def test_eval_names_an_npz_that_is_no_zip_without_pickle_advice(tmp_path, capsys):
    (tmp_path / "bad.npz").write_text("not a zip")
    assert cli(["eval", str(tmp_path / "bad.npz"), "--ref", str(tmp_path / "bad.npz")]) == 2
    err = capsys.readouterr().err
    assert "bad.npz" in err and "pickle" not in err and "Traceback" not in err


def test_eval_of_a_checkpoint_refuses_a_wrong_reference_or_classifier_before_sampling(run, tmp_path, capsys,
                                                                                      monkeypatch):
    import difflab.commands.eval as eval_command

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the flags")

    monkeypatch.setattr(eval_command, "sample_checkpoint", no_sampling)
    for flags, said in ((["--ref", str(tmp_path / "missing")], "missing"),
                        (["--ref", "digits:test", "--classifier", str(tmp_path / "nope")], "no classifier at")):
        assert cli(["eval", str(run), "--n", "2", *flags]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err


def test_sampling_never_reads_the_optimizer_state(run, tmp_path):
    """extra.pt (optimizer, scheduler) is the trainer's: a damaged one must not stop sampling."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "checkpoint" / "extra.pt").write_bytes(b"damaged")
    assert sample(copy, tmp_path / "out") == 0
