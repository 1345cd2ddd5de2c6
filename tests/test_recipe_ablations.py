"""The recipe ablation benchmark (benchmarks/recipe_ablations.py): which rows it runs, what each
changes, how a row that depends on the default's length gets it, and its table."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from difflab.training.config import load_config  # noqa: E402
from recipe_ablations import ABLATIONS, load_rows, parse_args, table  # noqa: E402

CONFIG = Path(__file__).parent.parent / "src" / "difflab" / "configs" / "fashion-mnist-16-cpu.yaml"


def test_every_row_is_a_valid_change_of_the_cpu_config():
    for _, changes in ABLATIONS.values():
        config = load_config(CONFIG, list(changes))  # raises on a wrong key or value
        assert config.data.resolution == 16
    assert load_config(CONFIG).optim.lr_schedule == "cosine"  # the shipped recipe decays its learning rate
    assert load_config(CONFIG, list(ABLATIONS["lr_constant"][1])).optim.lr_schedule == "constant"
    assert load_config(CONFIG, list(ABLATIONS["width_48"][1])).model.options["model_channels"] == 48
    assert ABLATIONS["default"][1] == ()  # the reference row changes nothing


def test_rows_are_chosen_by_name_and_a_wrong_name_is_one_clear_error(capsys):
    assert parse_args(["--only", "default, v"]).rows == ["default", "v"]
    assert parse_args([]).rows == list(ABLATIONS)
    with pytest.raises(SystemExit):
        parse_args(["--only", "default,nonsense"])
    assert "unknown row(s) nonsense" in capsys.readouterr().err
    for wrong in (["--seconds", "0"], ["--samples", "1"], ["--classifier", "no/such/run"]):
        with pytest.raises(SystemExit):
            parse_args(wrong)
    assert "--classifier no/such/run: no classifier at no/such/run" in capsys.readouterr().err


def test_the_table_compares_scored_rows_with_the_default_and_skips_unscored_ones(tmp_path):
    figures = {"fid": 40.0, "kid": 0.006, "precision": 0.7, "recall": 0.7, "steps": 2700, "images_seen": 172800,
               "train_wall_s": 301.2}
    (tmp_path / "default.json").write_text(json.dumps(figures))
    (tmp_path / "v.json").write_text(json.dumps(dict(figures, fid=30.0, classifier_score=7.1)))
    (tmp_path / "min_snr.json").write_text(json.dumps({"steps": 2600}))  # sampled, unscored
    rows = load_rows(tmp_path)
    assert set(rows) == {"default", "v", "min_snr"}
    lines = table(rows).splitlines()
    assert len(lines) == 4  # header, rule, default, v
    assert lines[2].startswith("| default |") and "| 40.00 | 1.00 |" in lines[2] and "| 172,800 | 301 |" in lines[2]
    assert lines[3].startswith("| v |") and "| 30.00 | 0.75 |" in lines[3] and "| 7.10 |" in lines[3]
