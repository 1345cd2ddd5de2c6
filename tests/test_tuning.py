"""Tuned step schedules: the parametrisation, the search on closed-form data (judged against
the exact ODE on noise it never saw), the JSON file, and the tune-steps → sample round trip."""

import json

import pytest
import torch

from difflab import schedules
from difflab.analytic import GaussianMixture
from difflab.cli import main as cli
from difflab.sampling import sample
from difflab.sampling.tuning import TunedSigmas, logits_from_sigmas, sigmas_from_logits, tune_sigmas

SCHEDULE = schedules.get_schedule("linear")
MIXTURE = GaussianMixture.random(4, 4, spread=1.0, std_range=(0.3, 0.6), seed=3)


def noise(n, seed):
    return torch.randn(n, MIXTURE.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def exact(x_T):
    """The probability-flow ODE solved to 1e-11 from σ_max to σ_min, then D(x, σ_min)."""
    x = x_T * float(SCHEDULE.prior_std(SCHEDULE.sigma_max))
    x = MIXTURE.ode_solution(x, SCHEDULE.sigma_max, SCHEDULE.sigma_min)
    return MIXTURE.denoise(x, SCHEDULE.sigma_min)


def relative_error(x, ref):
    return float((x - ref).norm() / ref.norm())


def test_logits_parametrise_every_decreasing_schedule_and_invert():
    sigma_max, sigma_min = SCHEDULE.sigma_max, SCHEDULE.sigma_min
    for seed in range(5):
        logits = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
        s = sigmas_from_logits(logits.numpy(), sigma_max, sigma_min)
        assert len(s) == 7 and s[0] == sigma_max and s[-1] == 0
        assert (s[:-1] > s[1:]).all() and s[-2] > sigma_min
        back = sigmas_from_logits(logits_from_sigmas(s, sigma_min), sigma_max, sigma_min)
        torch.testing.assert_close(back, s, rtol=1e-9, atol=0)


def test_the_reference_solve_is_close_to_the_exact_ode():
    x_T = noise(32, 1)
    model = MIXTURE.model(SCHEDULE, "epsilon")
    ref = sample(model, x_T, SCHEDULE, method="unipc_3", steps=200, spacing="log_snr")
    assert relative_error(ref, exact(x_T)) < 1e-5


def test_tuning_beats_the_initial_spacing_on_fresh_noise_against_the_exact_ode():
    model = MIXTURE.model(SCHEDULE, "epsilon")
    tuned = tune_sigmas(model, noise(64, 1), SCHEDULE, method="unipc_3", steps=5, init="trailing", max_evals=300)
    assert tuned.error_tuned < tuned.error_init and tuned.evaluations <= 301
    sig = tuned.tensor()
    assert sig[0] == SCHEDULE.sigma_max and sig[-1] == 0 and (sig[:-1] > sig[1:]).all()
    fresh = noise(64, 2)
    ref = exact(fresh)
    plain = relative_error(sample(model, fresh, SCHEDULE, method="unipc_3", steps=5, spacing="trailing"), ref)
    better = relative_error(sample(model, fresh, SCHEDULE, method="unipc_3", sigmas=sig), ref)
    assert better < plain / 2, (plain, better)
    # check() measures the same thing against the many-step solve
    err_init, err_tuned = tuned.check(model, fresh, SCHEDULE)
    assert err_init == pytest.approx(plain, rel=1e-3) and err_tuned == pytest.approx(better, rel=0.05, abs=1e-6)


def test_several_initial_spacings_start_the_search_from_the_best():
    """init=(names…): each is scored on the calibration noise and the search starts from the best
    (at 10 steps the generic levels beat Karras on this mixture), whichever order they come in."""
    model, x_T = MIXTURE.model(SCHEDULE, "epsilon"), noise(32, 1)
    ref = sample(model, x_T, SCHEDULE, method="unipc_3", steps=200, spacing="log_snr")
    errors = {name: relative_error(sample(model, x_T, SCHEDULE, method="unipc_3", steps=10, spacing=name), ref)
              for name in ("karras", "generic")}
    assert errors["generic"] < errors["karras"]
    for order in (("karras", "generic"), ("generic", "karras", "generic")):
        tuned = tune_sigmas(model, x_T, SCHEDULE, method="unipc_3", steps=10, init=order, max_evals=5)
        assert tuned.init == "generic" and tuned.error_init == pytest.approx(errors["generic"], rel=1e-9)
        assert tuned.error_tuned <= tuned.error_init
    with pytest.raises(ValueError, match="at least one"):
        tune_sigmas(model, x_T, SCHEDULE, method="unipc_3", steps=10, init=(), max_evals=5)


def test_tuning_rejects_stochastic_samplers_and_degenerate_requests():
    model = MIXTURE.model(SCHEDULE, "epsilon")
    with pytest.raises(ValueError, match="stochastic"):
        tune_sigmas(model, noise(4, 0), SCHEDULE, method="ddpm", steps=5)
    with pytest.raises(ValueError, match="stochastic"):
        tune_sigmas(model, noise(4, 0), SCHEDULE, method="ddim", steps=5, eta=1.0)
    with pytest.raises(ValueError, match="steps >= 2"):
        tune_sigmas(model, noise(4, 0), SCHEDULE, method="unipc_3", steps=1)
    with pytest.raises(ValueError, match="unknown sampler"):
        tune_sigmas(model, noise(4, 0), SCHEDULE, method="nope", steps=5)


def test_tuned_schedule_json_round_trip_and_clear_errors(tmp_path):
    tuned = TunedSigmas("unipc_3", 2, [80.0, 1.0, 0.0], "trailing", 0.1, 0.01, 10, 50, {"order": 3})
    path = tuned.save(tmp_path / "t.json")
    assert TunedSigmas.load(path) == tuned
    with pytest.raises(FileNotFoundError, match="tune-steps"):
        TunedSigmas.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a tuned step schedule"):
        TunedSigmas.load(tmp_path / "bad.json")
    data = json.loads(path.read_text())
    data["sigmas"] = [80.0, 0.0]
    (tmp_path / "short.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="expected steps \\+ 1"):
        TunedSigmas.load(tmp_path / "short.json")


def test_tune_steps_then_sample_uses_the_tuned_schedule(tmp_path, capsys):
    from difflab.training.trainer import train
    from helpers import tiny_config

    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=4", "diffusion.cond_drop_prob=0.2"), progress=False)
    args = ["tune-steps", str(run), "--steps", "3", "--n", "6", "--max-evals", "40", "--reference-steps", "30"]
    code = cli(args)
    out = capsys.readouterr().out
    assert "fresh noise" in out
    tuned_file = run / "checkpoint" / "tuned-steps" / "unipc_3-3.json"
    if code == 1:  # the search found nothing better on fresh noise: nothing may be written
        assert "not written" in out and not tuned_file.exists()
        tuned = TunedSigmas("unipc_3", 3, [157.0, 5.0, 0.5, 0.0], "trailing", 1, 1, 1, 30,
                            context={"guidance_scale": 1.0})
        tuned.save(tuned_file)
    else:
        assert code == 0 and tuned_file.exists()
    tuned = TunedSigmas.load(tuned_file)
    assert tuned.context["guidance_scale"] == 1.0 and len(tuned.sigmas) == 4

    def sample_cli(*extra):
        assert cli(["sample", str(run), "--n", "2", "--steps", "3", "--out", str(tmp_path / "s"), *extra]) == 0
        return capsys.readouterr().out

    assert "using the tuned 3-step schedule" in sample_cli()
    assert "tuned" not in sample_cli("--no-tuned")
    assert "tuned" not in sample_cli("--spacing", "karras")
    assert "tuned at guidance scale 1" in sample_cli("--guidance-scale", "2")
    copy = tuned.save(tmp_path / "elsewhere.json")
    assert cli(["sample", str(run), "--n", "2", "--sigmas", str(copy), "--out", str(tmp_path / "s2")]) == 0
    assert cli(["sample", str(run), "--n", "2", "--sigmas", str(copy), "--method", "ddim"]) == 2
    assert "contradicts" in capsys.readouterr().err


def test_the_search_keeps_its_best_levels_when_its_time_budget_runs_out():
    import time

    model = MIXTURE.model(SCHEDULE, "epsilon")
    start = time.perf_counter()
    # 2 s: room for the reference solve on a loaded box, and far from the 1,200 solves of the default
    # budget at 8 steps (~11 s on the 2-core box: ~190 solves fit in the 2 s)
    tuned = tune_sigmas(model, noise(64, 1), SCHEDULE, method="unipc_3", steps=8, init="trailing", max_seconds=2.0)
    assert time.perf_counter() - start < 10.0
    assert 0 < tuned.evaluations < 1200 and tuned.error_tuned <= tuned.error_init
    unbounded = tune_sigmas(model, noise(64, 1), SCHEDULE, method="unipc_3", steps=5, init="trailing", max_evals=40)
    assert unbounded.evaluations == 40  # counted by the search itself, as scipy's nfev was
    spent = tune_sigmas(model, noise(8, 1), SCHEDULE, method="unipc_3", steps=5, init="trailing", max_seconds=1e-9)
    assert spent.evaluations == 0 and spent.error_tuned == spent.error_init  # the budget went to the reference


def test_shipped_step_counts_and_budget():
    from difflab.pipelines.tune import shipped_budget, shipped_step_counts

    assert shipped_step_counts(None, 20) == (10, 20)
    assert shipped_step_counts(None, 10) == (10,)
    assert shipped_step_counts(None, 1) == (10,)  # one step has no level to tune
    assert shipped_step_counts((), 20) == () and shipped_step_counts((8, 4, 8), 20) == (4, 8)
    assert shipped_budget(None, 1200.0) == pytest.approx(120.0)  # a tenth of the training
    assert shipped_budget(None, 500.0) is None  # 50 s: too short for the reference solves and a search, skipped
    assert shipped_budget(7.0, 1.0) == 7.0  # an explicit budget always holds


def test_config_refuses_wrong_tuning_settings():
    from difflab.training.config import ConfigError, load_config

    assert load_config(None, ["train.tune_steps=[]"]).train.tune_steps == ()
    with pytest.raises(ConfigError, match="train.tune_steps.*step counts >= 2"):
        load_config(None, ["train.tune_steps=[1, 10]"])
    with pytest.raises(ConfigError, match="train.tune_seconds.*> 0"):
        load_config(None, ["train.tune_seconds=0"])


def test_train_ships_tuned_levels_that_sample_and_the_pipeline_use(tmp_path, capsys):
    from difflab import Pipeline
    from difflab.training.trainer import train
    from helpers import tiny_config

    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=3", "train.tune_steps=[3]", "train.tune_seconds=8"), progress=False)
    out = capsys.readouterr().out
    assert "tuning the sampler's levels at 3 steps for up to 8 s" in out
    assert "tuned levels: unipc_3, 3 steps (" in out  # sample.method of the tiny config, its spacing as the start
    tuned_file = run / "checkpoint" / "tuned-steps" / "unipc_3-3.json"
    assert ("written to" in out) == tuned_file.exists()
    if not tuned_file.exists():  # nothing beat the spacing on fresh noise: check the lookup with a made-up file
        assert "not written (no better than" in out
        TunedSigmas("unipc_3", 3, [80.0, 5.0, 0.5, 0.0], "trailing", 1, 1, 1, 30,
                    context={"guidance_scale": 1.0}).save(tuned_file)
    levels = TunedSigmas.load(tuned_file).sigmas

    pipe = Pipeline.load(run, device="cpu")
    record = json.loads(pipe(steps=3, seed=1)[0].info["difflab"])
    assert record["sigmas"] == pytest.approx(levels)
    for plain in (dict(tuned=False), dict(spacing="karras"), dict(steps=4)):
        record = json.loads(pipe(**{"steps": 3, **plain}, seed=1)[0].info["difflab"])
        assert record.get("sigmas") is None, plain
    assert cli(["sample", str(run), "--n", "1", "--steps", "3", "--out", str(tmp_path / "s")]) == 0
    assert "using the tuned 3-step schedule" in capsys.readouterr().out
    from difflab.pipelines.tune import ship_tuned_levels

    [line] = ship_tuned_levels(run, (3,), 1e-9)  # a budget the reference solve alone exceeds: said, nothing written
    assert "not tuned: its 0 s went to the 100-step reference solve" in line
    assert cli(["tune-steps", str(run), "--steps", "3", "--n", "4", "--max-seconds", "1e-9"]) == 1
    assert "nothing tuned" in capsys.readouterr().out


def test_short_runs_skip_tuning_and_a_failure_or_ctrl_c_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    from difflab.pipelines import tune
    from difflab.training.trainer import train
    from helpers import tiny_config

    train(tiny_config(tmp_path / "a", "train.steps=2"), progress=False)
    assert "not tuned: a tenth of 0 s of training is under the 60 s" in capsys.readouterr().out
    train(tiny_config(tmp_path / "b", "train.steps=2", "train.tune_steps=[]"), progress=False)
    assert "tun" not in capsys.readouterr().out
    train(tiny_config(tmp_path / "d", "train.steps=2", "sample.method=ddpm", "train.tune_seconds=1"), progress=False)
    assert "not tuned (sampler 'ddpm' is stochastic" in capsys.readouterr().out
    for error, said in ((KeyboardInterrupt, "interrupted: the checkpoint is complete"),
                        (OSError("No space left on device"), "not tuned (No space left on device)")):
        def fail(*args, error=error, **kwargs):
            raise error
        monkeypatch.setattr(tune, "ship_tuned_levels", fail)
        checkpoint = train(tiny_config(tmp_path / "c", "train.steps=2", "train.tune_seconds=1"), progress=False)
        assert said in capsys.readouterr().out and (checkpoint / "config.json").is_file()
