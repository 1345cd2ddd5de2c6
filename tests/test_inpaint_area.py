"""Inpainting only the masked area (A1111's "Only masked", issue 19 item 2): the crop box, the
crops the model sees, and full-size results whose outside pixels are the input's, from Python and
the CLI."""

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main as cli
from difflab.errors import UserError
from difflab.pipelines import DiffusionModel, generate
from difflab.pipelines.inpaint_area import MaskedArea, mask_box
from difflab.pipelines.pipeline import make_edit
from difflab.pipelines.png_info import read_record
from difflab.training.trainer import train
from helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def box(height, width, x0, y0, x1, y1):
    mask = torch.zeros(1, height, width)
    mask[:, y0:y1, x0:x1] = 1
    return mask


def test_mask_box_pads_squares_and_stays_inside():
    assert mask_box(box(64, 64, 20, 30, 30, 34), padding=4) == (16, 23, 34, 41)  # 10x4, padded 18x12, square 18x18
    # at a corner the padded 20x20 box is shifted inside, keeping its context
    assert mask_box(box(64, 64, 0, 0, 4, 4), padding=8) == (0, 0, 20, 20)
    assert mask_box(box(64, 64, 60, 60, 64, 64), padding=8) == (44, 44, 64, 64)
    x0, y0, x1, y1 = mask_box(box(20, 100, 10, 5, 90, 10), padding=2)  # wider than the image is tall
    assert (y0, y1) == (0, 20) and x1 - x0 == 84
    assert mask_box(torch.zeros(1, 10, 12), padding=3) == (0, 0, 12, 10)  # no mask: the whole image
    assert mask_box(box(40, 40, 10, 10, 14, 30), padding=0, aspect=0.5) == (7, 10, 17, 30)  # 4x20 widened to 10x20


def test_crops_and_paste_keep_the_outside():
    originals = torch.randint(0, 256, (2, 1, 40, 48), dtype=torch.uint8)
    masks = torch.stack([box(40, 48, 10, 12, 18, 20), box(40, 48, 30, 0, 48, 6)])
    area = MaskedArea.around(originals, masks, padding=2, size=(8, 8))
    crops, crop_masks = area.crops((8, 8))
    assert crops.shape == (2, 1, 8, 8) and crop_masks.shape == (2, 1, 8, 8)
    assert area.boxes[0] == (8, 10, 20, 22)
    filled = area.paste(torch.full((2, 1, 8, 8), 255, dtype=torch.uint8), [0, 1])
    keep = masks.expand_as(originals) == 0
    assert filled.shape == originals.shape and torch.equal(filled[keep], originals[keep])
    assert filled[~keep].eq(255).all()
    with pytest.raises(ValueError, match="padding"):
        MaskedArea.around(originals, masks, padding=-1, size=(8, 8))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(tiny_config(tmp_path_factory.mktemp("area") / "run", "train.steps=2"), progress=False).parent


def test_only_masked_from_python_keeps_size_and_outside(run):
    model = DiffusionModel.load(run)
    image = torch.randint(0, 256, (1, 30, 36), dtype=torch.uint8)
    edit = make_edit(model, image, mask_box=(12, 10, 20, 18), inpaint_area="masked", inpaint_padding=2)
    assert edit.init.images.shape == (1, 1, 8, 8)  # the model sees the crop at its own size
    x0, y0, x1, y1 = edit.area.boxes[0]
    assert (x0, y0, x1, y1) == (10, 8, 22, 20)
    images, _ = generate(model, 2, steps=3, edit=edit)
    assert images.shape == (2, 1, 30, 36)
    keep = box(30, 36, 12, 10, 20, 18) == 0
    for out in images:
        assert torch.equal(out[keep], image[keep])
    assert not torch.equal(images[0], images[1])  # two seeds, two fills


def test_only_masked_from_cli_and_png_record(run, tmp_path, capsys):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32), dtype=np.uint8), "L").save(tmp_path / "in.png")
    out = tmp_path / "out"
    assert cli(["sample", str(run), "--init-image", str(tmp_path / "in.png"), "--mask-shape", "centre",
                "--inpaint-area", "masked", "--inpaint-padding", "4", "--steps", "3", "--out", str(out)]) == 0
    png = sorted((out / "images").glob("*.png"))[0]
    record = read_record(png)
    assert record["inpaint_area"] == "masked" and record["inpaint_padding"] == 4
    assert Image.open(png).size == (32, 24)
    again = tmp_path / "again"
    assert cli(["sample", str(run), "--from-png", str(png), "--out", str(again)]) == 0
    remade = sorted((again / "images").glob("*.png"))[0]
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(remade)))
    for bad, message in ((["--inpaint-area", "masked"], "needs a mask"),):
        code = cli(["sample", str(run), "--init-image", str(tmp_path / "in.png"), *bad, "--strength", "0.5",
                    "--out", str(tmp_path / "bad")])
        assert code == 2 and message in capsys.readouterr().err


def test_only_masked_needs_images_of_one_size(run, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("L", (20, 20)).save(folder / "a.png")
    Image.new("L", (24, 20)).save(folder / "b.png")
    with pytest.raises(UserError, match="different sizes"):
        make_edit(DiffusionModel.load(run), folder, mask="centre", inpaint_area="masked")
