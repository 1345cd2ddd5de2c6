"""Checkpoint faults: a full disk, damaged and malicious files of every kind, concurrent savers.

Each fault costs at most what docs/reliability.md says: a failed save keeps the previous
checkpoint, a bad file gives one ValueError naming it, and no file ever runs code.
"""

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch

from difflab import checkpoint
from difflab.checkpoint import load_checkpoint, load_state, save_checkpoint
from difflab.models import build_model, load_frozen

UNET = {"name": "unet", "image_size": 8, "in_channels": 1, "model_channels": 8, "channel_mult": [1, 2],
        "num_res_blocks": 1, "attention_resolutions": [], "norm_groups": 4}


def _save(path, step):
    tensors = {"model": {"w": torch.full((4, 4), float(step))}, "ema": {"w": torch.full((4, 4), step / 2)}}
    return save_checkpoint(path, {"kind": "test", "step": step}, tensors, {"step": step, "optimizer": {"lr": 1e-3}})


def _only_the_checkpoint_is_left(parent):
    return sorted(p.name for p in parent.iterdir()) == ["checkpoint"]


# -- a full disk --------------------------------------------------------------------------------------------
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _fail_second_rename(real):
    def replace(src, dst):
        if ".tmp-" in str(src):  # the new checkpoint into place, after the old one was moved aside
            _disk_full()
        real(src, dst)
    return replace


def _fail_first_rename(real):
    def replace(src, dst):
        if ".old-" in str(dst):
            _disk_full()
        real(src, dst)
    return replace


@pytest.mark.parametrize("where", ["save_file", "torch.save", "first rename", "second rename"])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    path = tmp_path / "checkpoint"
    _save(path, 3)
    if where == "save_file":
        monkeypatch.setattr(checkpoint, "save_file", _disk_full)
    elif where == "torch.save":
        monkeypatch.setattr(checkpoint.torch, "save", _disk_full)
    else:
        wrap = _fail_first_rename if where == "first rename" else _fail_second_rename
        monkeypatch.setattr(checkpoint.os, "replace", wrap(checkpoint.os.replace))
    with pytest.raises(OSError, match=rf"could not save checkpoint {path}: the disk is full") as err:
        _save(path, 6)
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC
    assert _only_the_checkpoint_is_left(tmp_path)  # the temporary folder is gone, the old one back in place
    config, tensors, extra = load_checkpoint(path)
    assert config["step"] == 3 and extra["step"] == 3 and tensors["model"]["w"].max() == 3


# -- damaged files: one ValueError naming the file, from every loader ----------------------------------------
def _truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _scramble(file):  # the same size, other bytes
    file.write_bytes(bytes(255 - b for b in file.read_bytes()))


def _without_sizes(folder):
    """As difflab wrote checkpoints before it recorded sizes: only the parser can find the damage."""
    config = json.loads((folder / "config.json").read_text())
    config.pop("checkpoint_sizes", None)
    (folder / "config.json").write_text(json.dumps(config))


DAMAGE = {
    "truncated": lambda folder, name: _truncate(folder / name),
    "scrambled": lambda folder, name: _scramble(folder / name),
    "truncated, no sizes": lambda folder, name: (_without_sizes(folder), _truncate(folder / name)),
}


def _alone(err):
    """No chained exception (e.g. torch's advice to load with weights_only=False) in the traceback."""
    return err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def _loaders(run):
    yield lambda: load_checkpoint(run / "checkpoint")
    yield lambda: load_state(run, kind="test")


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "extra.pt"])
def test_a_damaged_file_is_one_clear_error(tmp_path, name, damage):
    _save(tmp_path / "checkpoint", 3)
    DAMAGE[damage](tmp_path / "checkpoint", name)
    for load in _loaders(tmp_path):
        with pytest.raises(ValueError, match=rf"checkpoint/{name} (is damaged|cannot be read)") as err:
            load()
        message = str(err.value)
        assert "weights_only" not in message and _alone(err.value)
        assert "resume from an older run" in message or "refuses to unpickle code" in message


@pytest.mark.parametrize("text", ['{"kind": "test", "checkpoint_files": ["config.js', "\x00\xff garbage", "[1, 2]"])
def test_a_bad_config_json_is_one_clear_error(tmp_path, text):
    _save(tmp_path / "checkpoint", 3)
    (tmp_path / "checkpoint" / "config.json").write_bytes(text.encode("latin-1"))
    for load in _loaders(tmp_path):
        with pytest.raises(ValueError, match=r"checkpoint/config.json (is not valid JSON|holds a JSON list)"):
            load()


@pytest.mark.parametrize("files", [["config.json", "../outside.safetensors"], ["config.json", 7], "model"])
def test_a_config_json_listing_anything_but_files_in_the_folder_is_refused(tmp_path, files):
    save_checkpoint(tmp_path / "outside", {"kind": "test"}, {"model": {"w": torch.zeros(1)}})
    shutil.copy(tmp_path / "outside" / "model.safetensors", tmp_path / "outside.safetensors")
    folder = _save(tmp_path / "run" / "checkpoint", 3)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "checkpoint_files": files}))
    for load in _loaders(tmp_path / "run"):
        with pytest.raises(ValueError, match=r"run/checkpoint is not a difflab checkpoint"):
            load()


def test_a_mismatching_architecture_is_one_clear_error(tmp_path):
    model = build_model({**UNET, "model_channels": 16})
    save_checkpoint(tmp_path / "checkpoint", {"kind": "test", "model": UNET}, {"model": model.state_dict()})
    config, tensors, _ = load_state(tmp_path, kind="test")
    with pytest.raises(ValueError, match=r"time_embed\.mlp\.0\.weight: checkpoint \(64, 16\) vs model \(32, 8\)"):
        load_frozen(config["model"], tensors["model"])


# -- malicious pickles never run ---------------------------------------------------------------------------
class _Bomb:
    """Unpickling it would create a file."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, about the plain pickle
@pytest.mark.parametrize("name", ["extra.pt", "model.safetensors", "ema.safetensors", "config.json"])
@pytest.mark.parametrize("form", ["torch.save", "pickle"])
def test_a_pickle_bomb_never_runs(tmp_path, name, form):
    folder = _save(tmp_path / "checkpoint", 3)
    target = tmp_path / "pwned"
    payload = {"optimizer": _Bomb(target), "step": 3}
    if form == "torch.save":
        torch.save(payload, folder / name)
    else:
        (folder / name).write_bytes(pickle.dumps(payload))
    if name != "config.json":
        _without_sizes(folder)  # reach the parser, not only the size check
    for load in _loaders(tmp_path):
        with pytest.raises(ValueError, match=rf"checkpoint/{name} (is damaged|cannot be read|is not valid JSON)"):
            load()
    assert not target.exists()


# -- concurrent savers -------------------------------------------------------------------------------------
def test_two_threads_saving_into_one_folder_keep_each_others_temporary_folders(tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoint.PAUSE_ENV, "0.3")
    path = tmp_path / "checkpoint"
    errors = []

    def save_in_thread():
        try:
            _save(path, 7)
        except BaseException as err:  # noqa: B036 - reported below
            errors.append(err)

    thread = threading.Thread(target=save_in_thread)
    thread.start()
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".checkpoint.tmp-*/config.json")) and time.monotonic() < deadline:
        time.sleep(0.01)
    _save(path, 8)  # while the thread sleeps with its temporary folder written
    thread.join()
    assert not errors  # the thread's temporary folder was still there to rename
    assert load_checkpoint(path)[0]["step"] in (7, 8) and _only_the_checkpoint_is_left(tmp_path)


def test_a_save_keeps_the_temporary_folder_of_another_running_process(tmp_path):
    """The other process pauses inside its save (the test hook) while this one saves."""
    path = tmp_path / "checkpoint"
    code = ("import sys, torch; from difflab.checkpoint import save_checkpoint; "
            "save_checkpoint(sys.argv[1], {'kind': 'test', 'step': 5}, {'model': {'w': torch.zeros(2)}})")
    env = {**os.environ, "OMP_NUM_THREADS": "1", checkpoint.PAUSE_ENV: "2"}
    other = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".checkpoint.tmp-*/config.json")) and time.monotonic() < deadline:
            time.sleep(0.01)
        theirs = list(tmp_path.glob(".checkpoint.tmp-*"))
        _save(path, 4)
        assert theirs and all(folder.exists() for folder in theirs)
        load_checkpoint(path)  # a load does not touch it either
        assert all(folder.exists() for folder in theirs)
    finally:
        _, stderr = other.communicate(timeout=60)
    assert other.returncode == 0, stderr[-2000:]
    assert load_checkpoint(path)[0]["step"] == 5 and _only_the_checkpoint_is_left(tmp_path)

