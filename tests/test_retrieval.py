"""Caption retrieval (difflab.metrics.retrieval and benchmarks/caption_retrieval.py): nearest
neighbours against brute force, the top-1 / top-k scores on hand-made cases, and the script on a
tiny text-conditioned run."""

import json
import sys
from pathlib import Path

import pytest
import torch

from difflab.metrics.retrieval import caption_retrieval, nearest_neighbours
from difflab.training.config import load_config
from difflab.training.trainer import train
from helpers import TINY_AE, text_run

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import caption_retrieval as script  # noqa: E402


def test_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(7, 5, generator=g), torch.randn(30, 5, generator=g)
    brute = [sorted(range(30), key=lambda j: float((q - keys[j]).norm()))[:4] for q in queries]
    assert nearest_neighbours(queries, keys, 4, batch_size=3).tolist() == brute
    with pytest.raises(ValueError, match="pick 1 <= k <= 30"):
        nearest_neighbours(queries, keys, 31)
    with pytest.raises(ValueError, match=r"\(N, D\) queries"):
        nearest_neighbours(queries, keys[:, :4], 1)


def test_scores_on_hand_made_cases():
    # training images on a line at 0, 1, …, 5; captions name pairs of them
    training = torch.arange(6.0).view(6, 1)
    captions = ["a", "a", "b", "b", "c", "c"]
    exact = caption_retrieval(training + 0.1, training, captions, captions, k=2)
    assert exact.top1 == 1.0 and exact.topk == 1.0 and exact.rank.tolist() == [0] * 6
    # the 3 nearest of each drawn point: 2.1 → 2, 3, 1 ("a" third); 1.9 → 2 ("b" first);
    # 1.4 → 1, 2, 0 (no "c"); 4.4 → 4, 5, 3 ("b" third); 3.6 → 4 ("c" first); 2.6 → 3, 2, 4 ("c" third)
    generated = torch.tensor([[2.1], [1.9], [1.4], [4.4], [3.6], [2.6]])
    requested = ["a", "b", "c", "b", "c", "c"]
    scores = caption_retrieval(generated, training, captions, requested, k=3)
    assert scores.rank.tolist() == [2, 0, -1, 2, 0, 2]
    assert scores.top1 == pytest.approx(2 / 6) and scores.topk == pytest.approx(5 / 6)
    assert scores.to_dict() == {"top1": scores.top1, "top3": scores.topk, "k": 3, "n": 6}
    with pytest.raises(ValueError, match="6 generated images but 5 requested"):
        caption_retrieval(generated, training, captions, requested[:5])


def test_script_on_a_tiny_text_run(tmp_path, capsys):
    run = text_run(tmp_path, "small")
    out = tmp_path / "retrieval"
    assert script.main([str(run), "--n", "4", "--k", "3", "--features", "pixels", "--steps", "2",
                        "--guidance-scale", "2", "--out", str(out)]) == 0
    assert "4 captions, pixels features: top-1" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 4 and results["k"] == 3 and 0 <= results["top1"] <= results["top3"] <= 1
    assert len(results["captions"]) == 4 and all(len(c["neighbours"]) == 3 for c in results["captions"])
    assert len({c["caption"] for c in results["captions"]}) == 4 and (out / "grid.png").exists()
    autoencoder = tmp_path / "ae"  # 8x8 grey, like the run's images
    train(load_config(None, TINY_AE + ["train.steps=2", f"train.out_dir={autoencoder}"]), progress=False)
    assert script.main([str(run), "--n", "3", "--steps", "2", "--autoencoder", str(autoencoder)]) == 0
    assert "3 captions, autoencoder features" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="needs --autoencoder RUN"):
        script.main([str(run), "--n", "2", "--steps", "2"])
    with pytest.raises(SystemExit, match="distinct training captions"):
        script.main([str(run), "--n", "1000", "--steps", "2", "--features", "pixels"])
