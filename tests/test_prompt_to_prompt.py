"""Prompt-to-prompt (issue 19, item 4): the attention controller, the token alignment, the
pipeline and `difflab edit` on tiny text runs (the trainable word encoder)."""

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main as cli
from difflab.conditioning import TextConditioning
from difflab.editing import prompt_to_prompt, token_map
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.training.trainer import train
from helpers import perturb_head, text_run, tiny_config

# Fake Fashion-MNIST captions are templated from the class names ("a photo of a sneaker", ...).
PROMPT, EDIT = "a photo of a sneaker", "a photo of a sandal"


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A tiny text U-Net whose zero-initialized layers are perturbed, so every attention matters."""
    run = text_run(tmp_path_factory.mktemp("p2p"), "small")
    model = DiffusionModel.load(run)
    perturb_head(model.network)
    return run, model


def sample_kwargs():
    return {"steps": 6, "guidance": Guidance(scale=2.0)}


def test_identical_prompts_give_plain_sampling_bit_for_bit(text_model):
    _, model = text_model
    sources, edits, _ = prompt_to_prompt(model, PROMPT, PROMPT, n=2, seed=3, **sample_kwargs())
    plain, _ = generate(model, 4, method="ddim", seeds=[3, 4, 3, 4], prompts=[PROMPT], **sample_kwargs())
    assert torch.equal(sources, edits)
    assert torch.equal(torch.cat([sources, edits]), plain)


def test_all_ones_reweighting_is_the_identity(text_model):
    _, model = text_model
    sources, edits, _ = prompt_to_prompt(model, PROMPT, mode="reweight", reweight={"sneaker": 1.0}, n=2,
                                         **sample_kwargs())
    assert torch.equal(sources, edits)
    _, heavier, _ = prompt_to_prompt(model, PROMPT, mode="reweight", reweight={"sneaker": 3.0}, n=2,
                                     **sample_kwargs())
    assert not torch.equal(sources, heavier)


def test_an_edit_changes_the_image_and_keeps_the_source(text_model):
    _, model = text_model
    sources, edits, control = prompt_to_prompt(model, PROMPT, EDIT, n=2, **sample_kwargs())
    plain, _ = generate(model, 2, method="ddim", prompts=[PROMPT], **sample_kwargs())
    assert not torch.equal(sources, edits)
    assert (sources.float() - plain.float()).abs().max() <= 1  # the source is (to rounding) plain sampling
    # the controller saw every cross-attention call: one per transformer block per step (CFG batches both)
    blocks = sum(1 for name, _ in model.network.named_modules() if name.endswith(".cross"))
    assert control.calls["cross"] == 6 * blocks and control.calls["self"] > 0


def test_local_blend_keeps_the_source_outside_the_words_region(text_model):
    from difflab.editing import LocalBlend
    from difflab.sampling import Step

    positions = torch.tensor([False, True, False])
    blend = LocalBlend(1, positions, positions, steps=4, threshold=0.5, start=0.0)
    probs = torch.zeros(2, 1, 16, 3)  # (2 rows, 1 head, 4x4 queries, 3 keys)
    probs[:, 0, 0, 1] = 1.0  # the word is attended to from the top-left query only
    blend.record(probs)
    source, edit = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    out = blend(Step(0, 4, 1.0, 0.5, torch.cat([source, edit]), torch.cat([source, edit])))
    assert torch.equal(out[0], source[0]) and out[1].sum() > 0
    inside = out[1, 0] == 1
    assert inside[:4, :4].all() and not inside[4:, :].any() and not inside[:, 4:].any()  # 3x3 max-pool: 2x2 cells

    _, model = text_model
    sources, plain_edits, _ = prompt_to_prompt(model, PROMPT, EDIT, n=2, **sample_kwargs())
    blended_sources, edits, control = prompt_to_prompt(model, PROMPT, EDIT, n=2, blend_words=["sneaker", "sandal"],
                                                       **sample_kwargs())
    assert torch.equal(blended_sources, sources) and not control.blend.maps  # every step's maps used
    assert (edits != sources).sum() <= (plain_edits != sources).sum()
    with pytest.raises(ValueError, match="none of its words"):
        prompt_to_prompt(model, PROMPT, EDIT, blend_words=["boot"], **sample_kwargs())


def test_refine_aligns_the_added_words(text_model):
    _, model = text_model
    text = TextConditioning(model.text_encoder)
    tokens = token_map(text, PROMPT, "a photo of a red sneaker", "refine")
    # [CLS] a photo of a red sneaker: "red" (position 5) is new, "sneaker" (6) takes the source's 5
    assert tokens.alpha[:7].tolist() == [1, 1, 1, 1, 1, 0, 1] and tokens.source[6] == 5
    sources, edits, _ = prompt_to_prompt(model, PROMPT, "a photo of a red sneaker", mode="refine", n=1,
                                         **sample_kwargs())
    assert sources.shape == edits.shape == (1, 1, 8, 8)


def test_replace_with_different_token_counts_is_one_clear_error(text_model, tmp_path, capsys):
    run, model = text_model
    with pytest.raises(ValueError, match="same token count"):
        prompt_to_prompt(model, PROMPT, "a photo of a red sandal", **sample_kwargs())
    assert cli(["edit", str(run), "--prompt", PROMPT, "--edit", "a photo of a red sandal", "--n", "1",
                "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--mode refine" in err


def test_a_model_without_cross_attention_is_one_clear_error(tmp_path, capsys):
    run = train(tiny_config(tmp_path / "cls", "train.steps=1"), progress=False).parent
    assert cli(["edit", str(run), "--prompt", PROMPT, "--edit", EDIT, "--n", "1", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cross-attention" in err and "class-conditional" in err


def test_edit_command_writes_the_grid_and_the_images(text_model, tmp_path):
    run, _ = text_model
    out = tmp_path / "edit"
    assert cli(["edit", str(run), "--prompt", PROMPT, "--edit", EDIT, "--n", "2", "--steps", "4",
                "--reweight", "sandal=2", "--local-blend", "sandal", "--out", str(out)]) == 0
    assert (out / "grid.png").is_file()
    assert sorted(p.name for p in (out / "source").iterdir()) == ["00000.png", "00001.png"]
    assert sorted(p.name for p in (out / "edit").iterdir()) == ["00000.png", "00001.png"]


def test_edit_pngs_carry_their_records_and_from_png_remakes_the_pair(text_model, tmp_path, capsys):
    import json

    run, _ = text_model
    out = tmp_path / "first"
    assert cli(["edit", str(run), "--prompt", PROMPT, "--edit", EDIT, "--n", "2", "--seed", "4", "--steps", "4",
                "--cross-replace", "0.6", "--feature-replace", "0.5", "--reweight", "sandal=2", "--local-blend",
                "sandal", "--guidance-scale", "2", "--out", str(out)]) == 0
    record = json.loads(Image.open(out / "edit" / "00001.png").text["difflab"])
    assert record["prompt"] == EDIT and record["seed"] == 5 and record["steps"] == 4
    assert record["prompt_to_prompt"] == {"source_prompt": PROMPT, "edit_prompt": EDIT, "mode": "replace",
                                          "reweight": {"sandal": 2.0}, "cross_replace": 0.6, "self_replace": 0.4,
                                          "feature_replace": 0.5, "local_blend": ["sandal"], "blend_threshold": 0.3,
                                          "role": "edit"}
    assert json.loads(Image.open(out / "grid.png").text["difflab"])["seeds"] == [4, 5]
    again = tmp_path / "again"
    assert cli(["edit", "--from-png", str(out / "edit" / "00001.png"), "--out", str(again)]) == 0
    for role in ("source", "edit"):
        assert np.array_equal(np.array(Image.open(again / role / "00000.png")),
                              np.array(Image.open(out / role / "00001.png")))
    assert cli(["sample", str(run), "--prompt", PROMPT, "--n", "1", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert cli(["edit", "--from-png", str(tmp_path / "s" / "images" / "00000.png"), "--out", str(tmp_path / "x")]) != 0
    assert "records no prompt-to-prompt edit" in capsys.readouterr().err


def test_the_controller_sees_every_attention_of_a_dit_with_cross_attention():
    from difflab.editing import PromptToPromptControl, TokenMap, attention_controller
    from difflab.models import build_model

    net = build_model({"name": "dit", "image_size": 8, "in_channels": 1, "patch_size": 2, "hidden_size": 16,
                       "depth": 2, "num_heads": 2, "context_dim": 12}).eval()
    perturb_head(net)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 10.0)
    context, mask = torch.randn(4, 5, 12), torch.tensor([[True] * 3 + [False] * 2] * 4)
    plain = net(x, t, context=context, context_mask=mask)
    same = TokenMap(torch.arange(5), torch.zeros(5), torch.ones(5))  # edits keep their own maps
    control = PromptToPromptControl(2, same, steps=1, cross_replace=1.0)
    with torch.no_grad(), attention_controller(net, control):
        assert torch.equal(net(x, t, context=context, context_mask=mask), plain)
    assert control.calls == {"cross": 2, "self": 2, "features": 0}
    swap = TokenMap(torch.arange(5), torch.ones(5), torch.ones(5))  # edits take the sources' maps
    control = PromptToPromptControl(2, swap, steps=1, cross_replace=1.0, self_replace=0.0)
    with torch.no_grad(), attention_controller(net, control):
        edited = net(x, t, context=context, context_mask=mask)
    assert torch.equal(edited[:2], plain[:2]) and not torch.allclose(edited[2:], plain[2:])
    assert all(m.processor is None for m in net.modules() if hasattr(m, "processor"))  # removed afterwards


def test_edit_starts_from_an_inversion(text_model, tmp_path):
    """`difflab invert --prompt` then `difflab edit --noise`: identical prompts give the inverted images back."""
    run, model = text_model
    images, _ = generate(model, 2, method="ddim", steps=6, prompts=[PROMPT], guidance=Guidance(scale=1.0))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(folder / f"{i}.png")
    assert cli(["invert", str(run), "--images", str(folder), "--prompt", PROMPT, "--steps", "6",
                "--out", str(tmp_path / "inv")]) == 0
    noise = torch.from_numpy(np.load(tmp_path / "inv" / "noise.npz")["noise"])
    sources, _, _ = prompt_to_prompt(model, PROMPT, EDIT, steps=6, guidance=Guidance(scale=1.0), noise=noise)
    assert sources.shape == images.shape and (sources.float() - images.float()).abs().mean() < 8
    assert cli(["edit", str(run), "--prompt", PROMPT, "--edit", EDIT, "--noise", str(tmp_path / "inv" / "noise.npz"),
                "--steps", "6", "--guidance-scale", "1", "--out", str(tmp_path / "e")]) == 0
    assert len(list((tmp_path / "e" / "edit").iterdir())) == 2


def test_dit_with_cross_attention(tmp_path):
    """Prompt-to-prompt on a DiT with cross-attention (PixArt-α's blocks): the same controller,
    the same guarantees, local blend from its patch-token maps."""
    from helpers import write_fake_fashion

    data = write_fake_fashion(tmp_path)
    run = train(tiny_config(tmp_path / "dit", "train.steps=2", f"data.dataset={data}", "data.resolution=8",
                            "data.class_conditional=false", "data.text_conditional=true",
                            "model.text_encoder={name: small, dim: 16, layers: 1, heads: 2, max_length: 12}",
                            "model.name=dit", "model.options={patch_size: 2, hidden_size: 16, depth: 2, num_heads: 2}",
                            "diffusion.cond_drop_prob=0.2"), progress=False).parent
    model = DiffusionModel.load(run)
    perturb_head(model.network)
    for block in model.network.blocks:  # adaLN-Zero starts every block as the identity: wake them up
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.1)
        torch.nn.init.normal_(block.cross.proj.weight, std=0.2)
    sources, same, _ = prompt_to_prompt(model, PROMPT, PROMPT, n=2, **sample_kwargs())
    assert torch.equal(sources, same)
    sources, edits, control = prompt_to_prompt(model, PROMPT, EDIT, n=2, blend_words=["sneaker", "sandal"],
                                               **sample_kwargs())
    assert not torch.equal(sources, edits)
    assert control.calls["cross"] == 6 * len(model.network.blocks)
    assert control.feature_steps == 0 and control.calls["features"] == 0  # a DiT's default: no feature injection
    with pytest.raises(ValueError, match="DiT has none"):
        prompt_to_prompt(model, PROMPT, EDIT, n=1, feature_replace=0.5, **sample_kwargs())


def test_feature_injection_takes_the_sources_decoder_features():
    """Plug-and-play features (Tumanyan et al. 2023): in the injected steps the feature layer's edit
    rows are the source rows', the source rows and the unconditional rows are untouched, and the
    hook is gone afterwards."""
    from difflab.editing import PromptToPromptControl, TokenMap
    from difflab.editing.feature_injection import feature_injection, feature_layer
    from difflab.models import build_model

    net = build_model({"name": "unet", "image_size": 16, "in_channels": 1, "model_channels": 8,
                       "channel_mult": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [4], "num_heads": 1,
                       "norm_groups": 4, "context_dim": 12}).eval()
    perturb_head(net)
    # the second residual block of the decoder level at a quarter of the input's resolution (4×4, the coarsest)
    assert feature_layer(net) is net.decoder[1][0]
    # Stable Diffusion's layout (64×64 latents, levels 64/32/16/8, two blocks a level): decoder block 4,
    # the 16×16 level's second, where plug-and-play injects ("output_blocks.4", Tumanyan et al. 2023)
    sd_like = build_model({"name": "unet", "image_size": 64, "in_channels": 4, "model_channels": 8,
                           "channel_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attention_resolutions": [],
                           "num_heads": 1, "norm_groups": 4, "context_dim": 12})
    assert feature_layer(sd_like) is sd_like.decoder[4][0]
    x, t = torch.randn(6, 1, 16, 16), torch.full((6,), 10.0)
    context = torch.randn(6, 5, 12)
    plain = net(x, t, context=context)
    seen = []
    control = PromptToPromptControl(2, TokenMap(torch.arange(5), torch.zeros(5), torch.ones(5)), steps=10,
                                    feature_replace=0.5)
    with torch.no_grad(), feature_injection(net, control):
        recorder = feature_layer(net).register_forward_hook(lambda m, i, out: seen.append(out))  # runs after
        injected = net(x, t, context=context)
        control.step = 5  # past ⌊0.5 · 10⌋ steps: nothing injected
        late = net(x, t, context=context)
        recorder.remove()
    assert torch.equal(seen[0][2:4], seen[0][:2]) and not torch.equal(seen[0][4:], seen[0][:2])
    assert torch.equal(injected[:2], plain[:2]) and torch.equal(injected[4:], plain[4:])
    assert not torch.allclose(injected[2:4], plain[2:4])
    assert torch.equal(late, plain) and control.calls["features"] == 2
    assert not feature_layer(net)._forward_hooks  # removed afterwards


def test_feature_injection_on_a_text_run(text_model):
    """The default injects on a U-Net and keeps identical prompts bit-identical and the source plain."""
    _, model = text_model
    sources, same, control = prompt_to_prompt(model, PROMPT, PROMPT, n=2, **sample_kwargs())
    assert control.feature_steps == 1 and control.calls["features"] == 6  # ⌊0.2 · 6⌋ steps; one call a step
    assert torch.equal(sources, same)
    _, _, off = prompt_to_prompt(model, PROMPT, EDIT, n=1, feature_replace=0, **sample_kwargs())
    assert off.feature_steps == 0 and off.calls["features"] == 0  # nothing installed


def test_feature_injection_replaces_the_edit_rows_only():
    from difflab.editing import PromptToPromptControl, TokenMap

    control = PromptToPromptControl(2, TokenMap(torch.arange(3), torch.ones(3), torch.ones(3)), steps=10,
                                    feature_replace=0.3)
    h = torch.randn(8, 4, 2, 2)
    out = control.features(h)
    assert torch.equal(out[:2], h[:2]) and torch.equal(out[2:4], h[:2]) and torch.equal(out[4:], h[4:])
    control.step = 3  # past ⌊0.3 · 10⌋ steps
    assert control.features(h) is h
    with pytest.raises(ValueError, match="feature_replace"):
        PromptToPromptControl(2, TokenMap(torch.arange(3), torch.ones(3), torch.ones(3)), steps=10,
                              feature_replace=1.5)


def test_attention_maps_of_every_token(text_model, tmp_path):
    """control.store: each token's average cross-attention map; at every pixel they sum to 1 over
    the keys (softmax rows, averaged and resized linearly); `edit --attention-maps` draws them."""
    run, model = text_model
    _, _, control = prompt_to_prompt(model, PROMPT, EDIT, n=2, attention_maps=True, **sample_kwargs())
    maps = control.store.maps()
    assert maps.shape[:2] == (4, model.text_encoder["max_length"]) and maps.shape[2:] == model.image_shape[1:]
    assert torch.allclose(maps.sum(1), torch.ones_like(maps[:, 0]), atol=1e-4)
    _, _, plain = prompt_to_prompt(model, PROMPT, EDIT, n=2, **sample_kwargs())
    assert plain.store is None
    out = tmp_path / "maps"
    assert cli(["edit", str(run), "--prompt", PROMPT, "--edit", EDIT, "--n", "1", "--steps", "3", "--attention-maps",
                "--out", str(out)]) == 0
    assert Image.open(out / "attention.png").size[0] > 64
