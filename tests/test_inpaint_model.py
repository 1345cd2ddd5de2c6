"""Mask-conditioned inpainting models (issue 19, item 2): random training masks, the concatenated
image in the U-Net and DiT, the training objective (pixel and latent) and sampling with
``--inpaint model``: the network sees exactly the mask and masked image, CFG's two branches alike."""

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main as cli
from difflab.image_condition import concat_channels, inpaint_condition
from difflab.masks import TRAINING_MASKS, random_border, random_box, random_masks, random_strokes, shape_mask
from difflab.models import build_model
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.generate import Edit
from difflab.pipelines.img2img import load_init_images
from difflab.pipelines.inpaint import Inpainting
from difflab.training.config import ConfigError, load_config
from difflab.training.trainer import train
from helpers import tiny_autoencoder, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


# -- random training masks --------------------------------------------------------------------------
def test_random_masks_are_seeded_binary_and_mixed():
    a = random_masks(64, (16, 16), torch.Generator().manual_seed(3))
    b = random_masks(64, (16, 16), torch.Generator().manual_seed(3))
    assert a.shape == (64, 1, 16, 16) and torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    coverage = a.mean(dim=(1, 2, 3))
    assert (coverage == 1).any() and (coverage < 1).any() and (coverage > 0).all()  # full masks and partial ones
    assert not torch.equal(a, random_masks(64, (16, 16), torch.Generator().manual_seed(4)))


def test_each_mask_kind():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        box = random_box((16, 16), g)[0]
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert 4 <= h <= 12 and 4 <= w <= 12 and box.sum() == h * w  # one rectangle, sides in [1/4, 3/4]
        border = random_border((16, 16), g)[0]
        assert border.sum() > 0 and border[4:12, 4:12].sum() < 64  # touches a side, keeps part of the centre
        assert bool(border[0].all() or border[-1].all() or border[:, 0].all() or border[:, -1].all())
        assert random_strokes((16, 16), g).sum() > 0
    only_full = random_masks(5, (8, 8), g, {"full": 1.0})
    assert only_full.eq(1).all()
    assert abs(sum(TRAINING_MASKS.values()) - 1) < 1e-9


@pytest.mark.parametrize("mix", [{}, {"circle": 1}, {"box": -1}, {"box": 0}])
def test_bad_mask_mix(mix):
    with pytest.raises(ValueError, match="mask mix"):
        random_masks(2, (8, 8), torch.Generator(), mix)


# -- the concatenated image in the networks -----------------------------------------------------------
@pytest.mark.parametrize("name", ["unet", "dit"])
def test_networks_take_the_concatenated_image(name):
    options = ({"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
                "norm_groups": 4} if name == "unet" else {"patch_size": 2, "hidden_size": 16, "depth": 1,
                                                           "num_heads": 2})
    torch.manual_seed(0)
    net = build_model({"name": name, "in_channels": 1, "image_size": 8, "concat_channels": 2, **options}).eval()
    for p in net.parameters():  # DiT starts with a zero output layer: give every weight a value
        torch.nn.init.normal_(p, std=0.2)
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 10.0)
    concat = torch.randn(2, 2, 8, 8)
    out = net(x, t, concat=concat)
    assert out.shape == (2, 1, 8, 8)  # the output keeps the image's channels
    assert not torch.allclose(out, net(x, t, concat=concat + 1))  # the image is seen
    with pytest.raises(ValueError, match="image-conditioned"):
        net(x, t)
    with pytest.raises(ValueError, match=r"concat of shape \(2, 2, 8, 8\)"):
        net(x, t, concat=torch.randn(2, 3, 8, 8))
    plain = build_model({"name": name, "in_channels": 1, "image_size": 8, **options})
    with pytest.raises(ValueError, match="without image conditioning"):
        plain(x, t, concat=concat)
    with pytest.raises(ValueError, match="concat_channels must be >= 0"):
        build_model({"name": name, "in_channels": 1, "image_size": 8, "concat_channels": -1, **options})


def test_inpaint_condition_pixels():
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = shape_mask("left-half", (8, 8))[None].expand(2, 1, 8, 8) * 0.5  # feathered: still repainted
    concat = inpaint_condition(mask, pixels)
    assert concat.shape == (2, 1 + 3, 8, 8) and concat_channels("inpaint", 3) == 4
    assert concat[:, :1, :, :4].eq(1).all() and concat[:, :1, :, 4:].eq(0).all()
    assert concat[:, 1:, :, :4].eq(0).all() and torch.equal(concat[:, 1:, :, 4:], pixels[..., 4:])
    with pytest.raises(ValueError, match="unknown image condition"):
        concat_channels("depth", 3)


# -- training --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inpaint_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpaint-model")
    return train(tiny_config(root / "run", "train.steps=3", "diffusion.cond_drop_prob=0.2",
                             "diffusion.image_condition=inpaint"), progress=False).parent


def test_training_records_the_condition(inpaint_run):
    model = DiffusionModel.load(inpaint_run)
    assert model.image_condition == "inpaint" and model.network.config.concat_channels == 2
    assert model.network.stem.in_channels == 1 and model.network.concat_input.in_channels == 2


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_init_from_an_unconditioned_model_starts_as_it(tmp_path, name):
    """The new image channels start at zero: before any step the widened model's outputs equal
    the source's bit for bit, whatever the image (issue 20's zero-initialised conditioning)."""
    dit = ["model.name=dit", "model.options={patch_size: 2, hidden_size: 16, depth: 1, num_heads: 2}"]
    extra = dit if name == "dit" else []
    source = train(tiny_config(tmp_path / "source", "train.steps=2", *extra), progress=False).parent
    widened = train(tiny_config(tmp_path / "widened", "train.steps=1", "optim.lr=0",
                                "diffusion.image_condition=inpaint", *extra), progress=False, init_from=source).parent
    old, new = DiffusionModel.load(source, use_ema=False), DiffusionModel.load(widened, use_ema=False)
    assert new.network.config.concat_channels == 2 and new.network.concat_input.weight.eq(0).all()
    x, t, labels = torch.randn(4, 1, 8, 8), torch.full((4,), 30.0), torch.tensor([0, 1, 2, 10])
    expected = old.network(x, t, class_labels=labels)
    for concat in (torch.zeros(4, 2, 8, 8), torch.randn(4, 2, 8, 8)):
        assert torch.equal(new.network(x, t, class_labels=labels, concat=concat), expected)


@pytest.mark.parametrize("key,value", [("diffusion.image_condition", "depth"),
                                       ("diffusion.inpaint_masks", "{box: -1}"),
                                       ("diffusion.inpaint_masks", "{lasso: 1}")])
def test_bad_inpaint_config(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [f"{key}={value}", f"train.out_dir={tmp_path}"])


def test_objective_draws_masks_and_masked_images(tmp_path):
    from difflab.training.objectives.base import TrainingData
    from difflab.training.objectives.diffusion import DiffusionObjective

    config = tiny_config(tmp_path, "diffusion.image_condition=inpaint")
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)

    class Data:
        labels, class_names, captions, name = torch.zeros(16, dtype=torch.long), ["a"], None, "fake"

    objective = DiffusionObjective(config, TrainingData(Data(), images, None, torch.device("cpu")))
    x0 = images.float() / 127.5 - 1
    one = objective.draw(x0, torch.arange(16), 7, torch.Generator().manual_seed(0))["cond"]["concat"]
    again = objective.draw(x0, torch.arange(16), 7, torch.Generator().manual_seed(1))["cond"]["concat"]
    other = objective.draw(x0, torch.arange(16), 8, torch.Generator().manual_seed(0))["cond"]["concat"]
    assert torch.equal(one, again) and not torch.equal(one, other)  # masks depend on (seed, step) only
    mask = one[:, :1]
    assert torch.equal(one[:, 1:], x0 * (1 - mask))


def test_latent_inpainting_model_trains_on_encoded_masked_images(tmp_path):
    """A latent inpainting model: the masked image is encoded (from the batch's pixels, flipped
    alike), the mask area-averaged to the latent grid; the trained model fills a mask."""
    tiny_autoencoder(tmp_path / "ae")
    run = train(tiny_config(tmp_path / "latent", "train.steps=2", f"data.autoencoder={tmp_path / 'ae'}",
                            "data.hflip=true", "diffusion.image_condition=inpaint",
                            "model.options={model_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, "
                            "attention_resolutions: [2], num_heads: 1, norm_groups: 4}"), progress=False).parent
    model = DiffusionModel.load(run)
    c = model.image_shape[0]
    assert model.network.config.concat_channels == 1 + c
    pixels = torch.rand(2, 1, 8, 8) * 2 - 1
    mask = shape_mask("centre", (8, 8))[None].expand(2, 1, 8, 8)
    concat = inpaint_condition(mask, pixels, model.latent)
    assert concat.shape == (2, 1 + c, *model.image_shape[1:])
    assert torch.allclose(concat[:, 1:], model.latent.encode(pixels * (1 - mask), mean=True))
    init = load_init_images(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8), model)
    images, _ = generate(model, 2, steps=3, edit=Edit(init, inpaint=Inpainting(mask, "model")))
    outside = mask[:, :, :, :] == 0
    assert torch.equal(images[outside.expand_as(images)], init.images[outside.expand_as(images)])


# -- sampling with the model's own inpainting -------------------------------------------------------
def concat_inputs(network) -> list:
    """Every ``concat`` the network is called with, from now on."""
    seen = []
    network.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("concat")), with_kwargs=True)
    return seen


def test_model_mode_feeds_mask_and_masked_image(inpaint_run):
    model = DiffusionModel.load(inpaint_run)
    seen = concat_inputs(model.network)
    init = load_init_images(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8), model)
    mask = shape_mask("bottom-half", (8, 8))[None]
    edit = Edit(init, inpaint=Inpainting(mask, "model"))
    images, _ = generate(model, 3, steps=4, guidance=Guidance(scale=3.0), edit=edit, class_index=1)
    expected = inpaint_condition(mask.expand(3, 1, 8, 8), init.images.float() / 127.5 - 1)
    assert seen and all(c.shape[0] == 6 for c in seen)  # CFG: conditional and unconditional branches
    assert all(torch.equal(c[:3], expected) and torch.equal(c[3:], expected) for c in seen)  # the same image
    keep = mask.expand(3, 1, 8, 8) == 0
    assert torch.equal(images[keep], init.images[keep])  # outside the mask: the input, bit for bit
    seen.clear()  # plain generation: everything repainted, from an empty image
    generate(model, 2, steps=2, class_index=0)
    assert seen and all(c[:, :1].eq(1).all() and c[:, 1:].eq(0).all() for c in seen)


def test_model_mode_from_cli_is_the_default(inpaint_run, tmp_path):
    from difflab.pipelines.png_info import read_record

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8), "L").save(tmp_path / "in.png")
    out = tmp_path / "out"
    assert cli(["sample", str(inpaint_run), "--init-image", str(tmp_path / "in.png"), "--mask-shape", "centre",
                "--steps", "3", "--out", str(out)]) == 0
    record = read_record(sorted((out / "images").glob("*.png"))[0])
    assert record["inpaint"] == "model" and record["mask"] == "shape:centre"


def test_model_mode_needs_an_inpainting_model(tmp_path, capsys):
    run = train(tiny_config(tmp_path / "plain", "train.steps=1"), progress=False).parent
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), "L").save(tmp_path / "in.png")
    code = cli(["sample", str(run), "--init-image", str(tmp_path / "in.png"), "--mask-shape", "centre",
                "--inpaint", "model", "--out", str(tmp_path / "o")])
    assert code == 2 and "not trained for inpainting" in capsys.readouterr().err
