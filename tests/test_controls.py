"""Control images (issue 21, item 3) and the scores of following them: Canny against
scikit-image, the other kinds against their closed forms, folder pairing, edge F1 and fill IoU;
a ControlNet on a latent base and under two processes."""

import numpy as np
import pytest
import torch
from skimage.feature import canny as skimage_canny

from difflab.controls import ControlSpec, canny, grayscale, make_controls, soft_edges, tile, to_hint
from difflab.data.dataset import ImageDataset
from difflab.data.fill import COLOURS, disc_masks, draw_fill
from difflab.images import save_images
from difflab.metrics.control import edge_f1, fill_scores
from difflab.pipelines import DiffusionModel, generate
from difflab.pipelines.controlnet import Control, ControlNetModel
from difflab.pipelines.img2img import InitImages
from difflab.training.config import load_config
from difflab.training.objectives import ControlNetObjective
from difflab.training.trainer import train
from helpers import TINY, assert_two_processes_match_one, tiny_autoencoder

pytestmark = pytest.mark.usefixtures("one_thread")


def pictures(n=3, side=16, channels=3):
    return torch.randint(0, 256, (n, channels, side, side), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8)


def test_canny_is_scikit_images_on_the_luma():
    images = draw_fill(4, 32, 1)[0].images
    luma = (images.double() / 255 * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)).sum(1)
    ours = canny(images, sigma=1.5, low=0.05, high=0.15)
    for i in range(4):
        expected = skimage_canny(luma[i].numpy(), sigma=1.5, low_threshold=0.05, high_threshold=0.15)
        assert np.array_equal(ours[i, 0].numpy() > 0, expected)
    assert set(ours.unique().tolist()) <= {0, 255}


def test_grayscale_tile_and_soft_edges_closed_forms():
    images = pictures()
    grey = grayscale(images)
    expected = (images.float() / 255 * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.equal(grey, torch.round(expected.clamp(0, 1) * 255).to(torch.uint8))
    tiles = tile(images, factor=4)
    block = images[:, :, :4, :4].float().mean((2, 3))
    assert torch.allclose(tiles[:, :, 0, 0].float(), torch.round(block), atol=1)
    assert torch.equal(tiles[:, :, :4, :4], tiles[:, :, :1, :1].expand(-1, -1, 4, 4))
    # a vertical step edge: the soft edges peak (255) on it and vanish far from it
    step = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    step[..., 8:] = 255
    edges = soft_edges(step, sigma=1.0)[0, 0]
    assert edges[:, 7:9].min() > 200 and edges[:, :3].max() == 0 and edges.max() == 255


def test_control_specs_check_their_options():
    with pytest.raises(ValueError, match="unknown control kind"):
        ControlSpec("depth")
    with pytest.raises(ValueError, match="unknown option"):
        ControlSpec("canny", {"sigmaa": 1})
    with pytest.raises(ValueError, match="low < high"):
        ControlSpec("canny", {"low": 0.3, "high": 0.2})
    assert ControlSpec.from_config({"kind": "tile", "factor": 2}).to_config() == {"kind": "tile", "factor": 2}
    assert to_hint(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]


def test_folder_controls_pair_by_name(tmp_path):
    images = pictures(3, 8)
    dataset = ImageDataset(images=images, name="folder", files=["a/x.png", "b.jpg", "c.png"])
    controls = pictures(3, 16, 1)
    save_images(controls[:1], tmp_path / "a", names=["x.png"])
    save_images(controls[1:], tmp_path, names=["b.png", "c.png"])
    made = make_controls(ControlSpec("folder", {"path": str(tmp_path), "channels": 1}), dataset)
    assert made.shape == (3, 1, 8, 8)
    (tmp_path / "c.png").unlink()
    with pytest.raises(ValueError, match="1 of the 3 training images have no control image.*c.png"):
        make_controls(ControlSpec("folder", {"path": str(tmp_path)}), dataset)
    with pytest.raises(ValueError, match="paired by file name"):
        make_controls(ControlSpec("folder", {"path": str(tmp_path)}), ImageDataset(images=images, name="digits"))


def test_edge_f1_closed_form():
    reference = torch.zeros(1, 10, 10, dtype=torch.bool)
    reference[0, 5, :] = True  # a row of 10 edge pixels
    shifted = torch.zeros_like(reference)
    shifted[0, 7, :5] = True  # 5 pixels, 2 rows away: within tolerance 2, not 1
    stray = shifted.clone()
    stray[0, 0, 0] = True
    assert edge_f1(reference, reference)["f1"] == 1.0
    s = edge_f1(shifted, reference, tolerance=2)
    # a disc of radius 2: a reference pixel 2 rows away is matched only by the one straight below it
    assert s["precision"] == 1.0 and s["recall"] == pytest.approx(5 / 10)
    assert edge_f1(shifted, reference, tolerance=1)["f1"] == 0.0
    assert edge_f1(stray, reference, tolerance=2)["precision"] == pytest.approx(5 / 6)


def test_fill_scores_of_the_true_images_and_of_shuffled_ones():
    data, circles = draw_fill(200, 32, 3)
    palette = torch.tensor(list(COLOURS.values()))
    true = fill_scores(data.images, disc_masks(circles, 32), data.labels, palette)
    assert true["iou"] > 0.9 and true["colour_accuracy"] == 1.0
    shuffled = fill_scores(data.images.roll(1, 0), disc_masks(circles, 32), data.labels, palette)
    assert shuffled["iou"] < 0.4 and shuffled["colour_accuracy"] < 0.3


LATENT = ["data.dataset=digits", "data.class_conditional=true", "diffusion.cond_drop_prob=0.1", "data.hflip=false"]


def test_a_controlnet_on_a_latent_base_reads_pixel_control_images(tmp_path):
    autoencoder = tiny_autoencoder(tmp_path / "ae")
    base = tmp_path / "base"
    train(load_config(None, TINY + LATENT + [f"data.autoencoder={autoencoder}", f"train.out_dir={base}",
                                              "train.steps=2"]), progress=False)
    net = tmp_path / "cn"
    train(load_config(None, TINY + LATENT + [f"data.autoencoder={autoencoder}", f"controlnet.base={base}",
                                              "controlnet.control={kind: canny, sigma: 0.5}",
                                              "controlnet.hint_widths=[4, 8]", f"train.out_dir={net}",
                                              "train.steps=2"]), progress=False, objective=ControlNetObjective)
    model, controlnet = DiffusionModel.load(base), ControlNetModel.load(net)
    assert controlnet.network.config.hint_factor == 8 // model.image_shape[-1] > 1
    picture = pictures(2, 8, 1)
    control = Control(controlnet, InitImages(make_controls(ControlSpec("canny", {"sigma": 0.5}), picture),
                                             [None, None]), 0.0)
    plain, _ = generate(model, 2, class_index=3, steps=2)
    off, _ = generate(model, 2, class_index=3, steps=2, controls=[control])
    assert torch.equal(plain, off) and plain.shape == (2, 1, 8, 8)


def test_two_processes_train_the_same_controlnet(tmp_path):
    base = tmp_path / "base"
    fill = ["data.dataset=fill", "data.resolution=8", "data.hflip=false", "diffusion.cond_drop_prob=0.1"]
    train(load_config(None, TINY + fill + [f"train.out_dir={base}", "train.steps=2"]), progress=False)
    assert_two_processes_match_one(tmp_path, [*TINY, *fill, "model.name=controlnet", f"controlnet.base={base}",
                                              "controlnet.control={kind: fill}", "controlnet.hint_widths=[4, 8]",
                                              "train.steps=2"], port=29631, kind="controlnet")
