"""ControlNet (issue 21): the model against the base and diffusers' hint encoder, training on a
frozen base, sampling with scale / window / guess mode / several ControlNets, and bad input."""

import json

import numpy as np
import pytest
import torch
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from PIL import Image

from difflab import losses
from difflab.checkpoint import load_state, weights_sha256
from difflab.cli import main as cli
from difflab.controls import canny
from difflab.data import load_dataset, random_placement, to_float, to_uint8
from difflab.data.fill import draw_fill, load_fill
from difflab.errors import UserError
from difflab.images import save_images
from difflab.models import DiT, DiTConfig, UNet, UNetConfig, build_model, model_config_dict
from difflab.models.controlnet import ControlNet, DiTControlNet, HintEncoder, guess_mode_scales
from difflab.pipelines import DiffusionModel, generate
from difflab.pipelines.controlnet import Control, ControlledNetwork, ControlNetModel, controlnet_inputs, walk_index
from difflab.pipelines.generate import Edit
from difflab.pipelines.img2img import InitImages
from difflab.pipelines.inpaint import Inpainting
from difflab.training.config import ConfigError, load_config
from difflab.training.objectives import ControlNetObjective
from difflab.training.objectives.base import TrainingData
from difflab.training.trainer import train
from helpers import TINY, perturb_head

pytestmark = pytest.mark.usefixtures("one_thread")

FILL = ["data.dataset=fill", "data.resolution=8", "data.hflip=false", "diffusion.cond_drop_prob=0.1"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "a", "b"]
CN = ["controlnet.control={kind: fill}", "controlnet.hint_widths=[4, 8]", "train.steps=3", "optim.batch_size=8"]


def tiny_unet(**kw) -> UNet:
    torch.manual_seed(0)
    config = dict(in_channels=3, image_size=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,), num_heads=2, norm_groups=8)
    base = UNet(UNetConfig(**{**config, **kw}))
    perturb_head(base)  # zero-initialised layers random, so the output depends on everything
    return base.eval()


@pytest.mark.parametrize("kind", ["class", "context", "small_text", "concat"])
def test_fresh_controlnet_leaves_the_base_bit_identical(kind):
    options = {"class": dict(num_classes=4), "context": dict(context_dim=8),
               "small_text": dict(context_dim=8, text_encoder={"name": "small", "vocab": VOCAB, "dim": 8, "layers": 1,
                                                               "heads": 2, "max_length": 4}),
               "concat": dict(concat_channels=2)}[kind]
    base = tiny_unet(**options)
    net = ControlNet.from_model(base, hint_channels=1).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 700.0])
    cond = {"class": {"class_labels": torch.tensor([1, 3])},
            "context": {"context": torch.randn(2, 5, 8), "context_mask": torch.ones(2, 5, dtype=torch.bool)},
            "small_text": {"input_ids": torch.tensor([[2, 3, 0, 0], [2, 4, 3, 0]]),
                           "token_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)},
            "concat": {"concat": torch.randn(2, 2, 16, 16)}}[kind]
    with torch.no_grad():
        residuals = net(x, t, torch.rand(2, 1, 16, 16), **controlnet_inputs(base, cond))
        assert len(residuals) == len(net.zero_convs) + 1 == 5
        assert all(not r.any() for r in residuals)  # the zero convolutions
        assert torch.equal(base(x, t, **cond, control=residuals), base(x, t, **cond))
    # the copy is the base's encoder, weight for weight
    for name, tensor in base.encoder.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[name], tensor)


def test_unlocked_decoder_starts_as_the_base_and_round_trips_its_config():
    base = tiny_unet(num_classes=2)
    net = ControlNet.from_model(base, hint_channels=3, unlock_decoder=True).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([5.0, 50.0]), torch.tensor([0, 1])
    with torch.no_grad():
        out = base(x, t, y, control=net(x, t, torch.rand(2, 3, 16, 16), class_labels=y), decoder=net)
    assert torch.equal(out, base(x, t, y))
    rebuilt = build_model(json.loads(json.dumps(model_config_dict(net))))
    assert rebuilt.config == net.config and isinstance(rebuilt.decoder, torch.nn.ModuleList)


def test_hint_encoder_equals_diffusers_conditioning_embedding():
    """Stable Diffusion's hint encoder (×8, widths 16-32-96-256) is diffusers' ControlNetConditioningEmbedding."""
    theirs = ControlNetConditioningEmbedding(320, conditioning_channels=3, block_out_channels=(16, 32, 96, 256))
    torch.nn.init.normal_(theirs.conv_out.weight, std=0.02)
    ours = HintEncoder(3, (16, 32, 96, 256), 8, 320)
    convs = [m for m in ours.layers if isinstance(m, torch.nn.Conv2d)]
    sources = [theirs.conv_in, *theirs.blocks, theirs.conv_out]
    assert len(convs) == len(sources)
    for mine, source in zip(convs, sources):
        assert mine.stride == source.stride
        mine.load_state_dict(source.state_dict())
    hint = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(hint), theirs(hint), rtol=0, atol=1e-6)
        assert ours(hint).shape == (2, 320, 8, 8)


def test_guess_mode_scales_are_the_reference_codes():
    assert guess_mode_scales(13) == [0.825 ** float(12 - i) for i in range(13)]
    assert guess_mode_scales(5)[-1] == 1.0


def test_walk_index_and_window_follow_diffusers_rule():
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.0])
    assert [walk_index(sigmas, s) for s in (10.0, 7.0, 5.0, 2.0, 1.0, 0.5, 0.01)] == [0, 0, 1, 2, 3, 4, 4]
    n, start, end = 5, 0.2, 0.8
    # diffusers: keep = 1 - float(i / n < start or (i + 1) / n > end)
    expected = [1.0 - float(i / n < start or (i + 1) / n > end) for i in range(n)]
    ours = [float(start <= i / n and (i + 1) / n <= end) for i in range(n)]
    assert ours == expected


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class-conditional base on 8x8 fill images and a ControlNet trained on it for 3 steps."""
    root = tmp_path_factory.mktemp("controlnet")
    base = root / "base"
    train(load_config(None, TINY + FILL + [f"train.out_dir={base}", "train.steps=3"]), progress=False)
    net = root / "cn"
    config = load_config(None, TINY + FILL + CN + [f"controlnet.base={base}", f"train.out_dir={net}"])
    train(config, progress=False, objective=ControlNetObjective)
    return base, net


def test_the_checkpoint_holds_the_control_branch_and_the_base_hash(runs):
    base, net = runs
    config, tensors, _ = load_state(net, kind="controlnet")
    assert config["kind"] == "controlnet" and config["control"] == {"kind": "fill"}
    assert all(not k.startswith(("decoder.", "head.")) for k in tensors["ema"])  # the control branch only
    assert config["base"]["weights_sha256"] == weights_sha256(DiffusionModel.load(base).network.state_dict())
    assert config["model"]["hint_channels"] == 1 and config["model"]["hint_factor"] == 1


def test_training_leaves_the_base_frozen_and_resumes_exactly(runs, tmp_path):
    base, _ = runs
    before = weights_sha256(DiffusionModel.load(base).network.state_dict())
    common = TINY + FILL + CN + [f"controlnet.base={base}"]
    whole = train(load_config(None, common + [f"train.out_dir={tmp_path / 'a'}", "train.steps=4"]), progress=False,
                  objective=ControlNetObjective)
    train(load_config(None, common + [f"train.out_dir={tmp_path / 'b'}", "train.steps=2"]), progress=False,
          objective=ControlNetObjective)
    parts = train(load_config(None, common + [f"train.out_dir={tmp_path / 'b'}", "train.steps=4"]),
                  resume=tmp_path / "b", progress=False, objective=ControlNetObjective)
    a, b = load_state(whole, kind="controlnet")[1]["model"], load_state(parts, kind="controlnet")[1]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert weights_sha256(DiffusionModel.load(base).network.state_dict()) == before
    # the trainable copy moved away from the base's encoder
    trained = load_state(whole, kind="controlnet")[1]["model"]
    assert any(trained[k].abs().sum() > 0 for k in trained if k.startswith("zero_convs."))


def control_of(net_path, n=4, scale=None, **kw):
    data, _ = draw_fill(n, 8, 99)
    return Control(ControlNetModel.load(net_path), InitImages(data.controls, [None] * n), scale, **kw), data.labels


def test_scale_zero_is_the_base_bit_for_bit_and_two_halves_make_one(runs):
    base_path, net = runs
    base = DiffusionModel.load(base_path)
    control, labels = control_of(net, scale=0.0)
    plain, _ = generate(base, 4, labels=labels, steps=4)
    off, _ = generate(base, 4, labels=labels, steps=4, controls=[control])
    assert torch.equal(plain, off)
    one, _ = generate(base, 4, labels=labels, steps=4, controls=[control_of(net, scale=1.0)[0]])
    halves, _ = generate(base, 4, labels=labels, steps=4, controls=[control_of(net, scale=0.5)[0]] * 2)
    assert torch.equal(one, halves)


def test_guess_mode_leaves_the_unconditional_rows_to_the_base(runs):
    base_path, net = runs
    base = DiffusionModel.load(base_path)
    control, _ = control_of(net, scale=1.0, guess_mode=True)
    perturb_head(control.net.network)  # so the branch adds something
    controlled = ControlledNetwork(base.network, [control], base.schedule)
    x, t = torch.randn(4, 3, 8, 8), torch.full((4,), 30.0)
    y = torch.tensor([0, 1, 2, 3])
    hint = control.images.images.float() / 255
    with torch.no_grad():
        out = controlled(x, t, control=hint, control_branch=torch.tensor([1.0, 1.0, 0.0, 0.0]), class_labels=y)
        plain = base.network(x, t, class_labels=y)
    assert torch.equal(out[2:], plain[2:]) and not torch.equal(out[:2], plain[:2])


def test_the_window_switches_the_controlnet_off_by_step(runs):
    base_path, net = runs
    base = DiffusionModel.load(base_path)
    control, labels = control_of(net, scale=1.0)
    perturb_head(control.net.network)
    calls = []
    control.net.network.register_forward_hook(lambda *_: calls.append(1))
    generate(base, 4, labels=labels, steps=10, method="euler", controls=[control])
    assert len(calls) == 10
    calls.clear()
    late, _ = control_of(net, scale=1.0, start=0.3, end=0.8)
    late.net.network = control.net.network
    generate(base, 4, labels=labels, steps=10, method="euler", controls=[late])
    assert len(calls) == 5  # steps 3..7 of 10


def test_cli_sample_with_a_controlnet_and_from_png(runs, tmp_path):
    base, net = runs
    data, _ = draw_fill(2, 8, 5)
    save_images(data.controls, tmp_path / "outlines", names=["a.png", "b.png"])
    out = tmp_path / "out"
    assert cli(["sample", str(base), "--controlnet", str(net), "--control-image", str(tmp_path / "outlines"),
                "--control-scale", "0.8", "--steps", "3", "--out", str(out)]) == 0
    first, second = sorted((out / "images").glob("*.png"))
    record = json.loads(Image.open(first).text["difflab"])
    assert record["controlnets"][0]["control_scale"] == 0.8
    again = tmp_path / "again"
    assert cli(["sample", "--from-png", str(second), "--out", str(again)]) == 0
    (remade,) = sorted((again / "images").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(second)), np.asarray(Image.open(remade)))


def test_bad_input_is_one_clear_message(runs, tmp_path, capsys):
    base, net = runs
    data, _ = draw_fill(1, 8, 5)
    save_images(data.images, tmp_path / "rgb", names=["a.png"])
    # a control image that does not match: an RGB picture for a 1-channel ControlNet is read as grey;
    # a tensor of the wrong channels is refused
    model = DiffusionModel.load(base)
    wrong = Control(ControlNetModel.load(net), InitImages(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), [None]))
    with pytest.raises(UserError, match="1-channel control images of 8x8"):
        generate(model, 1, controls=[wrong], steps=2)
    # a base whose weights changed since: refused, --force applies it anyway
    other = tmp_path / "other"
    train(load_config(None, TINY + FILL + [f"train.out_dir={other}", "train.steps=4"]), progress=False)
    args = ["sample", str(other), "--controlnet", str(net), "--control-image", str(tmp_path / "rgb"), "--steps", "2",
            "--n", "1", "--out", str(tmp_path / "o")]
    assert cli(args) != 0
    err = capsys.readouterr().err
    assert "other weights" in err and "--force" in err and "Traceback" not in err
    assert cli([*args, "--force"]) == 0
    # a ControlNet without its image, and an image without a ControlNet
    assert cli(["sample", str(base), "--controlnet", str(net), "--n", "1", "--out", str(tmp_path / "p")]) != 0
    assert "--control-image" in capsys.readouterr().err
    assert cli(["sample", str(base), "--control-image", "x.png", "--n", "1", "--out", str(tmp_path / "q")]) != 0
    assert "add --controlnet" in capsys.readouterr().err
    # a diffusion run given as --controlnet
    assert cli(["sample", str(base), "--controlnet", str(base), "--control-image", "x.png", "--out",
                str(tmp_path / "r")]) != 0
    assert "train-controlnet" in capsys.readouterr().err


def test_a_fresh_dit_controlnet_leaves_the_dit_bit_identical():
    torch.manual_seed(0)
    base = DiT(DiTConfig(in_channels=3, image_size=8, patch_size=2, hidden_size=16, depth=3, num_heads=2,
                         num_classes=3, context_dim=6)).eval()
    perturb_head(base)
    net = DiTControlNet.from_model(base, hint_channels=1, hint_widths=(4, 8)).eval()
    assert len(net.blocks) == net.num_residuals == 2  # half the depth, rounded up (PixArt-δ: 13 of 28)
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 600.0]), torch.tensor([0, 2])
    cond = {"class_labels": y, "context": torch.randn(2, 4, 6)}
    with torch.no_grad():
        residuals = net(x, t, torch.rand(2, 1, 8, 8), **cond)
        assert [tuple(r.shape) for r in residuals] == [(2, 16, 16)] * 2 and not any(r.any() for r in residuals)
        assert torch.equal(base(x, t, **cond, control=residuals), base(x, t, **cond))
        perturb_head(net)  # trained: the residuals reach the base
        assert not torch.equal(base(x, t, **cond, control=net(x, t, torch.rand(2, 1, 8, 8), **cond)),
                               base(x, t, **cond))
    rebuilt = build_model(json.loads(json.dumps(model_config_dict(net))))
    assert isinstance(rebuilt, DiTControlNet) and rebuilt.config == net.config


def test_a_controlnet_on_a_dit_base_trains_and_samples(tmp_path):
    dit = TINY[:4] + ["model.name=dit", "model.options={patch_size: 2, hidden_size: 16, depth: 2, num_heads: 2}"] + \
        TINY[5:]
    base = tmp_path / "dit"
    train(load_config(None, dit + FILL + [f"train.out_dir={base}", "train.steps=2"]), progress=False)
    config = load_config(None, TINY + FILL + CN + [f"controlnet.base={base}", f"train.out_dir={tmp_path / 'cn'}"])
    train(config, progress=False, objective=ControlNetObjective)
    net = ControlNetModel.load(tmp_path / "cn")
    assert isinstance(net.network, DiTControlNet) and net.network.num_residuals == 1
    model = DiffusionModel.load(base)
    data, _ = draw_fill(2, 8, 1)
    control = Control(net, InitImages(data.controls, [None, None]), 0.0)
    assert torch.equal(generate(model, 2, labels=data.labels, steps=3)[0],
                       generate(model, 2, labels=data.labels, steps=3, controls=[control])[0])
    unlocked = load_config(None, TINY + FILL + CN + [f"controlnet.base={base}", "controlnet.unlock_decoder=true",
                                                     f"train.out_dir={tmp_path / 'u'}"])
    with pytest.raises(ConfigError, match="a DiT has none"):
        train(unlocked, progress=False, objective=ControlNetObjective)


def test_the_fill_set_is_deterministic_with_outlines_as_controls():
    a, b = load_fill("test", 16), load_fill("test", 16)
    assert torch.equal(a.images, b.images) and torch.equal(a.controls, b.controls)
    assert a.controls.shape == (2000, 1, 16, 16) and a.captions[0] == f"a {a.class_names[int(a.labels[0])]} circle"
    assert not torch.equal(load_fill("train", 16).images[:10], a.images[:10])


def test_controlnets_compose_with_img2img_and_inpainting(runs):
    base_path, net = runs
    base = DiffusionModel.load(base_path)
    data, _ = draw_fill(2, 8, 11)
    init = InitImages(data.images, [None, None])
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1
    for edit in (Edit(init, strength=0.6), Edit(init, inpaint=Inpainting(mask, "blend"))):
        plain, _ = generate(base, 2, labels=data.labels, steps=5, edit=edit)
        off, _ = generate(base, 2, labels=data.labels, steps=5, edit=edit, controls=[control_of(net, 2, 0.0)[0]])
        on_control = control_of(net, 2, 1.0)[0]
        perturb_head(on_control.net.network)
        on, _ = generate(base, 2, labels=data.labels, steps=5, edit=edit, controls=[on_control])
        assert torch.equal(plain, off) and not torch.equal(plain, on)
        if edit.inpaint is not None:  # the kept half stays the original's, control or not
            assert torch.equal(on[..., 4:], data.images[..., 4:])


def test_an_unlocked_decoder_is_trained_and_used(runs, tmp_path):
    base, _ = runs
    before = weights_sha256(DiffusionModel.load(base).network.state_dict())
    config = load_config(None, TINY + FILL + CN + [f"controlnet.base={base}", "controlnet.unlock_decoder=true",
                                                   f"train.out_dir={tmp_path}"])
    train(config, progress=False, objective=ControlNetObjective)
    net = ControlNetModel.load(tmp_path)
    tensors = load_state(tmp_path, kind="controlnet")[1]["model"]
    assert any(k.startswith("decoder.") for k in tensors) and any(k.startswith("head.") for k in tensors)
    model = DiffusionModel.load(base)
    assert weights_sha256(model.network.state_dict()) == before
    head = model.network.head[-1].weight
    assert not torch.equal(net.network.head[-1].weight, head)  # the copy moved, the base did not
    control, labels = Control(net, InitImages(draw_fill(2, 8, 3)[0].controls, [None, None]), 0.0), torch.tensor([0, 1])
    # at scale 0 the residuals are off, yet the unlocked decoder is the ControlNet's
    controlled = ControlledNetwork(model.network, [control], model.schedule)
    x, t = torch.randn(2, 3, 8, 8), torch.full((2,), 20.0)
    with torch.no_grad():
        assert torch.equal(controlled(x, t, class_labels=labels),
                           model.network(x, t, class_labels=labels, decoder=net.network))


def test_placed_images_are_trained_with_the_controls_of_their_placement(runs, tmp_path):
    base, _ = runs
    config = load_config(None, TINY + FILL + CN + [f"controlnet.base={base}", "controlnet.control={kind: canny}",
                                                   "data.random_placement=[0.5, 0.75]", f"train.out_dir={tmp_path}"])
    data = load_dataset("fill", "train", 8)
    objective = ControlNetObjective(config, TrainingData(data, data.images, None, torch.device("cpu")))
    x0 = random_placement(to_float(data.images[:6]), (0.5, 0.75), torch.Generator().manual_seed(1))
    drawn = objective.draw(x0, torch.arange(6), 0, torch.Generator().manual_seed(2))
    expected = canny(to_uint8(x0)).float() / 255  # the placed images' edges, not the stored ones
    assert torch.equal(drawn["cond"]["control_image"], expected)
    assert not torch.equal(expected, canny(data.images[:6]).float() / 255)
    train(config, progress=False, objective=ControlNetObjective)  # and the trainer places every batch
    assert json.loads((tmp_path / "checkpoint" / "config.json").read_text())["train_config"]["data"][
        "random_placement"] == [0.5, 0.75]


def test_bad_controlnet_configs_are_one_clear_error_before_training(runs, tmp_path):
    base, _ = runs
    cases = {
        "give --base RUN": [],
        "data.hflip": [f"controlnet.base={base}", "data.hflip=true"],
        "data.class_conditional must be True": [f"controlnet.base={base}", "data.class_conditional=false"],
        "unknown control kind": [f"controlnet.base={base}", "controlnet.control={kind: depth}"],
        "does not exist": [f"controlnet.base={tmp_path / 'nothing'}"],
        "makes 3x8x8 images": [f"controlnet.base={base}", "data.resolution=16"],
        "are given, not made from the pixels": [f"controlnet.base={base}", "data.random_placement=[0.5, 1]"],
    }
    for message, extra in cases.items():
        config = load_config(None, TINY + FILL + CN + [f"train.out_dir={tmp_path / 'out'}"] + extra)
        with pytest.raises(ConfigError, match=message):
            train(config, progress=False, objective=ControlNetObjective)


@pytest.mark.parametrize("prediction", ["v", "epsilon"])
def test_the_controlnet_loss_is_the_bases_own_loss_in_its_prediction_type(tmp_path, prediction):
    """A fresh ControlNet adds nothing, so its training loss is the base's diffusion loss on the same
    draw, in the base's parameterisation (a v-prediction base trains its ControlNet on v)."""
    base = tmp_path / "base"
    train(load_config(None, TINY + FILL + [f"diffusion.prediction={prediction}", f"train.out_dir={base}",
                                           "train.steps=2"]), progress=False)
    config = load_config(None, TINY + FILL + CN + [f"controlnet.base={base}", f"train.out_dir={tmp_path / 'cn'}"])
    data = load_dataset("fill", "train", 8)
    objective = ControlNetObjective(config, TrainingData(data, data.images, None, torch.device("cpu")))
    net = build_model(objective.model_spec())
    objective.attach(net)
    x0 = to_float(data.images[:6])
    inputs = objective.draw(x0, torch.arange(6), 0, torch.Generator().manual_seed(3))
    cond = {k: v for k, v in inputs["cond"].items() if k != "control_image"}
    model = DiffusionModel.load(base)
    assert model.prediction == prediction

    def own(other):
        return losses.diffusion_loss(model.network, x0, model.schedule, prediction=other, cond=cond,
                                     t=inputs["t"], noise=inputs["noise"]).loss

    with torch.no_grad():
        got = objective.loss(net, inputs).loss
        assert torch.allclose(got, own(prediction), rtol=1e-6, atol=1e-7)
        assert not torch.allclose(got, own("epsilon" if prediction == "v" else "v"), rtol=1e-3)
