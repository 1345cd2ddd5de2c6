"""instruct-pix2pix (issue 20, item 3): three-way conditioning dropout, the dual classifier-free
guidance against its closed form, training on a paired-edit dataset and editing from the CLI."""

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main as cli
from difflab.guidance import InstructPix2PixGuidance
from difflab.image_condition import three_way_dropout
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.img2img import InitImages
from difflab.training.config import ConfigError
from difflab.training.trainer import train
from helpers import tiny_autoencoder, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = ["data.class_conditional=false", "data.text_conditional=true",
        "model.text_encoder={name: small, dim: 16, layers: 1, heads: 2, max_length: 12}"]
IP2P = ["data.dataset=edits-digits", *TEXT, "diffusion.image_condition=source", "diffusion.cond_drop_prob=0.05",
        "data.hflip=false"]


@pytest.mark.parametrize("p", [0.05, 0.1, 0.2])
def test_three_way_dropout_rates(p):
    u = torch.rand(2_000_000, generator=torch.Generator().manual_seed(0))
    drop_text, drop_image = three_way_dropout(u, p)
    rates = {"text only": (drop_text & ~drop_image).float().mean(), "both": (drop_text & drop_image).float().mean(),
             "image only": (~drop_text & drop_image).float().mean()}
    for case, rate in rates.items():
        assert abs(float(rate) - p) < 0.005, (case, float(rate))
    assert abs(float((~drop_text & ~drop_image).float().mean()) - (1 - 3 * p)) < 0.005


class Recorder:
    """A model function whose output is a known function of its conditioning: the text id plus 10×
    the image's mean, so each branch of the guidance is identifiable."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x_t, t, concat, context):
        self.calls += 1
        value = context[:, 0, 0] + 10 * concat.flatten(1).mean(1)
        return x_t * 0 + value.view(-1, 1, 1, 1)


def test_dual_guidance_is_the_closed_form_in_one_call():
    model = Recorder()
    null_text = {"context": torch.zeros(1, 1, 1)}
    guided = InstructPix2PixGuidance(model, text_scale=7.5, image_scale=1.5,
                                     text_uncond=lambda cond: {**cond, **null_text},
                                     image_uncond=lambda cond: {**cond, "concat": torch.zeros_like(cond["concat"])})
    x, t = torch.zeros(2, 1, 2, 2), torch.ones(2)
    cond = {"concat": torch.full((2, 1, 2, 2), 0.5), "context": torch.tensor([1.0, 2.0]).view(2, 1, 1)}
    out = guided(x, t, **cond)
    full, image_only, neither = torch.tensor([6.0, 7.0]), torch.tensor([5.0, 5.0]), torch.tensor([0.0, 0.0])
    expected = neither + 1.5 * (image_only - neither) + 7.5 * (full - image_only)
    assert model.calls == 1 and torch.allclose(out[:, 0, 0, 0], expected)
    plain = InstructPix2PixGuidance(model, 1.0, 1.0, lambda c: c, lambda c: c)
    assert torch.equal(plain(x, t, **cond), model(x, t, **cond))  # s_I = s_T = 1: the conditional model itself


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(tiny_config(tmp_path_factory.mktemp("ip2p") / "run", "train.steps=3", *IP2P), progress=False).parent


def test_objective_drops_text_and_image_at_the_configured_rates(tmp_path):
    from difflab.data import load_dataset
    from difflab.training.objectives.base import TrainingData
    from difflab.training.objectives.diffusion import DiffusionObjective

    config = tiny_config(tmp_path, *IP2P, "diffusion.cond_drop_prob=0.1")
    dataset = load_dataset("edits-digits", "train")
    objective = DiffusionObjective(config, TrainingData(dataset, dataset.images, None, torch.device("cpu")))
    objective.spec = objective.model_spec()
    assert objective.spec["concat_channels"] == 1
    counts = torch.zeros(4)
    for step in range(40):
        idx = torch.randint(0, len(dataset), (1000,), generator=torch.Generator().manual_seed(step))
        x0 = dataset.images[idx].float() / 127.5 - 1
        cond = objective.draw(x0, idx, step, torch.Generator().manual_seed(step))["cond"]
        no_image = cond["concat"].flatten(1).abs().sum(1) == 0
        no_text = cond["token_mask"].sum(1) == objective.null_caption["token_mask"].sum()
        counts += torch.stack([(no_text & ~no_image).sum(), (no_text & no_image).sum(), (~no_text & no_image).sum(),
                               (~no_text & ~no_image).sum()]).float()
    rates = counts / counts.sum()
    assert torch.allclose(rates, torch.tensor([0.1, 0.1, 0.1, 0.7]), atol=0.005), rates
    kept = ~no_image
    assert torch.allclose(cond["concat"][kept], dataset.sources[idx][kept].float() / 127.5 - 1)


@pytest.mark.parametrize("sets,message", [(["data.dataset=digits", *TEXT, "diffusion.image_condition=source"],
                                           "image-editing dataset"),
                                          ([*IP2P, "data.hflip=true"], "data.hflip"),
                                          ([*IP2P, "diffusion.cond_drop_prob=0.4"], "at most 1/3"),
                                          (["data.dataset=edits-nothing"], "unknown instruction dataset")])
def test_bad_instruct_pix2pix_configs(tmp_path, sets, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        train(tiny_config(tmp_path, "train.steps=1", *sets), progress=False)


def test_guidance_scales_and_the_fully_conditioned_output(run):
    model = DiffusionModel.load(run)
    sources = InitImages(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8), [None, None])
    kwargs = dict(steps=3, method="ddim", prompts=["mirror it"], cond_images=sources, seed=1)
    ones, _ = generate(model, 2, guidance=Guidance(scale=1.0, image_scale=1.0), **kwargs)
    seen = []
    model.network.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0].shape[0]), with_kwargs=True)
    again, _ = generate(model, 2, guidance=Guidance(scale=1.0, image_scale=1.0), **kwargs)
    assert torch.equal(ones, again) and set(seen) == {2}  # s_I = s_T = 1: one plain conditional call per step
    seen.clear()
    generate(model, 2, guidance=Guidance(scale=3.0, image_scale=1.5), **kwargs)
    assert set(seen) == {6}  # three branches in one batch
    with pytest.raises(ValueError, match="instruct-pix2pix model: give the image"):
        generate(model, 2, steps=2, prompts=["mirror it"])


def test_cli_edit_by_instruction(run, tmp_path, capsys):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8), "L").save(tmp_path / "in.png")
    out = tmp_path / "edited"
    assert cli(["edit", str(run), "--image", str(tmp_path / "in.png"), "--instruction", "turn it upside down",
                "--image-guidance", "1.2", "--guidance-scale", "2", "--steps", "2", "--out", str(out)]) == 0
    assert (out / "pairs.png").is_file() and len(list((out / "images").glob("*.png"))) == 1
    from difflab.pipelines.png_info import read_record

    record = read_record(next((out / "images").glob("*.png")))
    assert record["prompt"] == "turn it upside down" and record["image_guidance_scale"] == 1.2
    plain = train(tiny_config(tmp_path / "plain", "train.steps=1"), progress=False).parent
    assert cli(["edit", str(plain), "--image", str(tmp_path / "in.png"), "--instruction", "x",
                "--out", str(tmp_path / "bad")]) == 2
    assert "not an instruct-pix2pix model" in capsys.readouterr().err
    assert cli(["sample", str(plain), "--image-guidance", "1.5", "--n", "1", "--out", str(tmp_path / "bad2")]) == 2
    assert "image guidance" in capsys.readouterr().err


def test_latent_instruct_pix2pix_sees_unscaled_source_latents(tmp_path):
    """A latent model's source is its posterior-mean latents without the latent scale (the
    reference code's), at the latent grid; sampling edits through the autoencoder."""
    from difflab.image_condition import source_condition
    tiny_autoencoder(tmp_path / "ae")
    run = train(tiny_config(tmp_path / "latent", "train.steps=2", *IP2P, f"data.autoencoder={tmp_path / 'ae'}",
                            "model.options={model_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, "
                            "attention_resolutions: [2], num_heads: 1, norm_groups: 4}"), progress=False).parent
    model = DiffusionModel.load(run)
    assert model.network.config.concat_channels == model.image_shape[0]
    pixels = torch.rand(2, 1, 8, 8) * 2 - 1
    expected = model.latent.autoencoder.encode(pixels).mean
    assert torch.allclose(source_condition(pixels, model.latent), expected, atol=1e-5)
    sources = InitImages(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8), [None, None])
    images, _ = generate(model, 2, steps=2, prompts=["mirror it"], cond_images=sources,
                         guidance=Guidance(scale=2.0, image_scale=1.5))
    assert images.shape == (2, 1, 8, 8)
