"""Contracts of DiT (difflab.models.dit): the paper's parameter counts, adaLN-Zero's identity
blocks, patches and positions, class / text conditioning, errors, bf16 and torch.compile, and a
tiny train → resume → sample run through the CLI (CFG, learned variance, classifier guidance)."""

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from difflab.cli import main as cli
from difflab.models import MODELS, build_config, build_model, model_config_dict
from difflab.models.dit import PRESETS, DiT, DiTConfig, patchify, unpatchify
from difflab.nn import sincos_position_embedding_2d
from difflab.pipelines import DiffusionModel, Guidance, generate
from helpers import TINY as UNET_TINY
from helpers import assert_two_processes_match_one, perturb_head, require_minilm, write_fake_fashion

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny networks run on one thread

TINY = dict(in_channels=2, image_size=8, patch_size=2, hidden_size=16, depth=2, num_heads=2)


def tiny(**overrides) -> DiTConfig:
    return DiTConfig(**{**TINY, **overrides})


def inputs(cfg: DiTConfig, n: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    return x, torch.rand(n, generator=gen) * 999


# -- the paper's models -------------------------------------------------------------------------

PAPER_PARAMS = {"S": 33e6, "B": 130e6, "L": 458e6, "XL": 675e6}  # Peebles & Xie 2023, Table 1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_on_the_meta_device(name):
    with torch.device("meta"):
        model = DiT(PRESETS[name]())
    size = name.removeprefix("DiT-").split("/")[0]
    if size in PAPER_PARAMS:  # 256×256 images = 32×32×4 latents, learned sigma, 1000 classes
        assert model.num_parameters() == pytest.approx(PAPER_PARAMS[size], rel=0.01)
        assert model.config.num_classes == 1000 and model.config.learned_sigma and model.out_channels == 8


def test_dit_xl2_and_b2_match_the_reference_code_exactly():
    # DiT's models.py counts its frozen pos_embed Parameter too: DiT-XL/2 has 675,129,632
    # parameters there; here the position embedding is a buffer (256 tokens × 1152).
    with torch.device("meta"):
        xl, b = DiT(PRESETS["DiT-XL/2"]()), DiT(PRESETS["DiT-B/2"]())
    assert xl.num_parameters() + xl.pos_embed.numel() == 675_129_632
    assert xl.num_parameters() == 674_834_720 and b.num_parameters() == 130_315_808
    assert xl.pos_embed.shape == (1, 256, 1152) and len(xl.blocks) == 28
    # presets take overrides like the U-Net's, e.g. DiT-S/4 on 64×64×3 pixels without classes
    cfg = PRESETS["DiT-S/4"](in_channels=3, image_size=64, num_classes=0, learned_sigma=False)
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size, cfg.grid_size) == (12, 384, 6, 4, 16)


# -- adaLN-Zero, patches, positions --------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"num_classes": 3, "learned_sigma": True}, {"context_dim": 12}])
def test_every_block_is_the_identity_at_init_and_the_output_is_zero(overrides):
    torch.manual_seed(0)
    cfg = tiny(**overrides)
    model = DiT(cfg)
    x, t = inputs(cfg)
    cond = {}
    if cfg.context_dim:
        cond = {"context": torch.randn(3, 5, 12), "context_mask": torch.ones(3, 5, dtype=torch.bool)}
    h, c = torch.randn(3, cfg.grid_size**2, cfg.hidden_size), torch.randn(3, cfg.hidden_size)
    for block in model.blocks:
        assert torch.equal(block(h, c, cond.get("context"), cond.get("context_mask")), h)
    out = model(x, t, **cond)
    assert out.shape == (3, model.out_channels, 8, 8) and torch.equal(out, torch.zeros_like(out))
    # DiT's initialization: zero regressions, the rest random (xavier / N(0, 0.02²))
    for block in model.blocks:
        assert not block.adaLN_modulation[-1].weight.any() and block.attn.qkv.weight.std() > 0
    assert not model.final.linear.weight.any() and not model.final.adaLN_modulation[-1].weight.any()
    assert model.time_embed.mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_the_zero_initialized_network_learns():
    torch.manual_seed(0)
    cfg = tiny(num_classes=2)
    model = DiT(cfg)
    x, t = inputs(cfg, n=4)
    labels = torch.tensor([0, 1, 0, 1])
    target = torch.sin(3 * x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = (model(x, t, labels) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_patchify_unpatchify_round_trip_and_token_order():
    x = torch.randn(2, 3, 12, 12)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 9, 48) and torch.equal(unpatchify(tokens, 4, 3), x)
    # token k is the patch at row k // 3, column k % 3; its values are ordered (row, column, channel)
    torch.testing.assert_close(tokens[:, 5], x[:, :, 4:8, 8:12].permute(0, 2, 3, 1).reshape(2, -1))
    # the convolutional patch embedding is a linear map of the same patches, in the same order
    model = DiT(tiny(in_channels=3, image_size=12, patch_size=4))
    w = model.patch_embed.weight.permute(0, 2, 3, 1).reshape(16, -1)  # (D, p·p·C)
    embedded = model.patch_embed(x).flatten(2).transpose(1, 2)  # (N, T, D)
    torch.testing.assert_close(embedded, tokens @ w.T + model.patch_embed.bias, rtol=1e-5, atol=1e-5)


def test_position_embedding_is_the_closed_form_2d_sin_cos():
    dim, grid = 8, 3
    emb = sincos_position_embedding_2d(dim, grid)
    omegas = [10000 ** (-k / 2) for k in range(2)]  # dim / 4 = 2 frequencies per coordinate

    def e(p):
        return [math.sin(p * w) for w in omegas] + [math.cos(p * w) for w in omegas]

    expected = torch.tensor([e(x) + e(y) for y in range(grid) for x in range(grid)])  # row-major tokens
    torch.testing.assert_close(emb, expected, rtol=1e-6, atol=1e-6)
    model = DiT(tiny(hidden_size=8, image_size=6))
    torch.testing.assert_close(model.pos_embed[0], expected)
    assert "pos_embed" not in model.state_dict()  # fixed: rebuilt, never saved
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_embedding_2d(6, 2)


# -- conditioning ---------------------------------------------------------------------------------


def test_class_labels_change_the_output_and_none_is_the_null_label():
    torch.manual_seed(0)
    cfg = tiny(num_classes=3)
    model = DiT(cfg)
    x, t = inputs(cfg, n=2)
    same_x, same_t = x[:1].expand(2, -1, -1, -1), t[:1].expand(2)
    assert not model(same_x, same_t, torch.tensor([0, 1])).any()  # zero-initialized: no effect yet
    perturb_head(model)
    out = model(same_x, same_t, torch.tensor([0, 1]))
    assert not torch.allclose(out[0], out[1])
    torch.testing.assert_close(model(x, t), model(x, t, torch.tensor([3, 3])))  # index num_classes = null
    assert model.label_embed.num_embeddings == 4
    with pytest.raises(ValueError, match="num_classes"):
        DiT(tiny())(x, t, torch.tensor([0, 1]))


def test_cross_attention_uses_the_context_and_ignores_padding():
    torch.manual_seed(0)
    cfg = tiny(context_dim=12)
    model = DiT(cfg)
    perturb_head(model)
    x, t = inputs(cfg, n=2)
    context = torch.randn(2, 6, 12)
    mask = torch.tensor([[True, True, True, False, False, False], [True] * 6])
    out = model(x, t, context=context, context_mask=mask)
    padded = context.clone()
    padded[0, 3:] = 100 * torch.randn(3, 12)  # change only the padding of sample 0
    torch.testing.assert_close(model(x, t, context=padded, context_mask=mask), out)
    changed = context.clone()
    changed[0, 1] += 1.0  # a real token
    assert not torch.allclose(model(x, t, context=changed, context_mask=mask)[0], out[0])
    with pytest.raises(ValueError, match="pass context="):
        model(x, t)
    with pytest.raises(ValueError, match="without cross-attention"):
        DiT(tiny())(x, t, context=context)


def test_built_in_small_text_encoder():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "a", "shirt", "boot"]
    encoder = {"name": "small", "vocab": vocab, "dim": 8, "layers": 1, "heads": 2, "max_length": 4}
    cfg = tiny(context_dim=8, text_encoder=encoder)
    model = DiT(cfg)
    perturb_head(model)
    ids, mask = model.text_encoder.tokenizer(["a shirt", "a boot"], max_length=4)
    x, t = inputs(cfg, n=2)
    x, t = x[:1].expand(2, -1, -1, -1), t[:1].expand(2)
    out = model(x, t, input_ids=ids, token_mask=mask)
    assert out.shape == (2, 2, 8, 8) and not torch.allclose(out[0], out[1])
    assert any(name.startswith("text_encoder.") for name in model.state_dict())  # trained and saved with it
    with pytest.raises(ValueError, match="pass input_ids"):
        model(x, t)
    with pytest.raises(ValueError, match="must equal the text encoder's dim"):
        tiny(context_dim=12, text_encoder=encoder)


# -- configuration, registry, precision, compilation -----------------------------------------


@pytest.mark.parametrize(
    "overrides, field, fix",
    [
        ({"image_size": 10, "patch_size": 4}, "image_size", "use a patch size dividing 10"),
        ({"num_heads": 3}, "num_heads", "divisors of 16"),
        ({"hidden_size": 18, "num_heads": 3}, "hidden_size", "multiple of 4"),
        ({"depth": 0}, "depth", ">= 1"),
        ({"num_classes": -1}, "num_classes", ">= 0"),
        ({"text_encoder": {"name": "minilm"}, "context_dim": 384}, "text_encoder", "passed as context"),
    ],
)
def test_bad_config_names_the_field_and_the_fix(overrides, field, fix):
    with pytest.raises(ValueError) as err:
        tiny(**overrides)
    assert field in str(err.value) and fix in str(err.value)


def test_config_json_round_trip_registry_and_input_shape_error():
    cfg = tiny(num_classes=3, learned_sigma=True, context_dim=12)
    restored = DiTConfig(**json.loads(json.dumps(asdict(cfg))))
    assert restored == cfg
    assert "dit" in MODELS and MODELS["dit"].presets is PRESETS
    model = build_model({"name": "dit", "preset": "DiT-S/8", "in_channels": 1, "image_size": 16, "num_classes": 10})
    saved = json.loads(json.dumps(model_config_dict(model)))
    assert saved["name"] == "dit" and saved["hidden_size"] == 384 and build_config(saved) == model.config
    assert model.summary().startswith("DiT ") and "patch 8 (4 tokens)" in model.summary()
    with pytest.raises(ValueError, match="unknown dit option"):
        build_model({"name": "dit", "input_size": 32})
    with pytest.raises(ValueError, match="unknown dit preset"):
        build_model({"name": "dit", "preset": "DiT-XXL/2"})
    with pytest.raises(ValueError, match=r"takes \(N, 2, 8, 8\) inputs"):
        DiT(tiny())(torch.randn(1, 2, 16, 16), torch.zeros(1))


def test_bf16_autocast_keeps_the_input_dtype_and_channels_last_agrees():
    torch.manual_seed(0)
    cfg = tiny(num_classes=4, learned_sigma=True, context_dim=12)
    model = DiT(cfg)
    perturb_head(model)
    x, t = inputs(cfg)
    cond = dict(class_labels=torch.tensor([0, 1, 4]), context=torch.randn(3, 5, 12),
                context_mask=torch.tensor([[True] * 5, [True, False, False, False, False], [True] * 3 + [False] * 2]))
    ref = model(x, t, **cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t, **cond)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
    out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t, **cond)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_no_graph_breaks_for_torch_compile():
    cfg = tiny(num_classes=2, context_dim=12)
    model = DiT(cfg)
    x, t = inputs(cfg)
    context, mask = torch.randn(3, 5, 12), torch.ones(3, 5, dtype=torch.bool)
    block = torch._dynamo.explain(model.blocks[0])(torch.randn(3, 16, 16), torch.randn(3, 16), context, mask)
    assert block.graph_break_count == 0 and block.graph_count == 1
    whole = torch._dynamo.explain(model)(x, t, torch.tensor([0, 1, 2]), context, mask)
    assert whole.graph_break_count == 0


# -- the trainer, checkpoints and the CLI ------------------------------------------------------------

DIT_TINY = [
    o.replace("model.name=unet", "model.name=dit") if o.startswith("model.name") else
    "model.options={patch_size: 2, hidden_size: 16, depth: 2, num_heads: 2}" if o.startswith("model.options") else o
    for o in UNET_TINY
]


def sets(*items):
    return sum((["--set", item] for item in items), [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny DiTs on the digits: class-conditional with label dropout and learned variance (full and
    resumed), unconditional, and a noisy classifier (the U-Net encoder) for classifier guidance."""
    root = tmp_path_factory.mktemp("dit")
    common = ["--no-progress"]
    cond = sets(*DIT_TINY, "diffusion.cond_drop_prob=0.2", "diffusion.learned_variance=true",
                "train.checkpoint_every=2")
    assert cli(["train", *cond, "--set", "train.steps=4", *common, "--out", str(root / "cond")]) == 0
    assert cli(["train", *cond, "--set", "train.steps=2", *common, "--out", str(root / "part")]) == 0
    assert cli(["train", *cond, "--set", "train.steps=4", *common, "--resume", str(root / "part"),
                "--out", str(root / "part")]) == 0
    assert cli(["train", *sets(*DIT_TINY, "data.class_conditional=false", "train.steps=2"), *common,
                "--out", str(root / "uncond")]) == 0
    classifier = [o.replace("model.name=unet", "model.name=noisy_classifier") for o in UNET_TINY]
    assert cli(["train-classifier", "--noisy", "configs/demo-digits.yaml", *sets(*classifier, "train.steps=2"),
                *common, "--out", str(root / "classifier")]) == 0
    return root


def test_trains_resumes_exactly_and_checkpoints_the_dit(runs):
    def logged(run):
        return [json.loads(line)["loss"] for line in (runs / run / "metrics.jsonl").read_text().splitlines()]

    assert logged("part") == pytest.approx(logged("cond"), rel=1e-6, abs=1e-7)
    model = DiffusionModel.load(runs / "cond")
    assert isinstance(model.network, DiT) and model.config["model"]["name"] == "dit"
    assert model.network.config.learned_sigma and model.network.config.num_classes == 10


@pytest.mark.parametrize("method", ["ddpm", "unipc_3"])
def test_sample_cli_with_classifier_free_guidance(runs, tmp_path, method):
    out = tmp_path / method
    assert cli(["sample", str(runs / "cond"), "--n", "4", "--steps", "3", "--method", method, "--class", "3",
                "--guidance-scale", "2", "--out", str(out)]) == 0
    data = np.load(out / "samples.npz")
    assert data["samples"].shape == (4, 8, 8, 1) and list(data["labels"]) == [3] * 4
    images, _ = generate(DiffusionModel.load(runs / "cond"), 2, steps=2, class_index=1, guidance=Guidance(scale=3.0))
    assert images.shape == (2, 1, 8, 8)


def test_sample_cli_with_classifier_guidance(runs, tmp_path):
    out = tmp_path / "cg"
    assert cli(["sample", str(runs / "uncond"), "--classifier", str(runs / "classifier"), "--classifier-scale", "2",
                "--n", "3", "--steps", "3", "--class", "4", "--out", str(out)]) == 0
    assert list(np.load(out / "samples.npz")["labels"]) == [4, 4, 4]


@pytest.mark.parametrize("encoder", ["small", "minilm"])
def test_text_conditioned_dit_trains_and_samples_from_a_prompt(tmp_path, encoder):
    if encoder == "minilm":
        require_minilm()
    data = write_fake_fashion(tmp_path)
    items = [o.replace("data.class_conditional=true", "data.class_conditional=false") for o in DIT_TINY]
    encoder_cfg = ("{name: small, dim: 16, layers: 1, heads: 2, max_length: 12}" if encoder == "small"
                   else "{name: minilm, max_length: 12}")
    run = tmp_path / "text"
    assert cli(["train", *sets(*items, f"data.dataset={data}", "data.resolution=8", "data.text_conditional=true",
                               f"model.text_encoder={encoder_cfg}", "diffusion.cond_drop_prob=0.2", "train.steps=2"),
                "--no-progress", "--out", str(run)]) == 0
    spec = DiffusionModel.load(run).config["model"]
    assert spec["name"] == "dit" and spec["context_dim"] == (16 if encoder == "small" else 384)
    assert (spec["text_encoder"] or {}).get("name") == ("small" if encoder == "small" else None)
    assert cli(["sample", str(run), "--prompt", "a photo of a shirt", "--n", "2", "--steps", "2",
                "--guidance-scale", "2", "--out", str(tmp_path / "samples")]) == 0
    assert np.load(tmp_path / "samples" / "samples.npz")["samples"].shape == (2, 8, 8, 1)


def test_two_processes_match_one(tmp_path):
    """DDP (torchrun, 2 CPU processes with gloo) trains a DiT to the weights of one process."""
    items = DIT_TINY + ["diffusion.cond_drop_prob=0.2", "train.steps=2", "train.log_every=2"]
    assert_two_processes_match_one(tmp_path, items, port=29527)
