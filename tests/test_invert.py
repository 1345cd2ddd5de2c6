"""DDIM inversion from Python (difflab.pipelines.inversion) and the CLI (difflab invert): a round
trip through `difflab sample --noise` gives the images back; bad input is one line (issue 19, item 3)."""

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main as cli
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.inversion import invert_images
from difflab.training.trainer import train
from helpers import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("invert")
    return train(tiny_config(root, "train.steps=3"), progress=False).parent


def test_invert_images_then_ddim_reconstructs_them(run):
    model = DiffusionModel.load(run)
    images, _ = generate(model, 3, method="ddim", steps=10, class_index=2, guidance=Guidance(scale=1.0))
    noise = invert_images(model, images, steps=10, class_index=2)
    assert noise.shape == (3, 1, 8, 8) and 0.3 < float(noise.std()) < 3  # unit scale
    back, _ = generate(model, 3, method="ddim", steps=10, class_index=2, guidance=Guidance(scale=1.0), noise=noise)
    assert (back.float() - images.float()).abs().mean() < 6  # of 255: DDIM inversion's usual small error


def test_invert_command_round_trips_through_sample(run, tmp_path):
    model = DiffusionModel.load(run)
    images, _ = generate(model, 2, method="ddim", steps=10, class_index=1, guidance=Guidance(scale=1.0))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(folder / f"{i}.png")
    assert cli(["invert", str(run), "--images", str(folder), "--class", "1", "--steps", "10",
                "--out", str(tmp_path / "inv")]) == 0
    assert cli(["sample", str(run), "--noise", str(tmp_path / "inv" / "noise.npz"), "--method", "ddim",
                "--steps", "10", "--class", "1", "--guidance-scale", "1", "--out", str(tmp_path / "back")]) == 0
    back = np.load(tmp_path / "back" / "samples.npz")["samples"].astype(float)
    assert np.abs(back - images.permute(0, 2, 3, 1).numpy().astype(float)).mean() < 6


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_bad_image_folder_is_one_line(run, tmp_path, capsys, case):
    folder = tmp_path / "imgs"
    if case == "empty":
        folder.mkdir()
    assert cli(["invert", str(run), "--images", str(folder), "--out", str(tmp_path / "inv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err
    assert ("does not exist" if case == "missing" else "no image") in err


def test_invert_images_checks_the_shape(run):
    model = DiffusionModel.load(run)
    with pytest.raises(ValueError, match="shape"):
        invert_images(model, torch.zeros(2, 3, 8, 8, dtype=torch.uint8), class_index=0)
