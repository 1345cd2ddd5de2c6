"""Checkpoint folders: round trip, clear errors, and atomic replacement."""

import json

import pytest
import torch

from difflab import checkpoint
from difflab.checkpoint import load_checkpoint, save_checkpoint


def _tensors(value):
    return {"model": {"w": torch.full((2, 3), value), "b": torch.arange(3)},
            "ema": {"w": torch.full((2, 3), value / 2)}}


def test_round_trip(tmp_path):
    extra = {"step": 7, "rng": torch.get_rng_state(), "optimizer": {"lr": 1e-3}}
    save_checkpoint(tmp_path / "ck", {"kind": "test", "size": [2, 3]}, _tensors(1.0), extra)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config.json", "ema.safetensors", "extra.pt", "model.safetensors"]
    config, tensors, loaded = load_checkpoint(tmp_path / "ck", kind="test")
    assert config == {"kind": "test", "size": [2, 3]}
    assert torch.equal(tensors["model"]["b"], torch.arange(3)) and tensors["ema"]["w"].max() == 0.5
    assert loaded["step"] == 7 and torch.equal(loaded["rng"], extra["rng"])
    assert load_checkpoint(tmp_path / "ck")[2]["optimizer"] == {"lr": 1e-3}


def test_without_extra_state(tmp_path):
    save_checkpoint(tmp_path / "ck", {"kind": "test"}, _tensors(0.0))
    assert load_checkpoint(tmp_path / "ck")[2] is None


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_checkpoint(tmp_path / "empty")
    save_checkpoint(tmp_path / "ck", {"kind": "model"}, _tensors(0.0))
    with pytest.raises(ValueError, match="is a 'model' checkpoint, expected a 'classifier' one"):
        load_checkpoint(tmp_path / "ck", kind="classifier")
    (tmp_path / "ck" / "ema.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete: missing ema.safetensors"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(ValueError, match="not a difflab checkpoint"):
        load_checkpoint(tmp_path / "other")
    with pytest.raises(ValueError, match="'kind'"):
        save_checkpoint(tmp_path / "x", {}, _tensors(0.0))


def test_extra_state_refuses_pickled_code(tmp_path):
    save_checkpoint(tmp_path / "ck", {"kind": "test"}, _tensors(0.0), {"ok": 1})
    torch.save({"evil": print}, tmp_path / "ck" / "extra.pt")  # a pickled callable
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        load_checkpoint(tmp_path / "ck")


def test_failure_mid_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    save_checkpoint(path, {"kind": "test", "step": 1}, _tensors(1.0))
    real_save = checkpoint.save_file

    def crash_on_second_file(tensors, filename):
        if filename.endswith("model.safetensors"):
            raise KeyboardInterrupt("killed mid-write")
        real_save(tensors, filename)

    monkeypatch.setattr(checkpoint, "save_file", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"kind": "test", "step": 2}, _tensors(2.0))
    config, tensors, _ = load_checkpoint(path)
    assert config["step"] == 1 and tensors["model"]["w"].max() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # the temporary folder is gone


def test_crash_between_renames_is_recovered(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    save_checkpoint(path, {"kind": "test", "step": 1}, _tensors(1.0))
    real_replace = checkpoint.os.replace

    def crash_after_moving_old_aside(src, dst):
        real_replace(src, dst)
        if ".old-" in str(dst):
            raise KeyboardInterrupt("killed between the two renames")

    monkeypatch.setattr(checkpoint.os, "replace", crash_after_moving_old_aside)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"kind": "test", "step": 2}, _tensors(2.0))
    monkeypatch.undo()
    assert not path.exists()
    assert load_checkpoint(path)[0]["step"] == 1      # the previous checkpoint is put back
    save_checkpoint(path, {"kind": "test", "step": 3}, _tensors(3.0))
    assert load_checkpoint(path)[0]["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary or moved-aside folder left
