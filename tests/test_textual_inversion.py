"""Textual inversion (issue 22, item 3): a new word in the frozen MiniLM encoder and in the small
trainable one, only its rows learned, saved and loaded; bad embeddings are one clear error."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from difflab import Pipeline
from difflab.cli import main as cli
from difflab.errors import UserError
from difflab.text import build_text_encoder
from difflab.text.inversion import TokenEmbedding, add_word, encoder_parts, initial_vectors, read_embeddings
from helpers import pictures, text_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_new_word_leaves_every_other_row_and_prompt_bit_identical():
    encoder = build_text_encoder({"name": "minilm", "max_length": 12})
    table = encoder.encoder.word_embeddings.weight.detach().clone()
    before = encoder.encode(["a photo of a boot", "sks"]).states
    vectors = initial_vectors(encoder, "boot", 2)
    ids = add_word(*encoder_parts(encoder), TokenEmbedding("sks", vectors))
    assert ids == [len(table), len(table) + 1]
    assert torch.equal(encoder.encoder.word_embeddings.weight[: len(table)], table)
    after = encoder.encode(["a photo of a boot"]).states
    assert torch.equal(after, before[:1])
    assert encoder.tokenizer.tokenize("a sks boot") == ["a", "sks", "sks#1", "boot"]
    with pytest.raises(ValueError, match="already in the text encoder's vocabulary"):
        add_word(*encoder_parts(encoder), TokenEmbedding("boot", vectors))
    with pytest.raises(ValueError, match="width 8, this text encoder's are 384"):
        add_word(*encoder_parts(encoder), TokenEmbedding("zzq", torch.zeros(1, 8)))


def config(tmp_path):
    path = tmp_path / "ti.yaml"
    path.write_text("data:\n  resolution: 8\n  channels: 1\noptim:\n  batch_size: 4\n  lr: 0.05\n"
                    "train:\n  steps: 3\n  sample_every: 3\n  num_preview: 2\n  log_every: 1\n")
    return path


@pytest.mark.parametrize("encoder", ["small", "minilm"])
def test_train_embedding_learns_only_the_new_rows_and_samples_with_it(encoder, tmp_path, capsys):
    base = text_run(tmp_path, encoder)
    out = tmp_path / "ti"
    assert cli(["train-embedding", str(config(tmp_path)), "--base", str(base), "--images",
                str(pictures(tmp_path / "pics")), "--prompt", "a photo of a zqx boot", "--word", "zqx",
                "--initializer", "boot", "--num-vectors", "2", "--out", str(out), "--no-progress"]) == 0
    (word,) = read_embeddings(out / "embedding.safetensors")
    assert word.word == "zqx" and word.vectors.shape[0] == 2
    if encoder == "minilm":  # trained away from the initializer's embedding
        start = initial_vectors(build_text_encoder({"name": "minilm"}), "boot", 2)
        assert not torch.allclose(word.vectors, start)
    record = json.loads((out / "checkpoint" / "config.json").read_text())
    assert record["kind"] == "embedding" and record["word"] == "zqx"
    pipe = Pipeline.load(base)
    plain = pipe(prompt="a photo of a boot", n=2, steps=2, output="tensor")
    assert pipe.load_embedding(out) == ["zqx"]
    assert torch.equal(pipe(prompt="a photo of a boot", n=2, steps=2, output="tensor"), plain)
    images = pipe(prompt="a photo of a zqx boot", n=2, steps=2)
    assert json.loads(images[0].info["difflab"])["embeddings"] == [str(out / "embedding.safetensors")]
    samples = tmp_path / "samples"
    assert cli(["sample", str(base), "--embedding", str(out), "--prompt", "a zqx boot", "--n", "1", "--steps", "2",
                "--out", str(samples)]) == 0
    (made,) = sorted((samples / "images").glob("*.png"))
    again = tmp_path / "again"
    assert cli(["sample", "--from-png", str(made), "--out", str(again)]) == 0
    (remade,) = sorted((again / "images").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(made)), np.asarray(Image.open(remade)))


def test_bad_embeddings_are_one_clear_error(tmp_path):
    base = text_run(tmp_path, "minilm")
    pipe = Pipeline.load(base)
    save_file({"<wide>": torch.zeros(1, 16)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(UserError, match="width 16, this text encoder's are 384"):
        pipe.load_embedding(tmp_path / "wide.safetensors")
    save_file({"photo": torch.zeros(1, 384)}, str(tmp_path / "known.safetensors"))
    with pytest.raises(UserError, match="'photo' is already in the text encoder's vocabulary"):
        pipe.load_embedding(tmp_path / "known.safetensors")
    save_file({"<new-word>": torch.zeros(384)}, str(tmp_path / "one.safetensors"))
    assert pipe.load_embedding(tmp_path / "one.safetensors") == ["newword"]  # diffusers' "<...>", one vector
    with pytest.raises(UserError, match="already in the text encoder's vocabulary"):
        pipe.load_embedding(tmp_path / "one.safetensors")  # loaded twice


def test_a_prompt_without_the_new_word_is_refused(tmp_path):
    from difflab.training.config import ConfigError, load_config
    from difflab.training.objectives import TextualInversionObjective
    from difflab.training.trainer import train

    base = text_run(tmp_path, "small")
    config = load_config(None, [f"embedding.base={base}", "embedding.prompt=a photo of a boot", "embedding.word=zqx",
                                f"data.dataset={pictures(tmp_path / 'p')}", "data.resolution=8", "data.channels=1",
                                "optim.batch_size=4", f"train.out_dir={tmp_path / 'o'}"])
    with pytest.raises(ConfigError, match="must hold the new word 'zqx'"):
        train(config, progress=False, objective=TextualInversionObjective)


@pytest.mark.parametrize("encoder", ["small", "minilm"])
def test_a_word_the_encoder_would_cut_off_is_refused_and_a_long_prompt_warns(encoder, tmp_path, capsys):
    base = text_run(tmp_path, encoder)  # the encoder reads 12 tokens
    # [CLS] a photo of a + 10 vectors + boot (+ [SEP] for MiniLM): 16 or 17 tokens, not 12
    assert cli(["train-embedding", str(config(tmp_path)), "--base", str(base), "--images",
                str(pictures(tmp_path / "pics")), "--prompt", "a photo of a zqx boot", "--word", "zqx",
                "--num-vectors", "10", "--out", str(tmp_path / "ti"), "--no-progress"]) == 2
    fits = 5 if encoder == "minilm" else 6
    assert f"the text encoder reads 12: set embedding.num_vectors to at most {fits}" in capsys.readouterr().err
    assert not (tmp_path / "ti" / "embedding.safetensors").exists()
    pipe = Pipeline.load(base)
    long = "a photo of a boot " * 4
    with pytest.warns(UserWarning, match="tokens and the text encoder reads 12: the last"):
        pipe(prompt=long, n=1, steps=1, output="tensor")
    assert cli(["sample", str(base), "--prompt", long, "--n", "1", "--steps", "1", "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err  # the CLI prints difflab's warnings as one line, like its errors
    assert "difflab sample: warning: the prompt 'a photo of a boot a photo" in err and "UserWarning" not in err
