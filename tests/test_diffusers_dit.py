"""diffusers' DiTTransformer2DModel and difflab's DiT, both directions: the same outputs on the same
weights (int and fractional timesteps, the null label), an exact round trip through a diffusers
folder, DiT-XL/2's layout, and clear errors for what does not map."""

import json
from dataclasses import asdict

import pytest
import torch

from difflab.models.diffusers_dit import (
    dit_config_from_diffusers,
    dit_config_to_diffusers,
    dit_state_from_diffusers,
    dit_state_to_diffusers,
    load_diffusers_dit,
    save_diffusers_dit,
)
from difflab.models.dit import PRESETS, DiT, DiTConfig
from helpers import perturbed  # noqa: E402

diffusers = pytest.importorskip("diffusers", reason="pip install diffusers (the dev extra)")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny networks run on one thread

TINY = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2, sample_size=8, patch_size=2,
            num_embeds_ada_norm=10)
TIMES = [torch.tensor([0, 500, 999]), torch.tensor([0.25, 12.5, 998.75])]  # diffusers' ints, and fractional
LABELS = torch.tensor([0, 9, 10])  # 10 = num_classes: the null label


def tie_embedders(theirs):
    """Every block's time and class embedder a copy of block 0's, as in converted DiT checkpoints
    (difflab's DiT has one embedder; untied ones are an error, tested below)."""
    first = theirs.transformer_blocks[0].norm1.emb.state_dict()
    for block in theirs.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(first)
    return theirs


def tiny_diffusers(**overrides):
    return tie_embedders(perturbed(diffusers.DiTTransformer2DModel(**{**TINY, **overrides}), scale=0.02))


def assert_same_outputs(ours, theirs, cfg):
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for t in TIMES:
            expected = theirs(x, timestep=t, class_labels=LABELS).sample
            assert expected.abs().max() > 0.5  # outputs large enough for the tolerance to mean something
            torch.testing.assert_close(ours(x, t, class_labels=LABELS), expected, atol=1e-4, rtol=0)
        null = torch.full((3,), cfg.num_classes)  # our class_labels=None is diffusers' null label
        torch.testing.assert_close(ours(x, TIMES[0]), theirs(x, timestep=TIMES[0], class_labels=null).sample,
                                   atol=1e-4, rtol=0)
    return x


@pytest.mark.parametrize("out_channels,norm_eps", [(8, None), (4, 1e-6)])
def test_diffusers_folder_loads_with_the_same_outputs(tmp_path, out_channels, norm_eps):
    eps = {} if norm_eps is None else {"norm_eps": norm_eps}  # None: diffusers' default, 1e-5
    theirs = tiny_diffusers(out_channels=out_channels, **eps)
    theirs.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_diffusers_dit(tmp_path).eval()
    cfg = ours.config
    assert (cfg.learned_sigma, cfg.out_channels, ours.out_channels) == ((True, 4, 8) if out_channels == 8 else
                                                                         (False, 4, 4))
    assert (cfg.num_classes, cfg.hidden_size, cfg.time_freq_shift, cfg.mlp_norm_eps) == (10, 16, 1.0, norm_eps or 1e-5)
    assert ours.blocks[0].norm2.eps == theirs.transformer_blocks[0].norm3.eps  # below 1e-4 in the outputs
    torch.testing.assert_close(ours.pos_embed, theirs.pos_embed.pos_embed, atol=1e-6, rtol=0)  # computed, not copied
    x = assert_same_outputs(ours, theirs, cfg)
    # DiT's own time features (time_freq_shift 0) are another function: the comparison can fail
    shifted = DiT(DiTConfig(**{**asdict(cfg), "time_freq_shift": 0.0}))
    shifted.load_state_dict(ours.state_dict())
    with torch.no_grad():
        gap = (shifted.eval()(x, TIMES[0], class_labels=LABELS) - ours(x, TIMES[0], class_labels=LABELS)).abs().max()
    assert gap > 1e-2


@pytest.mark.parametrize("learned_sigma", [True, False])
def test_export_loads_in_diffusers_and_round_trips_exactly(tmp_path, learned_sigma):
    cfg = DiTConfig(in_channels=4, image_size=8, patch_size=2, hidden_size=16, depth=2, num_heads=2,
                    learned_sigma=learned_sigma, num_classes=10, time_freq_shift=1.0, mlp_norm_eps=1e-5)
    ours = perturbed(DiT(cfg), scale=0.2)  # 0.2: our adaLN regressions and final layer start at zero
    save_diffusers_dit(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "DiTTransformer2DModel" and config["out_channels"] == (8 if learned_sigma else 4)
    theirs = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path).eval()
    assert theirs.state_dict().keys() == dit_state_to_diffusers(ours.state_dict(), cfg).keys()
    assert_same_outputs(ours, theirs, cfg)
    back = load_diffusers_dit(tmp_path)
    assert back.config == cfg
    ours_state, back_state = ours.state_dict(), back.state_dict()
    assert ours_state.keys() == back_state.keys()
    assert all(torch.equal(ours_state[k], back_state[k]) for k in ours_state)


def test_dit_xl2_layout_matches_diffusers_defaults():
    # facebook/DiT-XL-2-256's transformer/config.json: a legacy Transformer2DModel config, no norm_eps
    legacy = {"_class_name": "Transformer2DModel", "activation_fn": "gelu-approximate", "attention_bias": True,
              "attention_head_dim": 72, "cross_attention_dim": None, "dropout": 0.0, "in_channels": 4,
              "norm_elementwise_affine": False, "norm_num_groups": 32, "norm_type": "ada_norm_zero",
              "num_attention_heads": 16, "num_embeds_ada_norm": 1000, "num_layers": 28, "num_vector_embeds": None,
              "only_cross_attention": False, "out_channels": 8, "patch_size": 2, "sample_size": 32,
              "upcast_attention": False, "use_linear_projection": False}
    cfg = dit_config_from_diffusers(legacy)
    assert cfg == PRESETS["DiT-XL/2"](time_freq_shift=1.0, mlp_norm_eps=1e-5)
    with torch.device("meta"):
        theirs = diffusers.DiTTransformer2DModel(out_channels=8)  # the defaults: DiT-XL/2's trunk
        ours = dit_state_to_diffusers(DiT(cfg).state_dict(), cfg)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.state_dict().items()}


@pytest.mark.parametrize("key,value", [("norm_type", "ada_norm"), ("activation_fn", "geglu"),
                                       ("norm_elementwise_affine", True), ("attention_bias", False),
                                       ("num_embeds_ada_norm", None)])
def test_unsupported_diffusers_settings_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"{key}={value!r}"):
        dit_config_from_diffusers({**TINY, key: value})
    with pytest.raises(ValueError, match="makes no valid difflab DiT: DiTConfig.image_size=9"):
        dit_config_from_diffusers({**TINY, "sample_size": 9})


def test_bad_state_dicts_are_named():
    theirs = tiny_diffusers()
    cfg, state = dit_config_from_diffusers(dict(theirs.config)), theirs.state_dict()

    def load(changes: dict, drop: str | None = None):
        dit_state_from_diffusers({**{k: v for k, v in state.items() if k != drop}, **changes}, cfg)

    with pytest.raises(ValueError, match=r"missing transformer_blocks\.1\.attn1\.to_v\.bias$"):
        load({}, drop="transformer_blocks.1.attn1.to_v.bias")
    with pytest.raises(ValueError, match=r"unexpected transformer_blocks\.0\.attn2\.to_q\.weight$"):
        load({"transformer_blocks.0.attn2.to_q.weight": torch.zeros(16, 16)})
    with pytest.raises(ValueError, match=r"proj_out_2\.weight has shape \(32, 16\), the config makes \(16, 16\)"):
        load({"proj_out_2.weight": torch.zeros(32, 16)})
    untied = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_2.bias"
    with pytest.raises(ValueError, match=rf"{untied} differs from block 0's: difflab's DiT has one"):
        load({untied: state[untied] + 1})
    with pytest.raises(ValueError, match="pos_embed.pos_embed is not the fixed 2-D sine-cosine"):
        load({"pos_embed.pos_embed": torch.zeros(1, 16, 16)})
    # a saved position embedding that is ours is accepted
    load({"pos_embed.pos_embed": theirs.pos_embed.pos_embed})


def test_sharded_folder_loads(tmp_path):
    theirs = tiny_diffusers()
    theirs.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="10KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    ours = load_diffusers_dit(tmp_path)
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in dit_state_to_diffusers(ours.state_dict(),
                                                                                            ours.config).items())


def test_folder_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "DiTTransformer2DModel", **TINY}))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.bin, a pickle, which difflab never loads"):
        load_diffusers_dit(tmp_path)
    with pytest.raises(FileNotFoundError, match="not the pipeline folder"):
        load_diffusers_dit(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="holds a diffusers UNet2DModel, not a DiTTransformer2DModel"):
        load_diffusers_dit(tmp_path)


@pytest.mark.parametrize("overrides,feature", [
    (dict(context_dim=24), "context_dim=24"),
    (dict(concat_channels=2), "concat_channels=2"),
    (dict(concat_channels=2, aug_level=True), "concat_channels=2, aug_level=True"),
    (dict(num_classes=0), "num_classes=0"),
    (dict(mlp_ratio=2.0), "mlp_ratio=2.0"),
    (dict(time_freq_shift=0.0), r"time_freq_shift=0.0 \(diffusers' time features"),
])
def test_export_names_what_diffusers_cannot_represent(tmp_path, overrides, feature):
    cfg = DiTConfig(**{**dict(in_channels=4, image_size=8, hidden_size=16, depth=1, num_heads=2, num_classes=10,
                              time_freq_shift=1.0), **overrides})
    with pytest.raises(ValueError, match=f"DiTTransformer2DModel has no equivalent of difflab's {feature}"):
        save_diffusers_dit(DiT(cfg), tmp_path)
    assert not (tmp_path / "config.json").exists()
    with pytest.raises(ValueError, match=feature):
        dit_config_to_diffusers(cfg)
