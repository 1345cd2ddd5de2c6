"""Text conditioning end to end: captions → text encoder → cross-attention U-Net, caption
dropout, checkpoint, and `difflab sample --prompt` with classifier-free guidance."""

import pytest
import torch

from difflab.cli import main as cli
from difflab.conditioning import TextConditioning, select
from difflab.pipelines import DiffusionModel, Guidance, generate
from helpers import TINY, minilm_text_run, text_run


def test_caption_table_and_dropout_select_rows():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "a", "shirt", "boot"]
    text = TextConditioning({"name": "small", "vocab": vocab, "dim": 8, "max_length": 4})
    table, rows = text.table(["a shirt", "a boot", "a shirt"])
    assert rows.tolist() == [1, 0, 1] and table["input_ids"].tolist() == [[2, 3, 5, 0], [2, 3, 4, 0]]
    batch = select(table, rows, text.null(), drop=torch.tensor([False, True, False]))
    assert batch["input_ids"].tolist() == [[2, 3, 4, 0], [2, 0, 0, 0], [2, 3, 4, 0]]
    assert batch["token_mask"].tolist()[1] == [True, False, False, False]


def test_small_text_encoder_run_trains_and_samples_from_a_prompt(tmp_path):
    run = text_run(tmp_path, "small")
    model = DiffusionModel.load(run)
    assert model.text_encoder["name"] == "small" and "shirt" in model.text_encoder["vocab"]
    assert model.config["model"]["context_dim"] == 16
    a, _ = generate(model, 4, steps=3, prompts=["a photo of a shirt"], guidance=Guidance(scale=3.0))
    b, _ = generate(model, 4, steps=3, prompts=["a photo of a shirt"], guidance=Guidance(scale=3.0))
    assert torch.equal(a, b)
    text = TextConditioning(model.text_encoder)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([50.0, 50.0])
    with torch.no_grad():  # after 3 steps the prompt's effect is small, but there
        shirt = model.network(x, t, **text.encode(["a photo of a shirt"] * 2))
        sneaker = model.network(x, t, **text.encode(["a photo of a sneaker"] * 2))
    assert not torch.equal(shirt, sneaker)
    out = tmp_path / "samples"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a bag\n\na photo of a coat\n")
    assert cli(["sample", str(run), "--prompts", str(prompts), "--n", "4", "--steps", "2",
                "--guidance-scale", "2", "--out", str(out)]) == 0
    assert (out / "prompts.txt").read_text().splitlines() == ["a photo of a bag", "a photo of a coat"] * 2
    with pytest.raises(ValueError, match="give a prompt"):
        generate(model, 2, steps=2)


def test_prompt_on_a_model_without_text_is_an_error(tmp_path):
    assert cli(["train", *sum((["--set", x] for x in TINY), []), "--set", "train.steps=1", "--no-progress",
                "--out", str(tmp_path / "plain")]) == 0
    with pytest.raises(ValueError, match="not text-conditioned"):
        generate(DiffusionModel.load(tmp_path / "plain"), 2, steps=2, prompts=["a cat"])


def test_frozen_minilm_run(tmp_path):
    run = minilm_text_run(tmp_path)
    model = DiffusionModel.load(run)
    assert model.config["model"]["context_dim"] == 384 and model.config["model"]["text_encoder"] is None
    images, _ = generate(model, 2, steps=2, prompts=["a photo of a dress"], guidance=Guidance(scale=4.0))
    assert images.shape == (2, 1, 8, 8)
