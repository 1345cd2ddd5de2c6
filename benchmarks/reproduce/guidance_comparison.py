"""Classifier-free vs classifier guidance at equal class accuracy, and the guidance interval.

**Claims.** (1) Classifier-free guidance (Ho & Salimans 2022) reaches a fidelity/diversity
trade-off at least as good as ADM's classifier guidance (Dhariwal & Nichol 2021, §4): at equal
class accuracy its FID is no higher and its recall no lower. (2) Guidance limited to the middle
noise levels (Kynkäänniemi et al. 2024) keeps diversity: at equal class accuracy its recall is no
lower and its FID no higher than guidance over the whole chain, and one of them is better.

**What runs.** From a fresh checkout, downloading nothing (Fashion-MNIST 16×16 and the Inception
weights come from installed packages): the class-conditional model of
``configs/fashion-mnist-16-cpu.yaml`` (label dropout 0.1) and ADM's noisy classifier of
``configs/fashion-mnist-16-classifier.yaml`` are trained by steps into ``OUT/runs``; the
independent classifier that measures class accuracy (``difflab train-classifier --dataset
fashion-mnist --resolution 16 --epochs 6``, trained on real images) too, unless
``--eval-classifier`` names one. Then three sweeps, each point ``--samples`` images (every class
in turn, the same seeds at every point, so points differ by their guidance alone), UniPC-3 with
20 steps (the config's sampler), scored by FID / precision / recall (k = 3) in Inception features
against the first ``--reference`` test images and by class accuracy:

* **classifier-free guidance** (CFG) at weights w (``Guidance(scale=w)``; w = 1 is no guidance;
  Ho & Salimans write w − 1);
* **classifier guidance** at gradient scales s, of the *same network's null-label branch*:
  ``Guidance(scale=0, classifier=..., classifier_scale=s)``. CFG at w = 0 is exactly the
  unconditional prediction ε(x, ∅), and :func:`difflab.guidance.guide` applies the classifier
  gradient after CFG, so this is ADM's unconditional model + classifier (tests/test_guidance.py
  pins it). We use it rather than a separately trained unconditional model because then both
  kinds of guidance share one set of weights, one training run and one unconditional
  distribution: the comparison measures the guidance, not two trainings. (The null branch saw
  10% of the batches; ADM's unconditional model was trained on all of them, which favours ADM.
  The s = 0 row shows what this branch is worth alone.)
* **CFG in a guidance interval**: w applied only where σ_lo < σ ≤ σ_hi, the conditional model
  elsewhere (``Guidance(scale=w, interval=(σ_lo, σ_hi))``). The paper's code guides EDM2-XXL on
  steps 17–22 of its 32-step EDM schedule (σ_max = 80, ρ = 7), σ = 1.61 down to 0.28, in EDM2's
  latent space whose data standard deviation is σ_data = 0.5. σ is only meaningful relative to
  the data's scale (σ_data/σ is the signal-to-noise ratio), so we keep the paper's σ/σ_data:
  (0.28, 1.61] × σ_data/0.5 with σ_data the standard deviation of our training images in
  [-1, 1] (0.64): σ ∈ (0.36, 2.07], which guides the middle 10 of the sampler's 20 steps and
  leaves the first 6 (σ = 2e4 … 2.4) and the last 4 unguided. We do not shift it for resolution
  (their 64×64×4 latents, our 16×16×1 pixels; a Hoogeboom et al. 2023-style shift would divide
  it by 4 and leave only 4 steps guided); ``--interval LO HI`` tries another.

FID / precision / recall are interpolated linearly in class accuracy between the two
neighbouring scales that bracket each target accuracy (``--targets``, default 0.90 and 0.95;
the independent classifier's own accuracy on real test images is about 0.92). The verdicts
compare those interpolated values with tolerances ``--fid-tol`` and ``--recall-tol`` (a rough
size of the sampling noise of 500-image points). None of the papers measures class accuracy, so ours
is a stricter like-for-like than their equal-scale or best-FID comparisons.

Results: ``OUT/results.md`` / ``results.json`` (matched-accuracy table, every point, verdicts),
``OUT/plot.png`` (FID, recall and precision against class accuracy), one grid of
samples per point under ``OUT/grids/``. Points already scored with the same settings are read
back from ``OUT/points.json``, so an interrupted run resumes. About 35 minutes on 2 quiet CPU
cores (training ~10, 16 points of ~70 s, the reference features ~4 the first time):

    python benchmarks/reproduce/guidance_comparison.py --out runs/reproduce/guidance_comparison
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

COMMAND = "python benchmarks/reproduce/guidance_comparison.py"
DATASET, RESOLUTION = "fashion-mnist", 16
LABELS = {"cfg": "classifier-free", "classifier": "classifier (null label)", "interval": "classifier-free, interval"}
MARKERS = {"cfg": "o", "classifier": "s", "interval": "^"}
METRICS = ("fid", "precision", "recall")

# Kynkäänniemi et al.'s code (kynkaat/guidance-interval): EDM2-XXL guided on steps 17-22 of the
# 32-step EDM schedule, sigma 1.61 down to 0.28, in latents of standard deviation 0.5.
PAPER_INTERVAL, PAPER_SIGMA_DATA = (0.28, 1.61), 0.5

CLAIM = ("(1) At equal class accuracy classifier-free guidance has FID no higher and recall no lower than "
         "classifier guidance (Ho & Salimans 2022 vs Dhariwal & Nichol 2021). (2) Limiting CFG to the middle "
         "noise levels (Kynkäänniemi et al. 2024) keeps recall and FID at equal class accuracy and improves one.")
PAPER = ("ADM (Dhariwal & Nichol 2021, Table 4, ImageNet 256): classifier guidance of an unconditional model at "
         "s = 10 took FID 26.21 → 12.00, precision 0.61 → 0.76, recall 0.63 → 0.44 (conditional model + s = 1: "
         "FID 4.59, recall 0.52). Ho & Salimans 2022 (ImageNet 64/128): CFG gives 'a trade-off between sample "
         "quality and diversity similar to that obtained using classifier guidance'; best ImageNet-128 FID 2.43 "
         "(their w = 0.3, our 1.3) against ADM-G's 2.97. Kynkäänniemi et al. 2024 (ImageNet-512, EDM2): guidance is "
         "'clearly harmful toward the beginning of the chain (high noise levels)' and 'only beneficial in the "
         "middle'; the interval takes EDM2-XXL's FID from 1.81 to 1.40 (EDM2-S: 1.68), w = 2.0 on "
         "σ ∈ [0.28, 1.61]. None of them reports class accuracy.")


def parse_args(argv=None):
    p = common.parser(__doc__, out="runs/reproduce/guidance_comparison")
    p.add_argument("--train-steps", type=int, default=3000, help="steps of the class-conditional model (batch 64)")
    p.add_argument("--classifier-steps", type=int, default=2000, help="steps of the noisy classifier (batch 128)")
    p.add_argument("--eval-classifier", type=Path,
                   help="independent classifier of real images to reuse (default: train one into OUT/runs)")
    p.add_argument("--eval-epochs", type=int, default=6, help="epochs of the independent classifier")
    p.add_argument("--sampler-steps", type=int, default=20, help="UniPC-3 steps per sample")
    p.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 1.25, 1.5, 2.0, 3.0],
                   help="classifier-free weights w (1 = no guidance)")
    p.add_argument("--classifier-scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0, 8.0, 16.0],
                   help="classifier-guidance scales s of the null-label branch (0 = the unconditional branch)")
    p.add_argument("--interval-scales", type=float, nargs="+", default=[1.5, 2.0, 3.0, 5.0, 8.0],
                   help="weights w of CFG in the interval (w = 1 is the CFG row's)")
    p.add_argument("--interval", type=float, nargs=2, metavar=("LO", "HI"),
                   help="the guidance interval (default: the paper's, scaled to our data's standard deviation)")
    p.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.95], help="class accuracies compared at")
    p.add_argument("--fid-tol", type=float, default=1.0, help="FID differences within this count as equal")
    p.add_argument("--recall-tol", type=float, default=0.02, help="recall differences within this count as equal")
    args = p.parse_args(argv)
    common.smoke_sizes(args, sampler_steps=3, cfg_scales=[1.0], classifier_scales=[4.0], interval_scales=[3.0])
    return args


def train_eval_classifier(args) -> Path:
    """The independent real-image classifier behind class accuracy: ``--eval-classifier``, or the
    one `difflab train-classifier --dataset fashion-mnist --resolution 16` trains, into OUT/runs."""
    if args.eval_classifier:
        return args.eval_classifier
    from difflab.data import load_dataset
    from difflab.metrics import train_classifier

    out = args.out / "runs" / "eval-classifier"
    if (out / "config.json").is_file() and not args.fresh:
        print(f"[eval-classifier] reusing {out} (--fresh retrains)")
        return out
    train, test = training_set(), load_dataset(DATASET, "test", resolution=RESOLUTION)
    epochs = args.eval_epochs
    if args.smoke:
        train, test, epochs = train.subset(slice(0, 256)), test.subset(slice(0, 64)), 1
    classifier, accuracy = train_classifier(train, test, epochs=epochs, seed=args.seed)
    print(f"[eval-classifier] {accuracy:.4f} on {len(test)} real test images")
    return classifier.save(out)


@functools.cache
def training_set():
    from difflab.data import load_dataset

    return load_dataset(DATASET, "train", resolution=RESOLUTION)


def default_interval() -> tuple[float, float]:
    """The paper's interval at the same σ/σ_data (signal-to-noise ratio) on our data, σ_data being
    the standard deviation of the training images in [-1, 1]."""
    from difflab.data.convert import to_float

    ratio = to_float(training_set().images).std().item() / PAPER_SIGMA_DATA
    return PAPER_INTERVAL[0] * ratio, PAPER_INTERVAL[1] * ratio


def guidance_for(kind: str, scale: float, noisy, interval):
    from difflab.pipelines import Guidance

    if kind == "classifier":  # the null-label branch (CFG at w = 0) steered by the noisy classifier
        return Guidance(scale=0.0, classifier=noisy, classifier_scale=scale)
    return Guidance(scale=scale, interval=interval if kind == "interval" else None)


def sweep(args, model, noisy, scorer, interval, settings: dict) -> list[dict]:
    """Every requested (kind, scale) point scored, reading back those OUT/points.json holds for
    ``settings``."""
    from difflab.images import save_grid
    from difflab.pipelines import generate

    cache = common.ScoredPoints(args, settings)
    todo = [("cfg", w) for w in args.cfg_scales] + [("classifier", s) for s in args.classifier_scales]
    todo += [("interval", w) for w in args.interval_scales if w != 1.0]  # w = 1 guides nothing: the CFG row
    points = []
    for kind, scale in todo:
        key = f"{kind} {scale:g}"
        if (row := cache.get(key)) is None:
            start = time.perf_counter()
            images, labels = generate(model, args.samples, steps=args.sampler_steps, seed=args.seed, batch_size=250,
                                      guidance=guidance_for(kind, scale, noisy, interval))
            sample_s = time.perf_counter() - start
            save_grid(images[:100], args.out / "grids" / f"{kind}-{scale:g}.png", nrow=10, upscale=2)
            row = {"guidance": kind, "scale": scale, **scorer.score(images, labels, name=key),
                   "sample_s": sample_s, "score_s": time.perf_counter() - start - sample_s}
            print(json.dumps(row))
            cache.put(key, row)
        points.append(row)
    return points


def curves(points: list[dict]) -> dict[str, list[dict]]:
    """Each kind's points by increasing scale; the interval's starts at CFG's w = 1 (no guidance)."""
    out = {kind: sorted((p for p in points if p["guidance"] == kind), key=lambda p: p["scale"]) for kind in LABELS}
    unguided = [p for p in out["cfg"] if p["scale"] == 1.0]
    out["interval"] = sorted(unguided + out["interval"], key=lambda p: p["scale"])
    return out


def at_accuracy(curve: list[dict], target: float) -> dict | None:
    """Scale and metrics at class accuracy ``target``, linear in accuracy between the first two
    neighbouring scales whose accuracies bracket it; None where the curve never reaches it."""
    for a, b in zip(curve, curve[1:]):
        low, high = a["class_accuracy"], b["class_accuracy"]
        if min(low, high) <= target <= max(low, high):
            f = 0.0 if high == low else (target - low) / (high - low)
            return {m: a[m] + f * (b[m] - a[m]) for m in ("scale", *METRICS)}
    return None


def contrast(ours: dict, theirs: dict, fid_tol: float, recall_tol: float) -> dict[str, str]:
    """better / similar / worse for FID (lower is better) and recall (higher is better)."""

    def judge(gain: float, tol: float) -> str:
        return "better" if gain > tol else "worse" if gain < -tol else "similar"

    return {"fid": judge(theirs["fid"] - ours["fid"], fid_tol),
            "recall": judge(ours["recall"] - theirs["recall"], recall_tol)}


def verdict(matched: dict, ours: str, theirs: str, targets, args, *, needs_gain: bool) -> str:
    """reproduced / partly reproduced / not reproduced, from ``ours`` against ``theirs`` at each
    target accuracy both reach: not worse on FID and recall everywhere (and, with ``needs_gain``,
    better on one somewhere) is reproduced; worse on both everywhere, or no target reached by
    both, is not."""
    notes, outcomes = [], []
    for target in targets:
        a, b = matched[ours].get(target), matched[theirs].get(target)
        if a is None or b is None:
            missing = " and ".join(LABELS[k] for k, m in ((ours, a), (theirs, b)) if m is None)
            notes.append(f"accuracy {target:g} not reached by {missing}")
            continue
        c = contrast(a, b, args.fid_tol, args.recall_tol)
        outcomes += list(c.values())
        notes.append(f"accuracy {target:g}: FID {a['fid']:.1f} vs {b['fid']:.1f} ({c['fid']}), "
                     f"recall {a['recall']:.3f} vs {b['recall']:.3f} ({c['recall']})")
    detail = f"{LABELS[ours]} vs {LABELS[theirs]}: " + "; ".join(notes)
    if not outcomes:
        return f"not reproduced (not measured: no target accuracy reached by both) — {detail}"
    not_worse = sum(o != "worse" for o in outcomes)
    if not_worse == len(outcomes) and (not needs_gain or "better" in outcomes):
        word = "reproduced"
    elif not_worse == 0:
        word = "not reproduced"
    else:
        word = "partly reproduced" + (" (no worse, but no gain beyond the tolerances)"
                                      if not_worse == len(outcomes) else "")
    return f"{word} — {detail}"


def plot(curve_of: dict[str, list[dict]], targets, args) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    titles = {"fid": "FID (lower is better)", "recall": "recall (diversity)", "precision": "precision (fidelity)"}
    for kind, curve in curve_of.items():
        if not curve:
            continue
        accuracy = [p["class_accuracy"] for p in curve]
        for ax, metric in zip(axes, titles):
            ax.plot(accuracy, [p[metric] for p in curve], marker=MARKERS[kind], label=LABELS[kind])
            for p in curve:
                ax.annotate(f"{p['scale']:g}", (p["class_accuracy"], p[metric]), fontsize=6,
                            textcoords="offset points", xytext=(3, 3))
    for ax, title in zip(axes, titles.values()):
        for target in targets:
            ax.axvline(target, color="gray", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("class accuracy (independent classifier)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    common.save_plot(fig, args)


def main(argv=None) -> int:
    args = parse_args(argv)
    from difflab.metrics import load_classifier
    from difflab.pipelines import DiffusionModel, NoisyClassifierModel

    shrink = common.SMOKE_UNET if args.smoke else []
    cfg_run = common.train_run(args, "cfg", "fashion-mnist-16-cpu.yaml", shrink, steps=args.train_steps)
    noisy_run = common.train_run(args, "noisy-classifier", "fashion-mnist-16-classifier.yaml", shrink,
                          steps=args.classifier_steps)
    eval_path = train_eval_classifier(args)
    model = DiffusionModel.load(cfg_run)
    noisy = NoisyClassifierModel.load(noisy_run)
    interval = tuple(args.interval) if args.interval else default_interval()
    scorer = common.Scorer(args, DATASET, RESOLUTION, 1, classifier=str(eval_path))
    if scorer.classifier is None:  # common.Scorer skips it in --smoke; ours is tiny, and the accuracy path is the point
        scorer.classifier = load_classifier(eval_path)
    settings = {"samples": args.samples, "reference": args.reference, "sampler_steps": args.sampler_steps,
                "seed": args.seed, "interval": list(interval), "eval_classifier": str(eval_path),
                "runs": {name: common.run_facts(args, name)["steps"] for name in ("cfg", "noisy-classifier")}}
    points = sweep(args, model, noisy, scorer, interval, settings)

    curve_of = curves(points)
    matched = {kind: {t: at_accuracy(curve, t) for t in args.targets} for kind, curve in curve_of.items()}
    # the matched comparison first (interpolated at each target accuracy), then every measured point
    rows = [{"row": "interpolated", "guidance": LABELS[kind], "class_accuracy": t, **m} for t in args.targets
            for kind in LABELS if (m := matched[kind][t]) is not None]
    rows += [{"row": "measured", **p, "guidance": LABELS[p["guidance"]]} for p in points]
    verdicts = {"cfg_vs_classifier": verdict(matched, "cfg", "classifier", args.targets, args, needs_gain=False),
                "interval_vs_full": verdict(matched, "interval", "cfg", args.targets, args, needs_gain=True)}
    eval_accuracy = load_classifier(eval_path).config.get("test_accuracy")
    verdict_text = (f"(1) {verdicts['cfg_vs_classifier']}. (2) {verdicts['interval_vs_full']}. "
                    f"Interval σ ∈ ({interval[0]:.3g}, {interval[1]:.3g}]; tolerances FID ±{args.fid_tol:g}, "
                    f"recall ±{args.recall_tol:g}; {args.samples} samples a point (scale: w, or s for classifier "
                    "guidance); the independent classifier's accuracy on real test images: "
                    + (f"{eval_accuracy:.3f}." if eval_accuracy is not None else "not recorded."))
    common.write_results(args, rows, ["row", "guidance", "scale", "class_accuracy", *METRICS, "kid"], claim=CLAIM,
                         paper=PAPER, verdict=verdict_text, command=COMMAND,
                         extra={"points": points, "matched": {LABELS[k]: v for k, v in matched.items()},
                                "verdicts": verdicts, "interval": list(interval),
                                "eval_classifier_accuracy": eval_accuracy, "settings": settings,
                                "runs": {name: common.run_facts(args, name) for name in ("cfg", "noisy-classifier")}})
    plot(curve_of, args.targets, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
