"""The learning-rate schedule: warm-up, constant / cosine / linear decay, resume, config errors."""

import math

import pytest
import torch

from difflab.training.config import ConfigError
from difflab.training.lr_schedule import lr_factor, lr_lambda
from difflab.training.trainer import train
from helpers import tiny_config


def test_factors_at_key_steps():
    assert [lr_factor(s, 4, 100) for s in (0, 1, 3, 4, 99)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    # cosine over steps 10..110: 1 at the start, (1 + f)/2 half-way, f at the end and after
    assert lr_factor(10, 10, 110, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110, "cosine", 0.1) == pytest.approx(0.55)
    assert lr_factor(35, 10, 110, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(110, 10, 110, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 10, 110, "linear") == 0.0 and lr_factor(35, 10, 110, "linear") == pytest.approx(0.75)
    with pytest.raises(ValueError, match="constant, cosine, linear"):
        lr_lambda(0, 10, "step")
    with pytest.raises(ValueError, match=r"min_lr_fraction must be in \[0, 1\]"):
        lr_lambda(0, 10, "cosine", 2.0)


def test_a_resumed_scheduler_continues_the_same_curve():
    def rates(resume_at=None, steps=12):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(3, steps, "cosine", 0.05))
        out = []
        for step in range(steps):
            if step == resume_at:  # a new optimizer and scheduler from the saved states
                state = (opt.state_dict(), sched.state_dict())
                opt = torch.optim.SGD([param], lr=0.1)
                sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(3, steps, "cosine", 0.05))
                opt.load_state_dict(state[0])
                sched.load_state_dict(state[1])
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert rates(resume_at=7) == pytest.approx(rates())
    assert rates()[-1] < rates()[3] == pytest.approx(0.1)


def test_the_trainer_follows_the_schedule_and_rejects_a_bad_one(tmp_path):
    import json

    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=6", "train.log_every=1", "optim.warmup_steps=2",
                      "optim.lr_schedule=linear", "optim.lr=0.01"), progress=False)
    logged = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    # lr after each step: warm-up 0.5, 1, then linear decay over the 4 steps after warm-up
    assert logged == pytest.approx([0.01 * f for f in (1.0, 1.0, 0.75, 0.5, 0.25, 0.0)])
    with pytest.raises(ConfigError, match="'optim.lr_schedule' must be one of constant, cosine, linear, got 'exp'"):
        tiny_config(tmp_path / "bad", "train.steps=1", "optim.lr_schedule=exp")  # at load time
    config = tiny_config(tmp_path / "bad", "train.steps=1")
    config.optim.lr_schedule = "exp"  # set in Python: train checks again
    with pytest.raises(ConfigError, match="'optim.lr_schedule' must be one of"):
        train(config, progress=False)
    assert not (tmp_path / "bad").exists()
