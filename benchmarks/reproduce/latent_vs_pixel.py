"""Latent vs pixel diffusion at equal training time (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", §4.1, Fig. 6–7; Tab. 6).

The claim: a diffusion model trained in the latent space of a mildly compressing autoencoder
(f = 4–8, "LDM-4/8") reaches a given sample quality in much less training compute than the same
kind of model in pixel space ("LDM-1"), and samples faster even with the decoder's pass; the
autoencoder is trained once and amortised over every diffusion model trained in its latents.

At CPU scale, unconditional, on the emoji training split at 64×64 RGB (1,223 images):

1. **Autoencoder.** LDM's KL autoencoder with f = 4 (``configs/autoencoder-kl-emoji64-cpu.yaml``:
   kl-f4 at base width 32, latent 3×16×16) trained ``--ae-steps`` steps on whole images, batch 8
   (the pixels of the config's 32 random 32×32 crops a step, without the crop phase's gap on
   whole images, docs/autoencoders.md), lr 10⁻³ decayed on a cosine. Its held-out PSNR (emoji
   test) and its training time are reported apart: LDM trains it once for many diffusion models.
2. **Two diffusion U-Nets, one recipe** (``configs/emoji-latent-text-64-cpu.yaml`` without text:
   v-prediction, min-SNR weighting, cosine schedule, batch 32, lr 4·10⁻⁴ after 50 warm-up steps,
   EMA 0.999, bf16 autocast where the CPU has native bf16), about the same parameter count (~5M),
   as LDM §4.1 fixes parameters: *latent* — widths 64-128-128 at 16², 8², 4²; *pixel* — the same
   trunk behind two more levels at 64² and 32² (widths 32-64-64-128-128); one residual block per
   level and self-attention at 8×8 and 4×4 in both. Each side trains the same wall-clock budget
   ``--seconds`` in ``--stages`` equal stages; a stage resumes the previous one (weights,
   optimizer, step), so the stages are one run checkpointed along the way.
3. **Each checkpoint**: ``--samples`` images from the same seeds with the same sampler (UniPC-3,
   ``--sample-steps`` steps, trailing spacing; the latent side's include decoding), scored with
   FID / KID / precision / recall (Inception-v3) against the emoji test split at 64×64 RGB (its
   134 images are the whole reference: FID's small-sample bias is large, so compare the two
   sides, not these FIDs with the paper's; KID's estimate is unbiased at any sample size).

Reported: training images/s and sampling images/s of each side, FID at equal training time,
the training time each side needs to reach the best FID the pixel model reached (interpolated
between checkpoints), with and without the autoencoder's training time. The verdict is computed
from these numbers.

    python benchmarks/reproduce/latent_vs_pixel.py --out runs/reproduce/latent_vs_pixel   # ~55 min on 2 cores
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SIDES = ("pixel", "latent")
AE_CONFIG = "autoencoder-kl-emoji64-cpu.yaml"
DIFFUSION_CONFIG = "emoji-latent-text-64-cpu.yaml"

# LDM Tab. 6 (inpainting on Places at 256², the same parameter count for both, one A100):
# LDM-1 (pixels) against LDM-4 (KL, with attention).
PAPER_TAB6 = {"pixel": {"train images/s": 0.11, "sampling images/s": 0.26, "FID": 24.74},
              "latent": {"train images/s": 0.32, "sampling images/s": 0.97, "FID": 15.21}}
PAPER = ("LDM §4.1, Fig. 6 (class-conditional ImageNet, every f trained on one A100 for the same steps with the "
         "same parameter count, 100 DDIM steps): pixel-based LDM-1 trains far slower than LDM-{4–16}, an FID gap of "
         "38 between LDM-1 and LDM-8 after 2M steps. Fig. 7 (CelebA-HQ 500k / ImageNet 2M steps, DDIM 10–200 "
         "steps, FID on 5k samples): LDM-{4–8} reach much lower FID than LDM-1 at much higher sampling throughput. "
         "Tab. 6 (inpainting, same parameter count), LDM-1 vs LDM-4 (KL): training 0.11 vs 0.32 images/s, sampling "
         "0.26 vs 0.97 images/s at 256², FID@2k after 6 epochs 24.74 vs 15.21 (≥ 2.7× faster, ≥ 1.6× lower FID). "
         "The autoencoder's training is not counted there: it is trained once and reused.")


def parse_args(argv=None):
    p = common.parser(__doc__, out="runs/reproduce/latent_vs_pixel", samples=300)
    p.add_argument("--ae-steps", type=int, default=1500, help="autoencoder training steps (batch 8 of 64x64 images)")
    p.add_argument("--seconds", type=float, default=840.0,
                   help="wall-clock training budget of each diffusion model (both sides the same)")
    p.add_argument("--stages", type=int, default=3,
                   help="checkpoints along each budget (at 1/k, 2/k, ... of it), each one scored")
    p.add_argument("--sample-steps", type=int, default=20, help="UniPC-3 steps of every sample (both sides)")
    args = p.parse_args(argv)
    common.smoke_sizes(args, ae_steps=3, sample_steps=2, stages=2)
    if args.stages < 1:
        p.error("--stages must be at least 1")
    return args


def bf16_setting() -> str:
    """bf16 autocast in training on both sides where the CPU runs it natively (~1.3x), else neither."""
    from difflab.device import cpu_has_native_bf16

    return f"train.bf16_cpu={str(cpu_has_native_bf16()).lower()}"


def autoencoder_overrides(args) -> list[str]:
    """Whole 64x64 images, batch 8, cosine decay over --ae-steps; tiny in --smoke."""
    settings = ["data.random_crop=null", "optim.batch_size=8", "optim.lr_schedule=cosine", "train.ema_decay=0.999"]
    if args.smoke:  # the autoencoder's own tiny network (common.SMOKE_UNET is a U-Net's)
        settings += ["model.options.model_channels=8", "model.options.norm_groups=4",
                     "autoencoder.scale_images=16", "autoencoder.eval_images=8"]
    return settings


def diffusion_overrides(args, side: str, autoencoder: Path) -> list[str]:
    """One recipe for both sides; only the data (pixels or latents) and the U-Net's outer levels differ."""
    settings = ["data.text_conditional=false", "diffusion.cond_drop_prob=0", "sample.guidance_scale=1.0",
                "optim.batch_size=32", "optim.warmup_steps=50", "optim.lr_schedule=constant", bf16_setting(),
                "model.options.num_res_blocks=1", "model.options.attention_resolutions=[8,4]",
                "model.options.num_head_channels=32"]
    if side == "latent":
        settings += [f"data.autoencoder={autoencoder}", "model.options.model_channels=64",
                     "model.options.channel_mult=[1,2,2]"]
    else:
        settings += ["data.autoencoder=null", "model.options.model_channels=32",
                     "model.options.channel_mult=[1,2,2,4,4]"]
    if args.smoke:  # encoding the 1,223 images for the latent cache would be most of a smoke run
        settings += [*common.SMOKE_UNET, "data.latent_cache=false"]
    return settings


def loop_seconds(args, name: str) -> float:
    """Seconds the training loop of a run took, from its logged windows (steps × batch / images/s):
    without data loading, latent caching and checkpoint writing."""
    facts = common.run_facts(args, name)
    rows = [json.loads(line) for line in (args.out / "runs" / name / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    previous, seconds = facts.get("first_step", 0), 0.0
    for row in rows:
        seconds += (row["step"] - previous) * facts["batch_size"] / row["images_per_s"]
        previous = row["step"]
    return seconds


def crossing_time(points: list[tuple[float, float]], target: float) -> tuple[float | None, bool]:
    """The training time at which an FID curve [(seconds, FID), ...] first reaches ``target``,
    linear between checkpoints; (time, exact). ``exact`` is False when the first checkpoint is
    already at or below the target (the time is then an upper bound); (None, False) if never."""
    for i, (seconds, fid) in enumerate(points):
        if fid <= target:
            if i == 0:
                return seconds, False
            (s0, f0) = points[i - 1]
            return s0 + (seconds - s0) * (f0 - target) / (f0 - fid), True
    return None, False


def sample_side(args, name: str, checkpoint: Path, scorer) -> tuple[dict, object]:
    """Samples of one checkpoint, timed (decoding included), and their scores."""
    from difflab.pipelines import DiffusionModel, generate

    model = DiffusionModel.load(checkpoint)
    start = time.perf_counter()
    images, _ = generate(model, args.samples, method="unipc_3", steps=args.sample_steps, spacing="trailing",
                         seed=args.seed + 1, batch_size=100)
    seconds = time.perf_counter() - start
    scores = scorer.score(images, name=name)
    return {**scores, "sampling images/s": args.samples / seconds}, images


def summarise(curves: dict, speed: dict, ae_seconds: float) -> dict:
    """Equal-time FID/KID, time to the pixel model's best FID, throughput ratios."""
    final = {side: curves[side][-1] for side in SIDES}
    target = min(point["fid"] for point in curves["pixel"])
    pixel_time = next(point["train s"] for point in curves["pixel"] if point["fid"] == target)
    latent_time, exact = crossing_time([(p["train s"], p["fid"]) for p in curves["latent"]], target)
    return {
        "target_fid": target, "pixel_s_to_target": pixel_time, "latent_s_to_target": latent_time,
        "latent_time_exact": exact,
        "latent_s_to_target_with_autoencoder": None if latent_time is None else latent_time + ae_seconds,
        "speedup": None if latent_time is None else pixel_time / latent_time,
        "speedup_with_autoencoder": None if latent_time is None else pixel_time / (latent_time + ae_seconds),
        "fid_at_equal_time": {side: final[side]["fid"] for side in SIDES},
        "kid_at_equal_time": {side: final[side].get("kid") for side in SIDES},
        "train_speedup": speed["latent"]["train"] / speed["pixel"]["train"],
        "sampling_speedup": speed["latent"]["sampling"] / speed["pixel"]["sampling"],
    }


def verdict(s: dict, ae: dict) -> str:
    """Reproduced when the latent model is better at equal time (FID and KID), reaches the pixel
    model's best FID sooner, and samples faster; partly when some of these hold."""
    fid, kid = s["fid_at_equal_time"], s["kid_at_equal_time"]
    better = fid["latent"] < fid["pixel"] and (kid["latent"] is None or kid["latent"] < kid["pixel"])
    sooner = s["speedup"] is not None and s["speedup"] > 1
    faster_sampling = s["sampling_speedup"] > 1
    if s["latent_s_to_target"] is None:
        reach = f"the latent model never reached the pixel model's best FID {s['target_fid']:.1f}"
    else:
        bound = "" if s["latent_time_exact"] else "≤ "
        reach = (f"it reached the pixel model's best FID {s['target_fid']:.1f} after {bound}"
                 f"{s['latent_s_to_target']:.0f} s of training against the pixel model's "
                 f"{s['pixel_s_to_target']:.0f} s, a speed-up of {'≥ ' if bound else ''}{s['speedup']:.2f}× "
                 f"({'≥ ' if bound else ''}{s['speedup_with_autoencoder']:.2f}× with the autoencoder's "
                 f"{ae['train s']:.0f} s of training counted)")
    kid_text = "" if kid["latent"] is None else f", KID {kid['latent']:.4f} vs {kid['pixel']:.4f}"
    detail = (f"at equal training time the latent model has FID {fid['latent']:.1f} vs the pixel model's "
              f"{fid['pixel']:.1f}{kid_text}; {reach}; its training throughput is {s['train_speedup']:.1f}× and "
              f"its sampling throughput {s['sampling_speedup']:.1f}× the pixel model's (images/s, decoding "
              f"included); autoencoder PSNR {ae['psnr']:.1f} dB on the held-out emoji")
    held = [better, sooner, faster_sampling]
    if all(held):
        return f"reproduced: {detail}."
    missing = [what for what, ok in zip(("better at equal time", "sooner to equal quality", "faster sampling"),
                                        held) if not ok]
    if any(held):
        return f"partly reproduced (not {', '.join(missing)}): {detail}."
    return f"not reproduced: {detail}."


def plot(args, curves: dict, ae_seconds: float, summary: dict) -> None:
    import torch

    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colors = {"pixel": "tab:red", "latent": "tab:blue"}
    for side in SIDES:
        seconds = [p["train s"] for p in curves[side]]
        for ax, key in zip(axes[:2], ("fid", "kid")):
            ax.plot(seconds, [p.get(key, float("nan")) for p in curves[side]], marker="o", color=colors[side],
                    label=f"{side} (diffusion training only)")
            if side == "latent":
                ax.plot([s + ae_seconds for s in seconds], [p.get(key, float("nan")) for p in curves[side]],
                        marker="o", ls="--", color=colors[side], alpha=0.5, label="latent + autoencoder training")
    axes[0].axhline(summary["target_fid"], color="gray", lw=0.8, ls=":", label="pixel model's best FID")
    for ax, name in zip(axes[:2], ("FID", "KID")):
        ax.set_xlabel(f"training seconds ({torch.get_num_threads()} CPU threads)")
        ax.set_ylabel(name)
        ax.set_title(f"{name} vs training time, emoji 64×64")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    # Ratios latent / pixel beside LDM Tab. 6's (FID: pixel / latent, so > 1 favours latent everywhere).
    names = ["train images/s", "sampling images/s", "FID (pixel / latent)"]
    fid = summary["fid_at_equal_time"]
    ours = [summary["train_speedup"], summary["sampling_speedup"], fid["pixel"] / fid["latent"]]
    paper = [PAPER_TAB6["latent"]["train images/s"] / PAPER_TAB6["pixel"]["train images/s"],
             PAPER_TAB6["latent"]["sampling images/s"] / PAPER_TAB6["pixel"]["sampling images/s"],
             PAPER_TAB6["pixel"]["FID"] / PAPER_TAB6["latent"]["FID"]]
    x = range(len(names))
    axes[2].bar([i - 0.2 for i in x], ours, width=0.4, label="ours (emoji 64², f = 4)")
    axes[2].bar([i + 0.2 for i in x], paper, width=0.4, label="LDM Tab. 6 (Places 256², f = 4)")
    axes[2].axhline(1, color="gray", lw=0.8)
    axes[2].set_xticks(list(x), names, fontsize=8)
    axes[2].set_ylabel("latent advantage (×)")
    axes[2].set_title("latent over pixel")
    axes[2].legend(fontsize=8)
    common.save_plot(fig, args)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from difflab.images import save_grid

    ae_checkpoint = common.train_run(args, "autoencoder", AE_CONFIG, autoencoder_overrides(args), steps=args.ae_steps)
    ae_config = json.loads((ae_checkpoint / "config.json").read_text())
    ae_facts = common.run_facts(args, "autoencoder")
    ae = {"train s": ae_facts["wall_s"], "steps": ae_facts["steps"], "batch_size": ae_facts["batch_size"],
          "psnr": ae_config["psnr"],
          "psnr_images": ae_config["psnr_images"], "psnr_split": ae_config["psnr_split"],
          "latent_scale": ae_config["latent_scale"], "latent_shape": ae_config["latent_shape"]}
    print(f"[autoencoder] PSNR {ae['psnr']:.2f} dB on {ae['psnr_images']} images of {ae['psnr_split']}, "
          f"{ae['train s']:.0f} s of training")

    scorer = common.Scorer(args, "emoji", 64, 3)
    curves: dict[str, list[dict]] = {side: [] for side in SIDES}
    speed: dict[str, dict] = {}
    for side in SIDES:
        previous, seconds, images_seen = None, 0.0, 0
        for stage in range(1, args.stages + 1):
            name = f"{side}-{stage}"
            checkpoint = common.train_run(args, name, DIFFUSION_CONFIG,
                                          diffusion_overrides(args, side, ae_checkpoint.parent.resolve()),
                                          seconds=args.seconds / args.stages, resume=previous)
            facts = common.run_facts(args, name)
            seconds += loop_seconds(args, name)
            images_seen = facts["steps"] * facts["batch_size"]
            scores, images = sample_side(args, f"{side} stage {stage}", checkpoint, scorer)
            curves[side].append({"side": side, "stage": stage, "train s": seconds, "steps": facts["steps"],
                                 "images seen": images_seen, **scores})
            grid = f"samples-{side}.png" if stage == args.stages else f"samples-{side}-{stage}.png"
            save_grid(images[:64], args.out / grid, nrow=8)
            print(f"[{name}] {seconds:.0f} s, {facts['steps']} steps: FID {scores['fid']:.2f}, "
                  f"sampling {scores['sampling images/s']:.2f} images/s")
            previous = name
        first = common.run_facts(args, f"{side}-1")
        # sampling: the median over the checkpoints (the same network each time), robust to a busy box
        speed[side] = {"train": images_seen / seconds,
                       "sampling": statistics.median(p["sampling images/s"] for p in curves[side]),
                       "setup_s": first["wall_s"] - loop_seconds(args, f"{side}-1")}

    summary = summarise(curves, speed, ae["train s"])
    rows = []
    for side in SIDES:
        paper = PAPER_TAB6[side]
        for point in curves[side]:
            rows.append({**point, "train images/s": point["images seen"] / point["train s"]})
        rows[-1]["paper (Tab. 6)"] = (f"train {paper['train images/s']}, sample {paper['sampling images/s']} "
                                      f"images/s, FID {paper['FID']}")
    rows.append({"side": "autoencoder (f = 4, KL)", "stage": "", "train s": ae["train s"], "steps": ae["steps"],
                 "images seen": ae["steps"] * ae["batch_size"],
                 "note": f"PSNR {ae['psnr']:.2f} dB on {ae['psnr_images']} {ae['psnr_split']} images; trained "
                         "once, reused by every latent model"})
    common.write_results(
        args, rows, ["side", "stage", "train s", "steps", "images seen", "fid", "kid", "precision", "recall",
                     "train images/s", "sampling images/s", "paper (Tab. 6)", "note"],
        claim="diffusion in the latent space of an f = 4 autoencoder reaches the pixel model's quality in less "
              "training time and samples faster (decoding included) than the same U-Net recipe in pixel space, "
              "at about the same parameter count (LDM §4.1, Fig. 6–7, Tab. 6).",
        paper=PAPER,
        verdict=verdict(summary, ae),
        command="python benchmarks/reproduce/latent_vs_pixel.py",
        extra={"autoencoder": ae, "summary": summary, "speed": speed,
               "settings": {"seconds": args.seconds, "stages": args.stages, "samples": args.samples,
                            "sample_steps": args.sample_steps, "ae_steps": args.ae_steps,
                            "reference": len(scorer.reference.dataset)}})
    plot(args, curves, ae["train s"], summary)
    return {"summary": summary, "autoencoder": ae, "curves": curves}


if __name__ == "__main__":
    main()
