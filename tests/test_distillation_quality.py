"""The distillation benchmark reads issue 25's acceptance off its points correctly
(benchmarks/distillation_quality.py): which points are compared, and the fewest steps that reach
an FID; and the guidance-scale plot (benchmarks/distillation_guidance_plot.py) groups its curves."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from distillation_quality import (  # noqa: E402
    best_points,
    best_student,
    fewest_steps,
    key,
    network_evals,
    parse_args,
    points,
    student_runs,
)


def point(family, steps, fid, method="unipc_3", accuracy=0.97):
    evals = steps if "student" in family else 2 * steps  # a guided teacher step evaluates the network twice
    return {"family": family, "run": "r", "method": method, "steps": steps, "network_evals": evals, "fid": fid,
            "class_accuracy": accuracy}


ROWS = [point("teacher", 50, 20.0), point("teacher", 50, 18.0, "ddim"), point("teacher", 4, 90.0),
        point("teacher", 8, 30.0), point("teacher, tuned levels", 4, 60.0), point("teacher, tuned levels", 8, 25.0),
        point("student", 8, 21.0, "ddim"), point("student", 4, 24.0, "ddim"), point("student", 1, 40.0, "ddim"),
        point("teacher", 25, 19.0), point("teacher", 2, 150.0), point("teacher, tuned levels", 2, 120.0),
        point("consistency student", 4, 23.0, "consistency"), point("consistency student", 2, 3.0, "consistency"),
        point("consistency student", 1, 35.0, "consistency"), point("adversarial student", 4, 12.0, "ddim")]


def test_best_points_are_the_teachers_best_50_and_4_step_fids_and_the_4_step_student():
    best = best_points(ROWS)
    assert (best["teacher"]["method"], best["teacher"]["fid"]) == ("ddim", 18.0)
    assert (best["teacher 4"]["family"], best["teacher 4"]["fid"]) == ("teacher, tuned levels", 60.0)
    assert best["student"]["fid"] == 24.0 and best["consistency student"]["fid"] == 23.0
    assert best["adversarial student"]["fid"] == 12.0  # its own family: it does not hide the progressive student
    assert best_points([])["teacher"] is None
    # of several refinements, the best FID that keeps the class-accuracy goal; the best FID if none does
    unchecked = point("adversarial student", 4, 11.0, "ddim", accuracy=0.92)
    assert best_points([*ROWS, unchecked])["adversarial student"]["fid"] == 12.0
    assert best_points([r for r in ROWS if r["family"] != "adversarial student"] + [unchecked]
                       )["adversarial student"]["fid"] == 11.0
    by_evals = best_points(ROWS, "network_evals")  # 50 and 4 network evaluations: 25 and 2 guided teacher steps
    assert (by_evals["teacher"]["steps"], by_evals["teacher"]["fid"]) == (25, 19.0)
    assert (by_evals["teacher 4"]["steps"], by_evals["teacher 4"]["fid"]) == (2, 120.0)
    assert by_evals["student"]["fid"] == 24.0


def test_the_figure_shows_each_familys_best_student_at_each_step_count():
    rows = [*ROWS, point("adversarial student", 1, 14.0, "ddim"), point("adversarial student", 1, 13.0, "ddim", 0.9)]
    assert best_student(rows, "adversarial student", 1)["fid"] == 14.0  # 13.0 misses the class-accuracy goal
    assert best_student(rows, "adversarial student", 4)["fid"] == 12.0
    assert best_student(rows, "student", 2) is None


def test_fewest_steps_to_an_fid_per_family():
    assert fewest_steps(ROWS, "student", 25.0)["steps"] == 4
    assert fewest_steps(ROWS, "student", 21.0)["steps"] == 8
    assert fewest_steps(ROWS, "teacher", 25.0)["steps"] == 25  # 8 steps give 30: not reached there
    assert fewest_steps(ROWS, "teacher", 18.5)["steps"] == 50
    assert fewest_steps(ROWS, "teacher, tuned levels", 25.0)["steps"] == 8
    assert fewest_steps(ROWS, "student", 10.0) is None
    assert fewest_steps(ROWS, "consistency student", 40.0)["steps"] == 1


def test_students_come_with_their_rounds_most_steps_first(tmp_path):
    run = tmp_path / "student-4"
    for n in (8, 32, 16):
        (run / "rounds" / f"{n}-steps").mkdir(parents=True)
    assert [p.name for p in student_runs([str(run)])] == ["32-steps", "16-steps", "8-steps", "student-4"]
    # a student is identified by its run alone: its method and steps are read from it
    assert key({"family": "student", "run": "x", "method": None, "steps": None}) == \
        key({"family": "student", "run": "x", "method": "ddim", "steps": 4})
    assert key({"family": "adversarial student", "run": "x", "method": None, "steps": None}) == \
        key({"family": "adversarial student", "run": "x", "method": "ddim", "steps": 4})


def test_the_guidance_plot_draws_one_curve_per_model_in_order_of_w(tmp_path):
    from distillation_guidance_plot import curves, main

    for w, fid in ((3.0, 16.0), (1.0, 20.0), (2.0, 15.0)):
        folder = tmp_path / f"w{w:g}"
        folder.mkdir()
        rows = [{**point("adversarial student", 4, fid, "ddim"), "guidance_scale": w},
                {**point("teacher", 50, fid - 1), "guidance_scale": w}]
        (folder / "points.json").write_text(json.dumps(rows))
    grouped = curves(sorted(tmp_path.glob("w*")))
    assert len(grouped) == 2
    student = grouped[("adversarial student", "r", "ddim", 4)]
    assert [r["guidance_scale"] for r in student] == [1.0, 2.0, 3.0] and [r["fid"] for r in student] == [20, 15, 16]
    assert main([str(p) for p in tmp_path.glob("w*")] + ["--out", str(tmp_path / "plot.png")]) == 0
    assert (tmp_path / "plot.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="give distillation_quality.py output folders"):
        main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")])


def test_the_posthoc_ema_plot_finds_the_runs_made_from_one_source_by_width(tmp_path):
    from posthoc_ema_plot import main, sweep

    source, rows = tmp_path / "adv", []
    for sigma_rel, fid in ((0.15, 14.0), (0.05, 15.0), (0.10, 13.5)):
        run = tmp_path / f"sigma-{sigma_rel:.3f}"
        (run / "checkpoint").mkdir(parents=True)
        (run / "checkpoint" / "config.json").write_text(json.dumps({"posthoc_ema": {"sigma_rel": sigma_rel,
                                                                                   "source": str(source)}}))
        rows.append({**point("adversarial student", 4, fid, "ddim"), "run": str(run), "guidance_scale": 2.0})
    rows.append({**point("adversarial student", 4, 14.5, "ddim"), "run": str(source), "guidance_scale": 2.0})
    rows.append({**point("teacher", 4, 27.0), "run": str(tmp_path / "teacher"), "guidance_scale": 2.0})
    (tmp_path / "points.json").write_text(json.dumps(rows))
    made, own = sweep(tmp_path, str(source))
    assert [s for s, _ in made] == [0.05, 0.10, 0.15] and [r["fid"] for _, r in made] == [15.0, 13.5, 14.0]
    assert own["fid"] == 14.5
    assert main([str(tmp_path), "--source", str(source), "--out", str(tmp_path / "plot.png")]) == 0
    assert (tmp_path / "plot.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no run made by"):
        main([str(tmp_path), "--source", str(tmp_path / "other"), "--out", str(tmp_path / "x.png")])


def test_a_guidance_interval_point_is_a_teacher_point_that_evaluates_twice_only_inside_it():
    from types import SimpleNamespace

    from difflab import schedules
    from difflab.pipelines import Guidance
    from difflab.pipelines.generate import SamplerSettings
    from difflab.sampling.spacing import get_sigmas

    record = SimpleNamespace(distilled=None, takes_guidance_scale=False, conditional=True,
                             trained_with_label_dropout=True, sample_defaults={})
    teacher = SimpleNamespace(record=record, schedule=schedules.cosine())
    settings = SamplerSettings(method="unipc_3", steps=4, spacing="trailing", sigmas=None, options={})
    levels = get_sigmas(teacher.schedule, 4, "trailing")  # σ_max (~2e4), then 2.4, 1.0, 0.42, 0
    assert levels[0] > 1e3 and 1 < levels[1] < 10
    assert network_evals(teacher, settings, Guidance(scale=2.0)) == 8
    assert network_evals(teacher, settings, Guidance(scale=2.0, interval=(0.0, 10.0))) == 7  # first step unguided
    assert network_evals(teacher, settings, Guidance(scale=2.0, interval=(0.5, 10.0))) == 6
    assert network_evals(teacher, settings, Guidance(scale=2.0, interval=(0.0, 1e9))) == 8
    assert network_evals(teacher, settings, Guidance(scale=1.0, interval=(0.0, 10.0))) == 4
    student = SimpleNamespace(record=SimpleNamespace(**{**vars(record), "distilled": {"steps": 4}}),
                              schedule=teacher.schedule)
    assert network_evals(student, settings, Guidance(scale=2.0)) == 4  # w is the student's input

    args = parse_args(["--teacher", "t", "--eval-classifier", "c", "--teacher-points", "unipc_3:4",
                       "--guidance-interval", "0", "10", "--tuned"])
    todo = points(args)
    assert [p["family"] for p in todo] == ["teacher", "teacher, guidance interval"]
    assert key(todo[0]) != key(todo[1]) and todo[1]["interval"] == [0.0, 10.0]
    # the acceptance's "teacher's best 4-call FID" counts it: any teacher family at 4 steps
    assert best_points([*ROWS, {**point("teacher, guidance interval", 4, 50.0), "interval": [0.0, 10.0]}]
                       )["teacher 4"]["fid"] == 50.0
    assert best_points([*ROWS, {**point("teacher, guidance interval", 50, 17.0), "interval": [0.0, 10.0]}]
                       )["teacher"]["fid"] == 17.0  # and its best 50-call FID (18.0 without it)
    only = points(parse_args(["--teacher", "t", "--eval-classifier", "c", "--teacher-points", "unipc_3:50",
                              "--guidance-interval", "0", "10", "--interval-only", "--tuned"]))
    assert [p["family"] for p in only] == ["teacher, guidance interval"]
    with pytest.raises(SystemExit, match="give --guidance-interval SIGMA_LO SIGMA_HI too"):
        points(parse_args(["--teacher", "t", "--eval-classifier", "c", "--interval-only", "--tuned"]))


def test_the_acceptance_can_be_read_off_fid_infinity():
    """With --fid-infinity every comparison is made again on FID∞, each point the best by it."""
    rows = [{**r, "fid_infinity": r["fid"] / 2} for r in ROWS]
    rows.append({**point("teacher", 4, 95.0), "fid_infinity": 30.0})  # worse FID, better FID∞
    assert best_points(rows)["teacher 4"]["fid"] == 60.0
    best = best_points(rows, metric="fid_infinity")
    assert best["teacher 4"]["fid_infinity"] == 30.0 and best["teacher"]["fid_infinity"] == 9.0
    assert best["adversarial student"]["fid_infinity"] == 6.0


def test_the_fid_infinity_plot_draws_a_line_per_point_and_the_real_floor(tmp_path):
    from fid_infinity_plot import lines, main

    sizes = [2000, 4000, 6000, 8000, 10000]
    rows = [{**point("teacher", 4, 22.0), "n": 10000, "fid_infinity": 14.0, "fid_infinity_sizes": sizes,
             "fid_infinity_fids": [14.0 + 16000 / n for n in sizes]},
            {**point("adversarial student", 4, 8.0, "ddim"), "n": 10000, "fid_infinity": 5.0,
             "fid_infinity_sizes": sizes, "fid_infinity_fids": [5.0 + 30000 / n for n in sizes]},
            point("teacher", 50, 9.0)]  # scored without --fid-infinity: no line
    (tmp_path / "points.json").write_text(json.dumps(rows))
    real = [{"n": 2000, "fid": 9.5, "fid_infinity": 1.0, "fid_infinity_sizes": sizes[:2],
             "fid_infinity_fids": [9.0, 5.0]}]
    (tmp_path / "real.json").write_text(json.dumps(real))
    assert [r["fid_infinity"] for r in lines(rows + real)] == [5.0, 14.0, 1.0]
    assert main([str(tmp_path), "--real", str(tmp_path / "real.json"), "--out", str(tmp_path / "plot.png")]) == 0
    assert (tmp_path / "plot.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="give distillation_quality.py output folders"):
        main([str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="give fid_floor.py's --out file"):
        main([str(tmp_path), "--real", str(tmp_path / "missing.json")])
