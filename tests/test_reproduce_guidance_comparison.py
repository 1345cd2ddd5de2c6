"""benchmarks/reproduce/guidance_comparison.py: metrics matched at equal class accuracy, verdicts
computed from them, and the script end to end in --smoke (then resumed without sampling again)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks" / "reproduce"))
import guidance_comparison as gc  # noqa: E402


def point(kind, scale, accuracy, fid, recall, precision=0.7):
    return {"guidance": kind, "scale": scale, "class_accuracy": accuracy, "fid": fid, "recall": recall,
            "precision": precision}


def test_metrics_are_interpolated_in_accuracy_between_the_first_bracketing_scales():
    curve = [point("cfg", 1.0, 0.80, 30.0, 0.70), point("cfg", 2.0, 1.00, 40.0, 0.50),
             point("cfg", 3.0, 0.90, 50.0, 0.40)]  # not monotonic: the first crossing counts
    at = gc.at_accuracy(curve, 0.95)
    assert at["scale"] == pytest.approx(1.75) and at["fid"] == pytest.approx(37.5)
    assert at["recall"] == pytest.approx(0.55)
    assert gc.at_accuracy(curve, 0.79) is None
    assert gc.at_accuracy(curve, 0.80)["fid"] == 30.0


def test_the_interval_curve_starts_at_the_unguided_cfg_point():
    points = [point("cfg", 2.0, 0.95, 32, 0.6), point("cfg", 1.0, 0.84, 31, 0.7),
              point("interval", 3.0, 0.93, 30, 0.7)]
    curves = gc.curves(points)
    assert [p["scale"] for p in curves["cfg"]] == [1.0, 2.0]
    assert [(p["guidance"], p["scale"]) for p in curves["interval"]] == [("cfg", 1.0), ("interval", 3.0)]
    assert curves["classifier"] == []


def verdict(ours, theirs, needs_gain=False, targets=(0.9, 0.95)):
    args = type("Args", (), {"fid_tol": 1.0, "recall_tol": 0.02})()
    matched = {"cfg": dict(zip(targets, ours)), "classifier": dict(zip(targets, theirs))}
    return gc.verdict(matched, "cfg", "classifier", targets, args, needs_gain=needs_gain)


def m(fid, recall):
    return {"fid": fid, "recall": recall}


def test_verdicts_follow_the_numbers_and_the_tolerances():
    assert verdict([m(30, 0.70), m(32, 0.65)], [m(30.5, 0.69), m(35, 0.60)]).startswith("reproduced")
    assert verdict([m(36, 0.60), m(38, 0.55)], [m(30, 0.70), m(32, 0.65)]).startswith("not reproduced")
    assert verdict([m(36, 0.70), m(32, 0.65)], [m(30, 0.70), m(32, 0.65)]).startswith("partly reproduced —")
    # within the tolerances everywhere: enough for "similar", not for a claimed gain
    assert verdict([m(30.5, 0.70)] * 2, [m(30, 0.71)] * 2).startswith("reproduced")
    assert verdict([m(30.5, 0.70)] * 2, [m(30, 0.71)] * 2, needs_gain=True).startswith("partly reproduced (no worse")
    unreached = verdict([m(30, 0.7), None], [m(31, 0.7), m(33, 0.6)])
    assert unreached.startswith("reproduced") and "accuracy 0.95 not reached by classifier-free" in unreached
    assert verdict([None, None], [m(31, 0.7), m(33, 0.6)]).startswith("not reproduced (not measured")


@pytest.mark.usefixtures("one_thread")  # tiny networks; a busy machine slows OpenMP teams badly
def test_smoke_run_writes_every_result_and_a_rerun_only_reads_them(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert gc.main(["--smoke", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["smoke"] and results["verdicts"].keys() == {"cfg_vs_classifier", "interval_vs_full"}
    assert {p["guidance"] for p in results["points"]} == {"cfg", "classifier", "interval"}
    assert all("class_accuracy" in p and "fid" in p and "recall" in p for p in results["points"])
    low, high = results["interval"]
    assert 0.3 < low < high < 2.5  # the paper's (0.28, 1.61] at Fashion-MNIST's data scale
    assert [r["row"] for r in results["rows"]].count("measured") == 3
    assert (out / "plot.png").is_file() and len(list((out / "grids").glob("*.png"))) == 3

    import difflab.pipelines

    def no_sampling(*args, **kwargs):
        raise AssertionError("a rerun with the same settings must reuse the scored points")

    monkeypatch.setattr(difflab.pipelines, "generate", no_sampling)
    assert gc.main(["--smoke", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["points"] == results["points"]
