"""Checkpoint folders: round trip, clear errors, and atomic replacement."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from difflab import checkpoint
from difflab.checkpoint import load_checkpoint, save_checkpoint
from difflab.models import build_model, load_frozen


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
    with pytest.raises(ValueError, match=r"extra\.pt cannot be read: it asks to import \S*print, .*refuses "
                                         "to unpickle code") as err:
        load_checkpoint(tmp_path / "ck")
    assert "weights_only" not in str(err.value) and err.value.__suppress_context__


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


def test_an_exception_between_the_renames_puts_the_previous_checkpoint_back(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    save_checkpoint(path, {"kind": "test", "step": 1}, _tensors(1.0))
    real_replace = checkpoint.os.replace

    def crash_after_moving_old_aside(src, dst):
        real_replace(src, dst)
        if ".old-" in str(dst):
            raise KeyboardInterrupt("interrupted between the two renames")

    monkeypatch.setattr(checkpoint.os, "replace", crash_after_moving_old_aside)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"kind": "test", "step": 2}, _tensors(2.0))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # rolled back: no temporary or moved-aside folder
    assert load_checkpoint(path)[0]["step"] == 1
    save_checkpoint(path, {"kind": "test", "step": 3}, _tensors(3.0))
    assert load_checkpoint(path)[0]["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


# -- what a killed save leaves: .NAME.tmp-PID-N-HOST and .NAME.old-PID-N-HOST folders ----------------------
DEAD = (5_000_001, 49_999_999, 40_000_000)  # above any pid_max: no process has these ids


def _leftover(parent, name, step, complete=True):
    """A folder as a save killed by ``kill -9`` leaves it: a complete (or incomplete) checkpoint."""
    folder = parent / name
    save_checkpoint(folder, {"kind": "test", "step": step}, _tensors(float(step)), {"step": step})
    if not complete:
        (folder / "ema.safetensors").unlink()
    return folder


def test_a_missing_checkpoint_is_restored_from_the_newest_complete_leftover(tmp_path):
    """Not the lowest pid as text (the old sorted(glob)[0]): the highest recorded step of the complete ones."""
    path = tmp_path / "ck"
    _leftover(tmp_path, f".ck.old-{DEAD[1]}", 3)  # sorts first as text, the oldest
    _leftover(tmp_path, f".ck.old-{DEAD[0]}-0-{checkpoint._HOST}", 9)  # the newest complete one
    _leftover(tmp_path, f".ck.tmp-{DEAD[2]}-4-{checkpoint._HOST}", 12, complete=False)  # newer, but partial
    match = rf"ck was missing; restored \.ck\.old-{DEAD[0]}.* \(step 9\)"
    with pytest.warns(checkpoint.CheckpointWarning, match=match):
        config, tensors, extra = load_checkpoint(path)
    assert config["step"] == 9 and extra["step"] == 9 and tensors["model"]["w"].max() == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # stale leftovers are gone


def test_ties_go_to_the_latest_and_an_incomplete_checkpoint_is_replaced(tmp_path):
    path = tmp_path / "ck"
    save_checkpoint(path, {"kind": "test", "step": 5}, _tensors(5.0))
    (path / "model.safetensors").write_bytes(b"cut")  # not the size its config.json records
    older = _leftover(tmp_path, f".ck.old-{DEAD[0]}", 4)
    _leftover(tmp_path, f".ck.tmp-{DEAD[1]}", 4)
    os.utime(older / "config.json", (1, 1))
    with pytest.warns(checkpoint.CheckpointWarning, match=r"incomplete \(model.safetensors has 3 bytes.*"
                                                          rf"restored \.ck\.tmp-{DEAD[1]} \(step 4\)"):
        assert load_checkpoint(path)[0]["step"] == 4
    assert not older.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_a_leftover_of_another_host_is_restored_but_never_deleted(tmp_path):
    """Its process may still be running there (a shared file system): restore, yes; delete, no."""
    path = tmp_path / "ck"
    theirs = _leftover(tmp_path, f".ck.old-{DEAD[0]}-0-otherhost", 8)
    kept = _leftover(tmp_path, f".ck.tmp-{DEAD[1]}-0-otherhost", 2)
    with pytest.warns(checkpoint.CheckpointWarning, match=r"restored \.ck\.old-.*otherhost \(step 8\)"):
        assert load_checkpoint(path)[0]["step"] == 8
    save_checkpoint(path, {"kind": "test", "step": 9}, _tensors(9.0))
    assert not theirs.exists() and kept.exists()


def test_a_run_folder_triggers_the_restore(tmp_path):
    """``--resume RUN`` / ``load_state(RUN)`` / ``find_checkpoint(RUN)``, not only RUN/checkpoint."""
    run = tmp_path / "run"
    _leftover(run, f".checkpoint.old-{DEAD[0]}", 30)
    with pytest.warns(checkpoint.CheckpointWarning, match="restored"):
        assert checkpoint.find_checkpoint(run) == run / "checkpoint"
    assert checkpoint.load_state(run, kind="test")[0]["step"] == 30
    shutil.move(run / "checkpoint", run / f".checkpoint.old-{DEAD[1]}")
    with pytest.warns(checkpoint.CheckpointWarning, match="restored"):
        assert checkpoint.load_state(run, kind="test")[0]["step"] == 30
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]


def test_a_complete_checkpoint_is_used_silently_and_dead_leftovers_are_removed(tmp_path):
    path = tmp_path / "ck"
    save_checkpoint(path, {"kind": "test", "step": 6}, _tensors(6.0))
    _leftover(tmp_path, f".ck.tmp-{DEAD[0]}-0-{checkpoint._HOST}", 9)  # killed before its renames: not committed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_checkpoint(path)[0]["step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_a_save_keeps_the_folders_of_running_processes(tmp_path):
    """The old save deleted every .NAME.tmp-*, another running save's included."""
    path = tmp_path / "ck"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = _leftover(tmp_path, f".ck.tmp-{live.pid}-0-{checkpoint._HOST}", 2)
        theirs_unhosted = _leftover(tmp_path, f".ck.tmp-{live.pid}", 2)
        dead = _leftover(tmp_path, f".ck.tmp-{DEAD[0]}-0-{checkpoint._HOST}", 2)
        save_checkpoint(path, {"kind": "test", "step": 3}, _tensors(3.0))
        assert theirs.exists() and theirs_unhosted.exists() and not dead.exists()
        assert load_checkpoint(path)[0]["step"] == 3 and theirs.exists()
    finally:
        live.kill()
        live.wait()
    save_checkpoint(path, {"kind": "test", "step": 4}, _tensors(4.0))  # now they are stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_a_checkpoint_without_recorded_sizes_still_loads(tmp_path):
    """The format before the completeness marker: config.json lists the files, without sizes."""
    path = tmp_path / "ck"
    save_checkpoint(path, {"kind": "test", "step": 1}, _tensors(1.0), {"step": 1})
    config = json.loads((path / "config.json").read_text())
    config.pop("checkpoint_sizes", None)
    (path / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(path)[0] == {"kind": "test", "step": 1}
    _leftover(tmp_path, f".ck.old-{DEAD[0]}", 7)  # complete too, yet never preferred to the current one
    assert load_checkpoint(path)[0]["step"] == 1


def test_only_some_groups_and_no_extra_state(tmp_path):
    path = tmp_path / "ck"
    save_checkpoint(path, {"kind": "test"}, _tensors(1.0), {"optimizer": {"lr": 1e-3}})
    (path / "extra.pt").write_bytes(b"not read")
    (path / "model.safetensors").write_bytes(b"not read")
    config, tensors, extra = load_checkpoint(path, groups=["ema"], with_extra=False)
    assert list(tensors) == ["ema"] and extra is None and config == {"kind": "test"}
    assert list(checkpoint.load_state(path, kind="test", groups="ema", with_extra=False)[1]) == ["ema"]
    with pytest.raises(ValueError, match="has no tensor group 'autoencoder'; it holds model, ema"):
        load_checkpoint(path, groups=["autoencoder"])


def test_load_frozen_names_the_first_mismatch():
    config = {"name": "unet", "image_size": 8, "in_channels": 1, "model_channels": 8, "channel_mult": [1, 2],
              "num_res_blocks": 1, "attention_resolutions": [], "norm_groups": 4}
    state = build_model(config).state_dict()
    wider = build_model({**config, "model_channels": 16}).state_dict()
    first = next(iter(state))
    with pytest.raises(ValueError, match=rf"the weights of ck do not fit the unet model of its config: {first}: "
                                         r"checkpoint \(64, 16\) vs model \(32, 8\)"):
        load_frozen(config, wider, source="ck")
    with pytest.raises(ValueError, match=f"missing key {first} "):
        load_frozen(config, {k: v for k, v in state.items() if k != first})
    with pytest.raises(ValueError, match="unexpected key extra.weight "):
        load_frozen(config, {**state, "extra.weight": torch.zeros(1)})
    assert not load_frozen(config, state).training
