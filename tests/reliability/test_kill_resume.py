"""``kill -9`` during training and inside checkpoint writes, then ``--resume``: the final weights equal
an uninterrupted run's bit for bit, and no leftover folder remains.

Kills inside a write use the checkpoint module's test hook (``DIFFLAB_TEST_PAUSE_IN_SAVE``): the save
sleeps after writing its temporary folder and between its two renames, and the test kills it there.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from difflab import checkpoint
from difflab.checkpoint import load_state, save_checkpoint
from helpers import TINY

STEPS, EVERY = 48, 3
ARGS = [f"--set={s}" for s in [*TINY, f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}"]]
PAUSE_S = "0.4"
# 12 kills after the first: 6 a few steps into a resumed run (mid-step or mid-save), 3 after a save has
# written its temporary folder, 3 between its two renames. Each moves the run on by one checkpoint
# (EVERY steps) at most, so the run cannot finish before the last kill.
KILLS = ["step"] * 6 + ["written"] * 3 + ["renamed"] * 3


def _train(run, log, *, resume, pause=False):
    env = {key: value for key, value in os.environ.items() if key != checkpoint.PAUSE_ENV}
    env["OMP_NUM_THREADS"] = "1"
    if pause:
        env[checkpoint.PAUSE_ENV] = PAUSE_S
    command = [sys.executable, "-m", "difflab.cli", "train", *ARGS, "--out", str(run), "--no-progress"]
    with open(log, "w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(command + (["--resume", str(run)] if resume else []), env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _wait_for(proc, condition, what, timeout=60.0):
    """Poll until ``condition()``; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
    return True


def _last_logged_step(run):
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    return lines[-1] if lines else None


def _step_of(line):
    try:
        return json.loads(line)["step"]
    except (TypeError, ValueError, KeyError):  # no line yet, or one caught half-written
        return -1


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # reaped: its pid no longer runs, so its folders count as stale


def _leftovers(run):
    return sorted(p.name for p in run.glob(".checkpoint.*"))


def test_kill_9_anywhere_then_resume_equals_the_uninterrupted_run(tmp_path):
    rng = random.Random(18)
    reference, run = tmp_path / "reference", tmp_path / "run"
    uninterrupted = _train(reference, tmp_path / "reference.log", resume=False)

    # the first run: killed once its first checkpoint is there (a run without one cannot resume)
    proc = _train(run, tmp_path / "log-0", resume=False)
    assert _wait_for(proc, lambda: (run / "checkpoint" / "config.json").exists(), "the first checkpoint")
    time.sleep(rng.uniform(0, 0.1))
    _kill(proc)
    kills, plan = 1, rng.sample(KILLS, len(KILLS))
    for i, mode in enumerate(plan, 1):
        log = tmp_path / f"log-{i}"
        before = _last_logged_step(run)
        proc = _train(run, log, resume=True, pause=mode != "step")
        if mode == "step":  # k rows after this run's first, plus up to a step: mid-step or mid-save
            alive = _wait_for(proc, lambda: _last_logged_step(run) != before, "this run's first step")  # noqa: B023
            target = min(_step_of(_last_logged_step(run)) + rng.randint(0, 3), STEPS)
            alive = alive and _wait_for(proc, lambda: _step_of(_last_logged_step(run)) >= target,  # noqa: B023
                                        f"step {target}")
            time.sleep(rng.uniform(0, 0.08))
        elif mode == "written":  # sleeping in the hook after writing the temporary folder
            alive = _wait_for(proc, lambda: any(run.glob(f".checkpoint.tmp-{proc.pid}-*/config.json")),  # noqa: B023
                              "a written temporary folder")
        else:  # sleeping in the hook between the renames: only the moved-aside and the temporary folder exist
            alive = _wait_for(proc, lambda: any(run.glob(f".checkpoint.old-{proc.pid}-*"))  # noqa: B023
                              and not (run / "checkpoint").exists(), "the moved-aside checkpoint")
        assert alive, f"kill {i} ({mode}): the run ended before it was killed:\n{log.read_text()[-3000:]}"
        _kill(proc)
        kills += 1
        if mode == "renamed":
            assert not (run / "checkpoint").exists() and _leftovers(run)

    final = _train(run, tmp_path / "log-final", resume=True)
    assert final.wait(timeout=120) == 0, (tmp_path / "log-final").read_text()[-3000:]
    assert uninterrupted.wait(timeout=120) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    assert kills >= 10
    logs = [(tmp_path / f"log-{i}").read_text() for i in range(1, len(plan) + 1)]
    for mode, next_log in zip(plan, logs[1:] + [(tmp_path / "log-final").read_text()]):
        if mode == "renamed":  # the resumed run restored the newest complete copy, and said so
            assert "difflab train: warning: " in next_log and "restored .checkpoint.tmp-" in next_log, next_log[-3000:]

    _, expected, expected_extra = load_state(reference)
    _, got, got_extra = load_state(run)
    assert got_extra["step"] == expected_extra["step"] == STEPS
    for group in ("model", "ema"):
        for name, tensor in expected[group].items():
            assert torch.equal(got[group][name], tensor), f"{group}.{name} differs from the uninterrupted run"
    assert _leftovers(run) == []


@pytest.mark.parametrize("tmp_left", [True, False], ids=["temp and moved-aside", "only moved-aside"])
def test_a_kill_between_the_renames_then_a_load_restores_the_newest_complete_copy(tmp_path, tmp_left):
    """Also beside older leftovers: a complete one whose pid sorts first as text and a partial newer one."""
    run = tmp_path / "run"
    path = run / "checkpoint"

    def save(folder, step):
        save_checkpoint(folder, {"kind": "test", "step": step}, {"model": {"w": torch.full((3,), float(step))}})

    save(path, 3)
    save(run / ".checkpoint.old-49999999", 1)  # dead pids: above any pid_max
    save(run / ".checkpoint.old-5000001", 5)
    (run / ".checkpoint.old-5000001" / "model.safetensors").unlink()  # killed while being deleted: partial
    code = ("import sys, torch; from difflab.checkpoint import save_checkpoint; "
            "save_checkpoint(sys.argv[1], {'kind': 'test', 'step': 6}, {'model': {'w': torch.full((3,), 6.0)}})")
    env = {**os.environ, "OMP_NUM_THREADS": "1", checkpoint.PAUSE_ENV: "2"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env)
    assert _wait_for(proc, lambda: not path.exists() and any(run.glob(f".checkpoint.old-{proc.pid}-*")),
                     "the moved-aside checkpoint")
    _kill(proc)
    if not tmp_left:
        for folder in run.glob(".checkpoint.tmp-*"):
            checkpoint.shutil.rmtree(folder)
    expected = 6 if tmp_left else 3
    with pytest.warns(checkpoint.CheckpointWarning, match=rf"checkpoint was missing; restored \.checkpoint\."
                                                          rf"{'tmp' if tmp_left else 'old'}-{proc.pid}-.* "
                                                          rf"\(step {expected}\)"):
        config, tensors, _ = load_state(run, kind="test")
    assert config["step"] == expected and tensors["model"]["w"][0] == expected
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]
