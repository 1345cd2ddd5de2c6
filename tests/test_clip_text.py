"""The CLIP text encoder of Stable Diffusion: our BPE tokenizer and text tower against transformers,
the layer choice (``skip``) against diffusers' ``encode_prompt(clip_skip=...)``, weight files, and
textual inversion and prompt weights with CLIP.

The vocabulary is OpenAI's, built from the BPE file of the ``open-clip-torch`` wheel
(``pip install --no-deps open-clip-torch``); the references need ``transformers`` (and
``diffusers``). Each is skipped with the command when missing. The networks are tiny and random
(width 32, 3 layers) but have the full 49 408-token vocabulary.
"""

import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from difflab.conditioning import TextConditioning
from difflab.text import ClipTextConfig, ClipTextEncoder, ClipTextTransformer, ClipTokenizer, bpe, build_text_encoder
from difflab.text.bpe import parse_prompt_weights
from difflab.text.clip import ours_from_transformers, to_transformers_key
from difflab.text.inversion import TokenEmbedding, add_word, encoder_parts, initial_vectors

pytestmark = pytest.mark.usefixtures("one_thread")

HAVE_OPEN_CLIP = importlib.util.find_spec("open_clip") is not None
needs_open_clip = pytest.mark.skipif(
    not HAVE_OPEN_CLIP, reason="needs the CLIP vocabulary: pip install --no-deps open-clip-torch")
TRANSFORMERS_REASON = "reference check needs: pip install --no-deps transformers tokenizers"

# Punctuation runs, contractions, digits, accents, CJK, emoji (with joiners and skin tones),
# Greek capitals, odd whitespace and control characters, HTML entities (transformers keeps them;
# OpenAI's reference unescapes them), special tokens written in the text, "!" (SD 2.x's pad
# token), the empty prompt, and prompts longer than 77 tokens.
PROMPTS = [
    "",
    "a photo of an astronaut riding a horse on mars",
    "A Photo Of An Astronaut, Riding A HORSE on Mars!!!",
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile",
    "a painting of a fox in the style of starry night, trending on artstation, 4k, 8k, uhd",
    "it's a dog's life; we'll see, they've gone, I'm here, you'd know, she'll go, don't",
    "1234567890 3.14159 $100 50% #hashtag @user 2024-01-31 12:30pm",
    "crème brûlée, naïve café, Zoë's résumé, ÅNGSTRÖM, straße, façade",
    "東京タワー の 夜景, 北京烤鸭, 서울의 밤, москва зимой",
    "emoji 😀🐱‍👤👍🏽 ❤️ 🇫🇷 and ✨sparkles✨",
    "tabs\tand\nnewlines  and   many    spaces\u00a0nbsp\u3000ideographic",
    "x\x1cy\x1fz\u2028w\x85v \u200bzero width\u200d joiner",
    "salt &amp; pepper &lt;3 &quot;quoted&quot; &#39;single&#39; &nbsp;",
    "<|startoftext|>a cat<|endoftext|> and a dog <|endoftext|>",
    "hello! wow!!! what?! (yes) [no] {maybe} <html> a/b\\c ~tilde~ `code` ^caret^",
    "ΟΔΥΣΣΕΥΣ Σ σ İstanbul ﬁne ½ Ⅸ ＡＢＣ ①②③",
    "a red cube on top of a blue sphere, studio lighting, 35mm, f/1.8",
    "portrait of a cyberpunk samurai, neon lights, highly detailed, octane render",
    "   leading and trailing spaces   ",
    "----- ===== ***** ..... ,,,,, ;;;;;",
    "ALLCAPSWORDSWITHOUTSPACESTHATARELONGERTHANUSUALANDSHOULDSPLITINTOMANYBPEPIECES",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a dog\u0301 with combining accents e\u0301 vs é (nfc)",
    "ﬀ ﬃ ligatures, ™ ® © symbols, ° degrees, µ micro, — em dash – en dash … ellipsis",
    "“curly quotes” ‘single’ «guillemets» „low“",
    "a_snake_case_prompt and kebab-case-prompt and CamelCasePrompt",
    "email@example.com https://example.com/path?query=1&x=2",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 10000",
    "H₂O E=mc² x³ ∑∫√∞≈≠≤≥",
    "मराठी हिन्दी বাংলা ไทย العربية עברית",
    "a",
    "!",
    "!!",
    "a photo of a cat.",
    "a photo of a cat. " * 3,
    "the quick brown fox jumps over the lazy dog " * 2,
    "'s 't 're 've 'm 'll 'd",
    "''quoted'' 'tis rock'n'roll",
    "\U0001F600" * 40,
    "東" * 100,
    "word " * 80,
    "a very long prompt, " * 30,
    ", ".join(f"tag{i}" for i in range(60)),
    "1" * 120,
    "...!!!???" * 20,
    "Ünïcödé " * 30,
    "a (red:1.3) car, ((big)) [small]",
    "zero-width\u200bspace and soft\u00adhyphen",
    "\u00e9\u0065\u0301 NFC vs NFD",
    "final sentence with trailing newline\n",
]
assert len(PROMPTS) == 50


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    if not HAVE_OPEN_CLIP:
        pytest.skip("needs the CLIP vocabulary: pip install --no-deps open-clip-torch")
    return ClipTokenizer.from_open_clip()


@pytest.fixture(scope="module")
def tokenizer_folders(open_clip_tokenizer, tmp_path_factory):
    """SD 1.x and SD 2.x tokenizer folders in the layout of their diffusers repositories: SD 2.x's
    ``tokenizer_config.json`` says ``<|endoftext|>`` but its ``special_tokens_map.json`` says ``!``."""
    root = tmp_path_factory.mktemp("tokenizers")
    sd1 = open_clip_tokenizer.save(root / "sd1")
    sd2 = open_clip_tokenizer.save(root / "sd2")
    config = json.loads((sd2 / "tokenizer_config.json").read_text())
    (sd2 / "tokenizer_config.json").write_text(json.dumps(config | {"pad_token": "<|endoftext|>"}))
    special = json.loads((sd2 / "special_tokens_map.json").read_text())
    (sd2 / "special_tokens_map.json").write_text(json.dumps(special | {"pad_token": "!"}))
    return {"sd1": sd1, "sd2": sd2}


# --------------------------------------------------------------------------- tokenizer


@needs_open_clip
def test_open_clip_vocabulary_is_openais(open_clip_tokenizer):
    tok = open_clip_tokenizer
    assert len(tok) == 49408
    assert (tok.start_id, tok.end_id, tok.pad_id) == (49406, 49407, 49407)
    assert tok.ids["!"] == 0 and tok.ids["!</w>"] == 256 and tok.vocab[-2:] == ["<|startoftext|>", "<|endoftext|>"]
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]  # OpenAI CLIP's published ids
    assert ClipTokenizer.from_open_clip(pad="zero").pad_id == 0
    with pytest.raises(ValueError, match="pad='left' is unknown; use 'end'"):
        ClipTokenizer.from_open_clip(pad="left")


@needs_open_clip
@pytest.mark.parametrize("convention, pad_id", [("sd1", 49407), ("sd2", 0)])
def test_tokenizer_matches_transformers(tokenizer_folders, convention, pad_id):
    transformers = pytest.importorskip("transformers", reason=TRANSFORMERS_REASON)
    folder = tokenizer_folders[convention]
    ours = ClipTokenizer.from_folder(folder)
    assert ours.pad_id == pad_id and ours.model_max_length == 77
    references = [transformers.CLIPTokenizer.from_pretrained(folder)]
    if hasattr(transformers, "CLIPTokenizerFast") and transformers.CLIPTokenizerFast is not transformers.CLIPTokenizer:
        references.append(transformers.CLIPTokenizerFast.from_pretrained(folder))  # transformers 4.x
    ids, mask = ours(PROMPTS, max_length=77)
    assert ids.shape == (50, 77) and ids.dtype == torch.long and mask.dtype == torch.bool
    for reference in references:
        assert reference.pad_token_id == pad_id
        ref = reference(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        for row, prompt in enumerate(PROMPTS):
            assert ids[row].tolist() == ref["input_ids"][row].tolist(), prompt
        assert mask.tolist() == ref["attention_mask"].bool().tolist()
        ref = reference(PROMPTS[:20], padding="longest", max_length=77, truncation=True, return_tensors="pt")
        assert ours(PROMPTS[:20], max_length=77, padding="longest")[0].tolist() == ref["input_ids"].tolist()
    truncated = [row for row, prompt in enumerate(PROMPTS) if len(ours.encode(prompt)) > 75]
    assert len(truncated) >= 6 and all(ids[row, -1] == 49407 and mask[row].all() for row in truncated)


@needs_open_clip
def test_openai_cleaning_matches_open_clip_reference(open_clip_tokenizer):
    pytest.importorskip("ftfy", reason="OpenAI's cleaning needs: pip install ftfy")
    # open_clip's tokenizer module, loaded from its file: importing the package would pull in torchvision.
    path = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0]) / "tokenizer.py"
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = module.SimpleTokenizer()
    ours = ClipTokenizer.from_open_clip(openai_clean=True)
    prompts = [p for p in PROMPTS if "<|" not in p]  # open_clip names its special tokens differently
    for prompt in prompts:
        assert ours.encode(prompt) == reference.encode(prompt), prompt
    assert ours.encode("salt &amp; pepper") == open_clip_tokenizer.encode("salt & pepper")
    assert open_clip_tokenizer.encode("salt &amp; pepper") != open_clip_tokenizer.encode("salt & pepper")


@needs_open_clip
def test_tokenizer_folder_options(open_clip_tokenizer, tokenizer_folders, tmp_path):
    # The newer format: tokenizer_config.json with added_tokens_decoder makes special_tokens_map.json a leftover.
    folder = open_clip_tokenizer.save(tmp_path / "new")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"added_tokens_decoder": {}, "pad_token": {
        "content": "<|endoftext|>"}, "model_max_length": 1000000000000000019884624838656}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "!"}))
    tok = ClipTokenizer.from_folder(folder)
    assert tok.pad_id == 49407 and tok.model_max_length == 77
    sd2 = ClipTokenizer.from_folder(tokenizer_folders["sd2"])
    assert sd2.encode("hello!") == [3306, 0]  # "!" is a special token there, as in transformers
    assert sd2.decode(sd2.encode("Héllo, WORLD")) == "héllo , world"
    (folder / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks \['merges.txt'\]"):
        ClipTokenizer.from_folder(folder)
    with pytest.raises(TypeError, match="pass a list of texts"):
        tok("a cat")
    with pytest.raises(ValueError, match="max_length=1 is out of range"):
        tok(["a cat"], max_length=1)


def test_missing_open_clip_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(bpe, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps open-clip-torch"):
        ClipTokenizer.from_open_clip()


# --------------------------------------------------------------------------- prompt weights


def test_parse_prompt_weights_follows_a1111():
    assert parse_prompt_weights("") == [("", 1.0)]
    assert parse_prompt_weights("a cat") == [("a cat", 1.0)]
    parsed = parse_prompt_weights("a (red:1.3) car, ((big)) [small] \\(x\\) (open")
    expected = [("a ", 1.0), ("red", 1.3), (" car, ", 1.0), ("big", 1.21), (" ", 1.0), ("small", 1 / 1.1),
                (" (x) ", 1.0), ("open", 1.1)]
    assert [c for c, _ in parsed] == [c for c, _ in expected]
    assert [w for _, w in parsed] == pytest.approx([w for _, w in expected])
    assert parse_prompt_weights("((a:2) b)") == pytest.approx([("a", 2.2), (" b", 1.1)])
    assert parse_prompt_weights("a) b] c:d") == [("a b c:d", 1.0)]  # stray closers are dropped


@needs_open_clip
def test_weighted_tokens(open_clip_tokenizer):
    tok = open_clip_tokenizer
    ids, mask, weights = tok.weighted(["a (red:1.5) car", "[[blue]] sky", "plain"], max_length=10)
    plain_ids, plain_mask = tok(["a red car", "blue sky", "plain"], max_length=10)
    assert torch.equal(ids, plain_ids) and torch.equal(mask, plain_mask)
    torch.testing.assert_close(weights[0, :5], torch.tensor([1.0, 1.0, 1.5, 1.0, 1.0]))
    torch.testing.assert_close(weights[1, 1], torch.tensor(1 / 1.21))
    assert weights[~mask].eq(1).all() and weights[:, 0].eq(1).all()


# --------------------------------------------------------------------------- the text tower


def tiny_hf_model(transformers, act="quick_gelu", eos=49407, layers=3):
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=layers,
                                         num_attention_heads=4, max_position_embeddings=77, hidden_act=act,
                                         eos_token_id=eos)
    model = transformers.CLIPTextModel(config).eval()
    with torch.no_grad():  # the default init leaves biases and norms at 0 / 1: randomise them too
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def input_ids():
    torch.manual_seed(1)
    ids = torch.randint(0, 49406, (4, 77))
    ends = torch.tensor([5, 20, 76, 40])
    ids[:, 0] = 49406
    ids[torch.arange(77) >= ends[:, None]] = 49407  # the end token, then SD 1.x's padding
    return ids


@pytest.mark.parametrize("act, eos", [("quick_gelu", 49407), ("gelu", 49407), ("quick_gelu", 2)])
def test_text_tower_matches_transformers(act, eos, tmp_path):
    transformers = pytest.importorskip("transformers", reason=TRANSFORMERS_REASON)
    reference = tiny_hf_model(transformers, act, eos)
    reference.save_pretrained(tmp_path)
    ours = ClipTextTransformer.from_diffusers(tmp_path)
    assert ours.config == ClipTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=3,
                                         num_attention_heads=4, hidden_act=act, eos_token_id=eos)
    ids = input_ids()
    with torch.no_grad():
        ref = reference(ids, output_hidden_states=True)
        layers = len(ref.hidden_states) - 1
        torch.testing.assert_close(ours(ids), ref.last_hidden_state, atol=1e-5, rtol=0)
        for skip in range(2, layers + 1):  # final LayerNorm of hidden_states[-skip], as A1111 and diffusers
            expected = reference.final_layer_norm(ref.hidden_states[-skip])
            torch.testing.assert_close(ours(ids, skip=skip), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.pooled(ids), ref.pooler_output, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(ids[:, :9]), reference(ids[:, :9]).last_hidden_state, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="skip=4 is out of range for a CLIP text encoder of 3 layers"):
        ours(ids, skip=4)


def test_save_diffusers_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers", reason=TRANSFORMERS_REASON)
    torch.manual_seed(0)
    ours = ClipTextTransformer(ClipTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                              num_attention_heads=4, hidden_act="gelu"))
    state = ours.to_transformers_state_dict()
    assert "text_model.encoder.layers.1.self_attn.q_proj.weight" in state
    assert "text_model.embeddings.token_embedding.weight" in state and "text_model.final_layer_norm.bias" in state
    ours.save_diffusers(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["CLIPTextModel"]
    reference = transformers.CLIPTextModel.from_pretrained(tmp_path).eval()
    assert reference.config.hidden_act == "gelu" and reference.config.num_hidden_layers == 2
    ids = input_ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(ids).last_hidden_state, atol=1e-5, rtol=0)
    again = ClipTextTransformer.from_diffusers(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_key_mapping_round_trips():
    model = ClipTextTransformer(ClipTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=11,
                                               num_attention_heads=2, vocab_size=10))
    for key in model.state_dict():
        assert ours_from_transformers(to_transformers_key(key)) == key
    assert to_transformers_key("layers.10.ff_out.bias") == "text_model.encoder.layers.10.mlp.fc2.bias"
    assert ours_from_transformers("encoder.layers.3.self_attn.out_proj.weight") == "layers.3.attn_out.weight"
    assert ours_from_transformers("text_model.embeddings.position_ids") is None


def test_single_file_checkpoint_keys():
    transformers = pytest.importorskip("transformers", reason=TRANSFORMERS_REASON)
    reference = tiny_hf_model(transformers)
    config = ClipTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4)
    state = {f"cond_stage_model.transformer.text_model.{k}": v.half() for k, v in reference.state_dict().items()}
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(3)  # the rest of the checkpoint
    ours = ClipTextTransformer.from_state_dict(state, config)
    ids = input_ids()
    with torch.no_grad():
        expected = reference.half().float()(ids).last_hidden_state  # the same fp16-rounded weights
    torch.testing.assert_close(ours(ids), expected, atol=1e-5, rtol=0)


def test_bad_weights_are_one_clear_error(tmp_path):
    config = ClipTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=100)
    state = ClipTextTransformer(config).to_transformers_state_dict()
    missing = {k: v for k, v in state.items() if "layers.1.mlp.fc1.bias" not in k}
    with pytest.raises(ValueError, match=r"missing \['text_model.encoder.layers.1.mlp.fc1.bias'\]"):
        ClipTextTransformer.from_state_dict(missing, config)
    wrong = state | {"text_model.final_layer_norm.weight": torch.ones(33)}
    with pytest.raises(ValueError, match=r"misshapen \['text_model.final_layer_norm.weight \(33,\) \(expected"):
        ClipTextTransformer.from_state_dict(wrong, config)
    extra = state | {"text_model.encoder.layers.2.mlp.fc1.bias": torch.ones(37),
                     "text_projection.weight": torch.ones(1)}
    with pytest.raises(ValueError, match=r"unexpected \['text_model.encoder.layers.2.mlp.fc1.bias', 'text_proj"):
        ClipTextTransformer.from_state_dict(extra, config)
    (tmp_path / "config.json").write_text(json.dumps(config.to_transformers()))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "pytorch_model.bin"))  # any content
    with pytest.raises(FileNotFoundError, match=r"only pytorch_model\.bin, a pickle, which difflab never loads"):
        ClipTextTransformer.from_diffusers(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        ClipTextTransformer.from_diffusers(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="hidden_act='relu' is not supported by the CLIP text encoder"):
        ClipTextConfig.from_transformers(config.to_transformers() | {"hidden_act": "relu"})


# --------------------------------------------------------------------------- the TextEncoder


@pytest.fixture(scope="module")
def sd_folder(tokenizer_folders, tmp_path_factory):
    """A diffusers model folder: text_encoder/ (a tiny random CLIPTextModel) and tokenizer/ (SD 1.x)."""
    transformers = pytest.importorskip("transformers", reason=TRANSFORMERS_REASON)
    folder = tmp_path_factory.mktemp("sd")
    tiny_hf_model(transformers, eos=2).save_pretrained(folder / "text_encoder")
    ClipTokenizer.from_folder(tokenizer_folders["sd1"]).save(folder / "tokenizer")
    return folder


@needs_open_clip
def test_skip_matches_diffusers_encode_prompt(sd_folder):
    transformers = pytest.importorskip("transformers", reason=TRANSFORMERS_REASON)
    diffusers = pytest.importorskip("diffusers", reason="needs: pip install diffusers")
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel.from_pretrained(sd_folder / "text_encoder").eval()
    if not hasattr(text_encoder, "text_model"):
        # transformers 5 dropped CLIPTextModel.text_model, which diffusers 0.42's encode_prompt still
        # reads for clip_skip's final LayerNorm; give it back.
        shim = types.SimpleNamespace(final_layer_norm=text_encoder.final_layer_norm)
        object.__setattr__(text_encoder, "text_model", shim)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32)
    vae = diffusers.AutoencoderKL(block_out_channels=[32], down_block_types=["DownEncoderBlock2D"],
                                  up_block_types=["UpDecoderBlock2D"], latent_channels=4)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(sd_folder / "tokenizer")
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=diffusers.DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    prompts = ["a photo of an astronaut riding a horse on mars", "", PROMPTS[41]]
    for clip_skip, skip in [(None, 1), (0, 1), (1, 2), (2, 3)]:
        with torch.no_grad():
            expected, _ = pipe.encode_prompt(prompts, "cpu", 1, False, clip_skip=clip_skip)
        ours = ClipTextEncoder.load(sd_folder, skip=skip).encode(prompts)
        torch.testing.assert_close(ours.states, expected, atol=1e-5, rtol=0)
        assert ours.mask.all()


@needs_open_clip
def test_clip_text_encoder_config_and_sd_conventions(sd_folder, monkeypatch):
    transformers = pytest.importorskip("transformers", reason=TRANSFORMERS_REASON)
    monkeypatch.chdir(sd_folder.parent)
    encoder = build_text_encoder({"name": "clip", "folder": sd_folder.name, "max_length": 77, "skip": 2})
    assert encoder.to_config() == {"name": "clip", "folder": sd_folder.name, "max_length": 77, "skip": 2}
    assert encoder.dim == 32 and encoder.name == "clip"
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    reference = transformers.CLIPTextModel.from_pretrained(sd_folder / "text_encoder").eval()
    ids, real = encoder.tokenizer(["a cat", ""], 77)
    enc = encoder.encode(["a cat", ""])
    assert enc.states.shape == (2, 77, 32) and enc.mask.all() and not real.all()
    with torch.no_grad():
        hidden = reference(ids, output_hidden_states=True).hidden_states
        expected = reference.final_layer_norm(hidden[-2])
    torch.testing.assert_close(enc.states, expected, atol=1e-5, rtol=0)  # padding states too: real values
    assert enc.states[~real].abs().sum() > 0
    short = encoder.encode(["a cat", ""], max_length=8, padding="longest")
    length = len(encoder.tokenizer.encode("a cat")) + 2
    assert short.states.shape == (2, length, 32)
    torch.testing.assert_close(short.states, enc.states[:, :length], atol=1e-6, rtol=0)  # causal: no look-ahead
    cond = TextConditioning({"name": "clip", "folder": str(sd_folder)})
    torch.testing.assert_close(cond.encode(["a cat"])["context"], build_text_encoder(
        {"name": "clip", "folder": str(sd_folder)}).encode(["a cat"]).states)
    assert cond.token_count("a cat") == length and not cond.truncated(["a cat"])
    weighted = TextConditioning({"name": "clip", "folder": str(sd_folder), "prompt_weights": True})
    assert weighted.token_count("a (cat:1.5)") == length  # the brackets and the weight are not tokens
    assert cond.token_count("a (cat:1.5)") > length
    assert cond.truncated(["cat " * 80]) == {"cat " * 80: 82}
    with pytest.raises(ValueError, match=r"unknown clip text encoder option\(s\) \['layers'\]"):
        build_text_encoder({"name": "clip", "folder": str(sd_folder), "layers": 2})
    with pytest.raises(ValueError, match="needs 'folder'"):
        build_text_encoder({"name": "clip"})
    with pytest.raises(ValueError, match="max_length=78 is out of range"):
        encoder.encode(["a cat"], max_length=78)
    with pytest.raises(ValueError, match="skip=0 is out of range"):
        ClipTextEncoder.load(sd_folder, skip=0)


@needs_open_clip
@pytest.mark.parametrize("pad, pad_id", [("end", 49407), ("zero", 0)])
def test_folder_without_tokenizer_uses_open_clip(sd_folder, tmp_path, pad, pad_id):
    (tmp_path / "text_encoder").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "text_encoder" / name).write_bytes((sd_folder / "text_encoder" / name).read_bytes())
    encoder = ClipTextEncoder.from_config({"name": "clip", "folder": str(tmp_path), "pad": pad})
    assert encoder.tokenizer.pad_id == pad_id and encoder.to_config()["pad"] == pad
    assert ClipTextEncoder.from_config(encoder.to_config()).tokenizer.pad_id == pad_id


@needs_open_clip
def test_textual_inversion_with_clip(sd_folder):
    encoder = ClipTextEncoder.load(sd_folder, max_length=16)
    tokenizer, owner, attribute = encoder_parts(encoder)
    assert (tokenizer, owner, attribute) == (encoder.tokenizer, encoder.encoder, "word_embeddings")
    cat = encoder.tokenizer.encode("cat")
    assert len(cat) == 1
    vectors = initial_vectors(encoder, "cat", 2)
    torch.testing.assert_close(vectors[0], encoder.encoder.word_embeddings.weight[cat[0]])
    before = encoder.encode(["a photo of a cat"]).states
    assert add_word(tokenizer, owner, attribute, TokenEmbedding("sks2", vectors[:1])) == [49408]
    encode = encoder.tokenizer.encode
    assert encode("a sks2, sks2x") == [*encode("a"), 49408, *encode(","), *encode("sks2x")]
    assert len(encode("sks2x")) == 3  # not a learned word: CLIP's split ("sks", "2", "x")
    assert add_word(tokenizer, owner, attribute, TokenEmbedding("zqx", vectors)) == [49409, 49410]
    assert encode("Zqx") == [49409, 49410]
    torch.testing.assert_close(encoder.encode(["a photo of a sks2"]).states, before)  # its vector is "cat"'s
    assert torch.equal(encoder.encode(["a photo of a cat"]).states, before)
    with pytest.raises(ValueError, match="already in the text encoder's vocabulary"):
        add_word(tokenizer, owner, attribute, TokenEmbedding("zqx", vectors))


@needs_open_clip
def test_encode_weighted(sd_folder):
    encoder = ClipTextEncoder.load(sd_folder, max_length=12)
    plain = encoder.encode(["a red car", "a blue sky"]).states
    torch.testing.assert_close(encoder.encode_weighted(["a (red:1) car", "a blue sky"]).states, plain)
    weighted = encoder.encode_weighted(["a (red:1.5) car", "a [blue] sky"]).states
    factors = torch.ones(2, 12)
    factors[0, 2], factors[1, 2] = 1.5, 1 / 1.1  # the start token, "a", then the weighted word
    expected = plain * factors[..., None]
    expected = expected * plain.mean(dim=(1, 2), keepdim=True) / expected.mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(weighted, expected)
