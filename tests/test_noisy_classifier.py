"""ADM's noisy classifier (model, training through the trainer, resume) and guided sampling
from the command line: `difflab train-classifier --noisy`, `difflab sample --classifier` and
`--guidance-scale`, with their errors."""

import json

import numpy as np
import pytest
import torch

from difflab.cli import main as cli
from difflab.models import NoisyClassifier, UNetConfig, build_model
from difflab.nn import AttentionPool2d
from difflab.pipelines import DiffusionModel, Guidance, NoisyClassifierModel, generate
from difflab.schedules import get_schedule
from difflab.training.config import load_config
from difflab.training.trainer import train
from helpers import TINY

CLASSIFIER = [o.replace("model.name=unet", "model.name=noisy_classifier") for o in TINY]


def test_noisy_classifier_is_the_unet_encoder_with_attention_pooling():
    config = UNetConfig(in_channels=1, image_size=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,), num_heads=2, norm_groups=8, num_classes=7)
    net = NoisyClassifier(config)
    x = torch.randn(3, 1, 16, 16)
    logits = net(x, torch.tensor([0.0, 500.0, 999.0]))
    assert logits.shape == (3, 7) and logits.dtype == torch.float32
    with torch.no_grad():  # residual branches start at zero (t has no effect yet): give them weights
        for block in net.modules():
            if hasattr(block, "conv2"):
                block.conv2.weight.normal_(0, 0.1)
    t = torch.tensor([0.0, 500.0, 999.0])
    assert not torch.allclose(net(x, t), net(x, t.flip(0)))  # conditioned on t
    unet = build_model({"name": "unet", **{k: v for k, v in vars(config).items()}})
    assert {k for k in net.state_dict() if k.startswith(("stem", "encoder", "middle"))} == {
        k for k in unet.state_dict() if k.startswith(("stem", "encoder", "middle"))}
    with pytest.raises(ValueError, match="num_classes >= 2"):
        NoisyClassifier(UNetConfig(in_channels=1, image_size=16, num_classes=0))


def test_attention_pool_shapes():
    pool = AttentionPool2d(spatial_size=4, channels=8, out_dim=5, num_heads=2)
    out = pool(torch.randn(2, 8, 4, 4))
    assert out.shape == (2, 5)
    with pytest.raises(RuntimeError):
        pool(torch.randn(2, 8, 5, 5))  # the position embedding fixes the spatial size


def test_noisy_classifier_trains_and_resumes_exactly(tmp_path):
    full = train(load_config(None, CLASSIFIER + [f"train.out_dir={tmp_path / 'full'}", "train.steps=6"]),
                 progress=False)
    config = json.loads((full / "config.json").read_text())
    assert config["kind"] == "noisy_classifier" and config["model"]["num_classes"] == 10
    part = load_config(None, CLASSIFIER + [f"train.out_dir={tmp_path / 'part'}", "train.steps=3"])
    train(part, progress=False)
    part.train.steps = 6
    train(part, resume=tmp_path / "part", progress=False)

    def logged(run):
        records = map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
        return [(r["loss"], r["accuracy"]) for r in records]

    assert logged("full") == logged("part")
    with pytest.raises(ValueError, match="'noisy_classifier' checkpoint, expected a 'diffusion'"):
        DiffusionModel.load(full)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class-conditional model (label dropout), an unconditional one and a noisy classifier."""
    root = tmp_path_factory.mktemp("guided")
    common = ["--set", "train.steps=4", "--no-progress"]
    sets = []
    for item in TINY:
        sets += ["--set", item]
    assert cli(["train", *sets, "--set", "diffusion.cond_drop_prob=0.2", *common, "--out", str(root / "cond")]) == 0
    assert cli(["train", *sets, "--set", "data.class_conditional=false", *common, "--out", str(root / "uncond")]) == 0
    assert cli(["train", *sets, *common, "--out", str(root / "nodrop")]) == 0
    classifier_sets = [x.replace("model.name=unet", "model.name=noisy_classifier") for x in sets]
    assert cli(["train-classifier", "--noisy", "configs/demo-digits.yaml", *classifier_sets, *common,
                "--out", str(root / "classifier")]) == 0
    return root


def test_sample_cli_with_classifier_guidance_writes_per_class_grids(runs, tmp_path):
    out = tmp_path / "cg"
    assert cli(["sample", str(runs / "uncond"), "--classifier", str(runs / "classifier"), "--classifier-scale", "2",
                "--n", "12", "--steps", "3", "--out", str(out)]) == 0
    data = np.load(out / "samples.npz")
    assert list(data["labels"]) == [i % 10 for i in range(12)]
    assert (out / "grid.png").exists() and len(list((out / "grids").glob("*.png"))) == 10
    assert cli(["sample", str(runs / "uncond"), "--classifier", str(runs / "classifier"), "--method", "ddpm",
                "--class", "4", "--n", "3", "--steps", "3", "--out", str(tmp_path / "ddpm")]) == 0
    assert list(np.load(tmp_path / "ddpm" / "samples.npz")["labels"]) == [4, 4, 4]


def test_classifier_scale_zero_on_an_unconditional_model_is_plain_sampling(runs):
    model = DiffusionModel.load(runs / "uncond")
    classifier = NoisyClassifierModel.load(runs / "classifier")
    plain, none = generate(model, 4, steps=3)
    unguided, labels = generate(model, 4, steps=3, guidance=Guidance(classifier=classifier, classifier_scale=0.0))
    assert none is None and labels.tolist() == [0, 1, 2, 3] and torch.equal(plain, unguided)


def test_guidance_scale_zero_classifier_scale_equals_plain_sampling(runs):
    model = DiffusionModel.load(runs / "cond")
    classifier = NoisyClassifierModel.load(runs / "classifier")
    plain, _ = generate(model, 4, steps=3, guidance=Guidance(scale=1.0))
    unguided, _ = generate(model, 4, steps=3, guidance=Guidance(scale=1.0, classifier=classifier, classifier_scale=0.0))
    guided, _ = generate(model, 4, steps=3, guidance=Guidance(scale=1.0, classifier=classifier, classifier_scale=50.0))
    cfg, _ = generate(model, 4, steps=3, guidance=Guidance(scale=4.0))
    assert torch.equal(plain, unguided)
    assert not torch.equal(plain, guided) and not torch.equal(plain, cfg)


def test_guidance_errors_say_what_to_do(runs, tmp_path, capsys):
    code = cli(["sample", str(runs / "nodrop"), "--guidance-scale", "3", "--n", "2", "--steps", "2",
                "--out", str(tmp_path)])
    assert code == 2 and "diffusion.cond_drop_prob=0.1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs a class- or text-conditional model"):
        generate(DiffusionModel.load(runs / "uncond"), 2, steps=2, guidance=Guidance(scale=3.0))
    other = NoisyClassifierModel.load(runs / "classifier")
    other.schedule = get_schedule("cosine")  # the models use a 100-step linear schedule
    with pytest.raises(ValueError, match="noise schedule"):
        generate(DiffusionModel.load(runs / "uncond"), 2, steps=2,
                 guidance=Guidance(classifier=other, classifier_scale=1.0))
    with pytest.raises(ValueError, match="'diffusion' checkpoint, expected a 'noisy_classifier'"):
        NoisyClassifierModel.load(runs / "cond")
