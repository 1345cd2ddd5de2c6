"""Super-resolution models and cascades (issue 20, item 2): the low-resolution pairs and
noise-conditioning augmentation of training, the conditioning images of sampling (CLI, Python,
PNG records), the cascade, and the errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import Pipeline
from difflab.cli import main as cli
from difflab.image_condition import downsample, noise_augment, upsample
from difflab.pipelines import DiffusionModel, generate
from difflab.pipelines.img2img import InitImages
from difflab.pipelines.png_info import read_record
from difflab.pipelines.super_resolution import cascade, load_cond_images
from difflab.training.config import ConfigError
from difflab.training.trainer import train
from helpers import tiny_autoencoder, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

SR = ["diffusion.image_condition=low_res", "diffusion.low_res=4", "diffusion.aug_max=0.5",
      "diffusion.cond_drop_prob=0.1", "sample.aug_level=0.1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sr")
    base = train(tiny_config(root / "base", "train.steps=2", "data.resolution=4",
                             "model.options={model_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, "
                             "attention_resolutions: [2], num_heads: 1, norm_groups: 4}"), progress=False).parent
    sr = train(tiny_config(root / "sr", "train.steps=2", *SR), progress=False).parent
    return {"base": base, "sr": sr}


def test_pairs_and_augmentation():
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    low = downsample(x, 4)
    assert torch.allclose(low, x.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)))  # area averaging
    noise = torch.randn_like(low)
    assert torch.equal(noise_augment(low, torch.zeros(3), noise), low)
    assert torch.allclose(noise_augment(low, torch.ones(3), noise), noise, atol=1e-6)
    half = noise_augment(low, torch.full((3,), 0.5), noise)
    assert torch.allclose(half, (low + noise) / 2 ** 0.5, atol=1e-6)  # cos(π/4) = sin(π/4)
    assert upsample(low, (8, 8), "nearest").shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="below"):
        downsample(x, 8)
    with pytest.raises(ValueError, match="unknown upsampling"):
        upsample(low, (8, 8), "lanczos")


def test_objective_draws_noise_augmented_low_res(tmp_path):
    from difflab.training.objectives.base import TrainingData
    from difflab.training.objectives.diffusion import DiffusionObjective

    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)

    class Data:
        labels, class_names, captions, name = torch.zeros(32, dtype=torch.long), ["a"], None, "fake"

    objective = DiffusionObjective(tiny_config(tmp_path, *SR), TrainingData(Data(), images, None, torch.device("cpu")))
    objective.spec = objective.model_spec()  # what attach() records from the built network
    assert objective.spec["concat_channels"] == 1 and objective.spec["aug_level"] is True
    x0 = images.float() / 127.5 - 1
    cond = objective.draw(x0, torch.arange(32), 0, torch.Generator().manual_seed(0))["cond"]
    level = cond["aug_level"]
    assert level.shape == (32,) and 0 <= level.min() and level.max() <= 0.5 and level.std() > 0
    assert cond["concat"].shape == (32, 1, 8, 8)
    clean = DiffusionObjective(tiny_config(tmp_path, *SR[:2], "diffusion.aug_max=0"),
                               TrainingData(Data(), images, None, torch.device("cpu")))
    cond = clean.draw(x0, torch.arange(32), 0, torch.Generator().manual_seed(0))["cond"]
    assert "aug_level" not in cond and torch.allclose(cond["concat"], upsample(downsample(x0, 4), (8, 8)))


@pytest.mark.parametrize("sets,message", [(["diffusion.image_condition=low_res"], "needs diffusion.low_res"),
                                          (["diffusion.image_condition=low_res", "diffusion.low_res=8"],
                                           "below the images' 8")])
def test_bad_sr_configs(tmp_path, sets, message):
    with pytest.raises(ConfigError, match=message):
        train(tiny_config(tmp_path, "train.steps=1", *sets), progress=False)


def test_sampling_needs_and_uses_the_low_res_image(runs):
    model = DiffusionModel.load(runs["sr"])
    assert model.record.low_res == {"size": 4, "upsample": "bicubic", "aug_max": 0.5}
    with torch.no_grad():  # two training steps barely move the zero-initialised image weights
        torch.nn.init.normal_(model.network.concat_input.weight, std=0.5)
        torch.nn.init.normal_(model.network.aug_embed.mlp[-1].weight, std=0.5)
    low = InitImages(torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8), [None, None])
    with pytest.raises(ValueError, match="super-resolution model"):
        generate(model, 2, steps=2)
    a, _ = generate(model, 2, steps=2, cond_images=low, class_index=0)
    b, _ = generate(model, 2, steps=2, cond_images=InitImages(255 - low.images, [None, None]), class_index=0)
    assert a.shape == (2, 1, 8, 8) and not torch.equal(a, b)  # the image is seen
    c, _ = generate(model, 2, steps=2, cond_images=low, class_index=0, aug_level=0.4)
    assert not torch.equal(a, c)  # and its augmentation level
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        generate(model, 2, steps=2, cond_images=low, aug_level=1.5)
    plain = DiffusionModel.load(runs["base"])
    with pytest.raises(ValueError, match="takes no conditioning image"):
        generate(plain, 2, steps=2, cond_images=low)


def test_cond_images_are_resized_with_a_warning(runs):
    model = DiffusionModel.load(runs["sr"])
    with pytest.warns(UserWarning, match="resized"):
        loaded = load_cond_images(torch.randint(0, 256, (2, 1, 6, 6), dtype=torch.uint8), model)
    assert loaded.images.shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="uint8"):
        load_cond_images(torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8), model)  # wrong channels


def test_cli_and_png_record(runs, tmp_path, capsys):
    folder = tmp_path / "low"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8), "L").save(folder / f"{i}.png")
    out = tmp_path / "out"
    assert cli(["sample", str(runs["sr"]), "--cond-image", str(folder), "--steps", "2", "--aug-level", "0.2",
                "--out", str(out)]) == 0
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (8, 8)
    record = read_record(pngs[1])
    assert record["cond_image"].endswith("1.png") and record["aug_level"] == 0.2
    again = tmp_path / "again"
    assert cli(["sample", "--from-png", str(pngs[1]), "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(pngs[1])), np.asarray(Image.open(next((again / "images").glob("*")))))
    pipe = Pipeline.load(runs["sr"])
    assert len(pipe(cond_image=folder, steps=2)) == 3
    assert np.array_equal(np.asarray(pipe.from_png(pngs[1])), np.asarray(Image.open(pngs[1])))  # from Python too
    code = cli(["sample", str(runs["base"]), "--cond-image", str(folder), "--out", str(tmp_path / "bad")])
    assert code == 2 and "takes no conditioning image" in capsys.readouterr().err


def test_cascade(runs, tmp_path):
    base, sr = DiffusionModel.load(runs["base"]), DiffusionModel.load(runs["sr"])
    stages = cascade(base, [sr], 4, seed=3, steps=2)
    assert [s.images.shape[-1] for s in stages] == [4, 8]
    alone, _ = generate(base, 4, seed=3, steps=2)
    assert torch.equal(stages[0].images, alone)  # the base stage is plain sampling
    with pytest.raises(ValueError, match="order the stages"):
        cascade(base, [sr, sr], 2, steps=1)  # the second stage gets 8-pixel images
    out = tmp_path / "cascade"
    assert cli(["cascade", str(runs["base"]), str(runs["sr"]), "--n", "4", "--steps", "2", "--out", str(out)]) == 0
    assert (out / "cascade.png").is_file() and len(list((out / "stage-1" / "images").glob("*.png"))) == 4


def test_latent_super_resolution_sees_low_res_pixels_on_the_latent_grid(tmp_path):
    """A latent upsampler (Stable Diffusion's x4 upscaler's layout): the low-resolution pixels,
    resized to the latent grid, beside the latents; sampling decodes full-size images."""
    tiny_autoencoder(tmp_path / "ae")
    run = train(tiny_config(tmp_path / "latent", "train.steps=2", *SR, f"data.autoencoder={tmp_path / 'ae'}",
                            "model.options={model_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, "
                            "attention_resolutions: [2], num_heads: 1, norm_groups: 4}"), progress=False).parent
    model = DiffusionModel.load(run)
    assert model.network.config.concat_channels == 1  # the low-res image's pixel channels, not the latents'
    low = InitImages(torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8), [None, None])
    seen = []
    model.network.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["concat"].shape), with_kwargs=True)
    images, _ = generate(model, 2, steps=2, cond_images=low, class_index=0)
    assert images.shape == (2, 1, 8, 8) and seen[0][-2:] == model.image_shape[-2:]


def test_per_image_labels_equal_one_call_per_class(runs):
    """generate(labels=...) gives image i its own class; the same images as one call per class."""
    model = DiffusionModel.load(runs["base"])
    labels = torch.tensor([3, 1, 3, 0])
    together, got = generate(model, 4, seeds=[5, 6, 7, 8], labels=labels, steps=2)
    assert torch.equal(got, labels)
    for label in labels.unique().tolist():
        rows = (labels == label).nonzero().flatten().tolist()
        alone, _ = generate(model, len(rows), seeds=[5 + i for i in rows], class_index=label, steps=2)
        assert torch.equal(together[rows], alone)
    with pytest.raises(ValueError, match="not both"):
        generate(model, 4, labels=labels, class_index=1, steps=2)
    with pytest.raises(ValueError, match="class indices in 0..9"):
        generate(model, 4, labels=torch.tensor([0, 1, 2, 10]), steps=2)
