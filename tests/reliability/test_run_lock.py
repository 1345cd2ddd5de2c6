"""One writer per run folder (difflab.run_lock): a second writer is refused with the holder's pid
and host, a lock left by a killed process is taken over with a warning, and the lock is released
however the holder ends."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from difflab import run_lock
from difflab.run_lock import LOCK_FILE, RunLock, RunLocked
from difflab.training.trainer import train
from helpers import TINY, tiny_config

HOLD = """
import sys, time
from difflab.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def start_holder(folder):
    """A process that takes the folder's lock and keeps it for a minute (or until killed)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_train_fails_while_another_process_trains(tmp_path):
    """A real `difflab train` in a subprocess, and a second one on the same folder here."""
    sets = [item for s in TINY for item in ("--set", s)]
    # SIGINT at its default disposition in the child, even when pytest itself runs as a background job
    # of a non-interactive shell (which starts it ignored, and an ignored signal stays ignored across exec)
    first = subprocess.Popen([sys.executable, "-m", "difflab.cli", "train", *sets, "--set", "train.steps=1000000",
                              "--set", "train.checkpoint_every=1000000", "--out", str(tmp_path), "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "metrics.jsonl").exists():  # training has started
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        with pytest.raises(RunLocked, match=rf"in use by another difflab train \(pid {first.pid} on host "
                                            rf"{socket.gethostname()}, started .*\): wait for it to finish or stop "
                                            r"it, or write to another folder \(--out DIR\)"):
            train(tiny_config(tmp_path, "train.steps=1"), progress=False)
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    assert not (tmp_path / LOCK_FILE).exists()  # released by the interrupted run


def test_a_lock_held_by_another_process_names_it(tmp_path):
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(RunLocked, match=f"pid {holder.pid} on host {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path):
    holder = start_holder(tmp_path)
    holder.kill()  # kill -9: the lock file stays, the kernel drops the process's lock
    holder.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid
    with pytest.warns(UserWarning, match=f"taking over the lock of a run that ended without releasing it "
                                         f"\\(pid {holder.pid} on host"):
        with RunLock(tmp_path) as lock:
            assert lock.held and json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_leftover_lock_file_does_not_stop_training(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 1, "host": "elsewhere", "started": "yesterday"}))
    with pytest.warns(UserWarning, match="taking over .*pid 4194305 on host elsewhere"):
        train(tiny_config(tmp_path, "train.steps=1"), progress=False)
    assert (tmp_path / "checkpoint").is_dir() and not (tmp_path / LOCK_FILE).exists()


def test_the_lock_is_released_after_an_exception(tmp_path):
    with pytest.raises(KeyError):
        with RunLock(tmp_path):
            assert (tmp_path / LOCK_FILE).exists()
            raise KeyError("boom")
    assert not (tmp_path / LOCK_FILE).exists()
    with RunLock(tmp_path) as lock:  # free again
        assert lock.held
    assert not lock.held


def test_one_process_cannot_take_its_own_folder_twice(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()


def test_without_flock_the_lock_file_is_created_exclusively(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "fcntl", None)  # as on Windows
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}.*If that process is gone, delete .*{LOCK_FILE}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()
