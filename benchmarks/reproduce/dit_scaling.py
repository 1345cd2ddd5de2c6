"""DiT's scaling in forward compute (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", Figs. 2, 6, 8).

The claim: at a fixed number of training steps, a DiT's FID falls as its forward Gflops rise,
whether the Gflops come from a larger transformer (depth / width) or from more tokens (a smaller
patch); so at (nearly) the same parameter count, the smaller patch wins: DiT-S/8 → S/4 → S/2
have 33M parameters each and FID-50K 153.6 → 100.4 → 68.4 after 400K steps (Table 4), and FID
correlates with Gflops at −0.93 over the 12 models (Fig. 8).

At CPU scale: class-conditional Fashion-MNIST 16×16 pixels (no autoencoder; label dropout 0.1
as DiT trains), a CPU-sized "S" — width 192, depth 6, 3 heads (``configs/dit-fashion-mnist-16-cpu``)
— at patch 8, 4 and 2 (4, 16 and 64 tokens; the paper's 32×32 latents give 16, 64, 256), and two
larger transformers: a twice-as-deep S/2 (depth 12) and a twice-as-wide S/4 (width 384, 6 heads,
as DiT-B is S at twice the width). Every model trains for the same
``--steps`` at batch 64 (as the paper compares models at equal steps), then draws ``--samples``
images without guidance (as Table 4) with UniPC-3 at 50 model calls from the same seeds, scored by
FID against ``--reference`` test images.

Compute: a model's forward GFLOPs per image are counted by ``torch.utils.flop_counter`` on one
image, with a multiply-add counted as 2 FLOPs and the attention's two matrix products included
(the CPU attention kernel is not in the counter's table, so its FLOPs are added from the query,
key and value shapes). DiT's Gflops count a multiply-add once: halve ours to compare. Training
FLOPs are steps × batch × 3 × forward (the paper's estimate: the backward pass ≈ 2 forwards).

Noise: the S/2 model is sampled twice (disjoint seeds); σ̂ = gap / √2 is one FID's sampling
noise (training noise comes on top: the band is a lower bound), and a difference between two
models counts only beyond 2·√2·σ̂ = 2·gap.

    python benchmarks/reproduce/dit_scaling.py --out runs/reproduce/dit_scaling      # ~35 min on 2 cores
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

CONFIG = "dit-fashion-mnist-16-cpu.yaml"
METHOD, CALLS = "unipc_3", 50
IMAGE_SIZE = 16


class Model(NamedTuple):  # not a dataclass: the tests load these scripts without registering a module
    key: str  # how the table and plot name it
    run: str  # its folder in OUT/runs
    patch_size: int
    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 3
    paper: str = ""  # the paper's model beside it
    paper_gflops: float = math.nan  # Table 4, a multiply-add counted once
    paper_fid: float = math.nan  # FID-50K after 400K steps, no guidance (Table 4)

    @property
    def tokens(self) -> int:
        return (IMAGE_SIZE // self.patch_size) ** 2


MODELS = [
    Model("S/8", "dit-S-p8", 8, paper="DiT-S/8", paper_gflops=0.36, paper_fid=153.60),
    Model("S/4", "dit-S-p4", 4, paper="DiT-S/4", paper_gflops=1.41, paper_fid=100.41),
    Model("S/2", "dit-S-p2", 2, paper="DiT-S/2", paper_gflops=6.06, paper_fid=68.40),
    Model("S-deep/2", "dit-Sdeep-p2", 2, depth=12, paper="DiT-B/2 (the next size up)", paper_gflops=23.01,
          paper_fid=43.47),
    Model("S-wide/4", "dit-Swide-p4", 4, hidden_size=384, num_heads=6, paper="DiT-B/4 (twice the width)",
          paper_gflops=5.56, paper_fid=68.38),
]
COLOURS = {"deep": "tab:red", "wide": "tab:green"}  # the larger transformers; the S series is blue


def colour(name: str) -> str:
    return next((c for key, c in COLOURS.items() if key in name), "tab:blue")

SMOKE_SIZE = {"hidden_size": 32, "depth": 1, "num_heads": 2}
NOISE_MODEL = "S/2"  # sampled twice for the noise


def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__, out="runs/reproduce/dit_scaling")
    p.add_argument("--steps", type=int, default=1000, help="training steps of every model (batch 64)")
    keys = [m.key for m in MODELS]
    p.add_argument("--models", nargs="+", choices=keys, default=keys, help="the models to train (S/2 always)")
    args = p.parse_args(argv)
    common.smoke_sizes(args, models=["S/8", "S/2"])
    if NOISE_MODEL not in args.models:
        args.models.append(NOISE_MODEL)
    return args


def overrides(args, model: Model) -> list[str]:
    size = SMOKE_SIZE if args.smoke else {"hidden_size": model.hidden_size, "depth": model.depth,
                                          "num_heads": model.num_heads}
    options = {"patch_size": model.patch_size, **size}
    # equal steps, not equal time: the config's wall-clock budget is lifted
    return ["train.max_seconds=null", *(["optim.batch_size=8"] if args.smoke else [])] + \
        [f"model.options.{k}={v}" for k, v in options.items()]


def forward_gflops(network, class_labels: bool) -> float:
    """FLOPs of one image's forward pass / 1e9 (a multiply-add = 2), attention included."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention}
    x = torch.zeros(1, network.config.in_channels, IMAGE_SIZE, IMAGE_SIZE)
    cond = {"class_labels": torch.zeros(1, dtype=torch.long)} if class_labels else {}
    with FlopCounterMode(display=False, custom_mapping=custom) as counter, torch.no_grad():
        network(x, torch.full((1,), 0.5), **cond)
    return counter.get_total_flops() / 1e9


def sample_and_score(args, scorer, points, model, name: str, first_seed: int) -> dict:
    """The scores of ``name``'s samples from ``first_seed`` on; a point ``points`` already holds
    (an earlier run of the script with the same settings) is not sampled again."""
    from difflab.images import save_grid
    from difflab.pipelines import Guidance, generate

    if (row := points.get(name)) is not None:
        print(f"[{name}] FID {row['fid']:.2f} (scored before)")
        return row
    start = time.perf_counter()
    images, labels = generate(model, args.samples, method=METHOD, steps=CALLS if not args.smoke else 4,
                              seed=first_seed, guidance=Guidance(scale=1.0), batch_size=250, precision="bf16")
    seconds = time.perf_counter() - start
    save_grid(images[:100], args.out / "samples" / f"{name}.png", nrow=10, upscale=2)
    scores = scorer.score(images, labels, name=name)
    print(f"[{name}] FID {scores['fid']:.2f} ({args.samples} samples in {seconds:.0f} s)")
    return points.put(name, {**scores, "sample images/s": args.samples / seconds})


def ranks(values: list[float]) -> list[float]:
    """Ranks from 0, ties sharing their mean rank (for Spearman's ρ)."""
    return [sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    var = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    return cov / var if var > 0 else math.nan


def status(full: bool, partial: bool) -> str:
    return "reproduced" if full else "partly reproduced" if partial else "not reproduced"


def verdict(rows: list[dict], band: float, gap: float) -> tuple[str, dict]:
    """Claim 1: FID falls as forward GFLOPs rise (every model); claim 2: at the same width and
    depth, a smaller patch gives a lower FID. A step counts only beyond the noise band."""
    by_flops = sorted(rows, key=lambda r: r["GFLOPs/image"])
    fids, flops = [r["fid"] for r in by_flops], [r["GFLOPs/image"] for r in by_flops]
    stats = {"band": band, "sample_gap": gap}
    if len(rows) < 2:
        first = "(1) FID falls as forward GFLOPs rise: not measured (needs two --models or more)"
    else:
        rho = stats["spearman"] = pearson(ranks(flops), ranks(fids))
        r_log = stats["pearson_log_gflops"] = pearson([math.log10(f) for f in flops], fids)
        reversals = [f"{a['model']} → {b['model']} ({b['fid'] - a['fid']:+.1f})"
                     for a, b in zip(by_flops, by_flops[1:]) if b["fid"] - a["fid"] > band]
        overall = fids[0] - fids[-1] > band
        first = (f"(1) FID falls as forward GFLOPs rise: {status(rho < 0 and overall and not reversals, rho < 0)} "
                 f"(Spearman ρ = {rho:+.2f}, Pearson r(log GFLOPs, FID) = {r_log:+.2f}; paper: −0.93 over 12 "
                 f"models; {by_flops[0]['model']} → {by_flops[-1]['model']}: {fids[-1] - fids[0]:+.1f} FID"
                 + (f"; FID rises beyond noise at {', '.join(reversals)}" if reversals else "") + ")")
    patches = sorted([r for r in rows if r["model"].startswith("S/")], key=lambda r: -r["patch"])
    if len(patches) < 2:
        second = "(2) smaller patches win at the same parameters: not measured (needs --models S/8 or S/4)"
    else:
        drops = [b["fid"] - a["fid"] for a, b in zip(patches, patches[1:])]
        partial = all(d < 0 for d in drops) or patches[-1]["fid"] < patches[0]["fid"] - band
        chain = " → ".join(f"{r['model']} {r['fid']:.1f}" for r in patches)
        second = (f"(2) smaller patches win at the same parameters: {status(all(d < -band for d in drops), partial)} "
                  f"({chain})")
    text = (f"{first}; {second}. Noise: the two sample sets of {NOISE_MODEL} differ by {gap:.2f} FID "
            f"(sampling noise only); a difference between two models counts beyond ±{band:.2f}.")
    return text, stats


def plot(args, rows: list[dict]) -> None:
    plt = common.pyplot()
    from matplotlib.ticker import NullFormatter

    fig, (ax, paper_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = sorted([r for r in rows if r["model"].startswith("S/")], key=lambda r: r["GFLOPs/image"])
    ax.plot([r["GFLOPs/image"] for r in series], [r["fid"] for r in series], color="tab:blue", lw=1, alpha=0.6,
            label="S: patch 8 → 4 → 2")
    for r in rows:
        ax.scatter(r["GFLOPs/image"], r["fid"], color=colour(r["model"]), zorder=3)
        ax.annotate(r["model"], (r["GFLOPs/image"], r["fid"]), textcoords="offset points", xytext=(5, 5), fontsize=9)
    for axis in (ax, paper_ax):
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(NullFormatter())  # unlabelled minor ticks: a short log range crowds them
        axis.margins(x=0.2, y=0.1)
    ax.set_xlabel("forward GFLOPs per image (multiply-add = 2)")
    ax.set_ylabel(f"FID ({args.samples} samples, no guidance)")
    ax.set_title(f"difflab: Fashion-MNIST 16×16, {args.steps if not args.smoke else 3} steps each", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    for m in MODELS:
        paper_ax.scatter(m.paper_gflops, m.paper_fid, color=colour(m.key), zorder=3)
        paper_ax.annotate(m.paper.split(" ")[0], (m.paper_gflops, m.paper_fid), textcoords="offset points",
                          xytext=(-20, -14) if "wide" in m.key else (5, 5), fontsize=9)  # B/4 sits by S/2
    paper_ax.plot([m.paper_gflops for m in MODELS[:3]], [m.paper_fid for m in MODELS[:3]], color="tab:blue", lw=1,
                  alpha=0.6)
    paper_ax.set_xlabel("Gflops per forward pass (paper: multiply-add = 1)")
    paper_ax.set_ylabel("FID-50K, no guidance")
    paper_ax.set_title("DiT: ImageNet 256×256 latents, 400K steps (Table 4)", fontsize=10)
    paper_ax.grid(alpha=0.3, which="both")
    common.save_plot(fig, args)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    from difflab.pipelines import DiffusionModel

    scorer = common.Scorer(args, "fashion-mnist", IMAGE_SIZE, 1)
    points = common.ScoredPoints(args, {"steps": args.steps, "samples": args.samples, "reference": args.reference,
                                        "seed": args.seed, "smoke": args.smoke})
    first_seed = args.seed + 1
    rows, resampled = [], None
    for model in [m for m in MODELS if m.key in args.models]:
        checkpoint = common.train_run(args, model.run, CONFIG, overrides(args, model), steps=args.steps)
        facts = common.run_facts(args, model.run)
        loaded = DiffusionModel.load(checkpoint)
        network = loaded.network
        gflops = forward_gflops(network, bool(network.config.num_classes))
        scores = sample_and_score(args, scorer, points, loaded, model.run, first_seed)
        if model.key == NOISE_MODEL:
            resampled = sample_and_score(args, scorer, points, loaded, f"{model.run}-resampled",
                                         first_seed + 1_000_000)
        images = facts["steps"] * facts["batch_size"]
        rows.append({"model": model.key, "patch": model.patch_size, "tokens": model.tokens,
                     "width": network.config.hidden_size, "depth": network.config.depth,
                     "params (M)": sum(p.numel() for p in network.parameters()) / 1e6, "GFLOPs/image": gflops,
                     "steps": facts["steps"], "images seen": images, "train images/s": facts["images_per_s"],
                     "train TFLOPs": images * 3 * gflops / 1e3, **scores, "paper model": model.paper,
                     "paper Gflops": model.paper_gflops, "paper FID-50K": model.paper_fid})
    noise_row = next(r for r in rows if r["model"] == NOISE_MODEL)
    gap = abs(noise_row["fid"] - resampled["fid"])
    text, stats = verdict(rows, 2 * gap, gap)
    common.write_results(
        args, rows, ["model", "patch", "tokens", "width", "depth", "params (M)", "GFLOPs/image", "steps",
                     "images seen", "train images/s", "train TFLOPs", "fid", "kid", "precision", "recall",
                     "sample images/s", "paper model", "paper Gflops", "paper FID-50K"],
        claim="at a fixed number of training steps, DiT's FID falls as its forward Gflops rise, from a larger "
              "transformer or from more tokens; at (nearly) equal parameters the smaller patch wins "
              "(DiT Figs. 2, 6, 8; Table 4).",
        paper="ImageNet 256×256 (32×32×4 latents), class-conditional, FID-50K without guidance after 400K steps "
              "at batch 256, 250 DDPM steps (Table 4); Gflops count a multiply-add once: DiT-S/8 0.36 Gflops → "
              "153.60, S/4 1.41 → 100.41, S/2 6.06 → 68.40 (33M parameters each), B/4 5.56 → 68.38 and "
              "B/2 23.01 → 43.47 (130M); FID-Gflops correlation −0.93 over the 12 models (Fig. 8). Our GFLOPs "
              "count a multiply-add twice.",
        verdict=text,
        command="python benchmarks/reproduce/dit_scaling.py",
        extra={"noise": {**stats, "resampled_fid": resampled["fid"]}, "steps": args.steps,
               "sampler": {"method": METHOD, "calls": CALLS, "guidance": 1.0, "precision": "bf16"},
               "flops_convention": "torch.utils.flop_counter, multiply-add = 2, attention included"})
    plot(args, rows)
    return rows


if __name__ == "__main__":
    main()
