"""``difflab posthoc-ema RUN --sigma-rel S --out NEW``: a run's EMA of another length, after training."""

from __future__ import annotations

import argparse

SCAN = (0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.10, 0.12, 0.15, 0.20, 0.25)  # the widths --list scores


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "posthoc-ema",
        help="make a run's EMA of any length after training, from its post-hoc EMA snapshots",
        description="Post-hoc EMA (Karras et al. 2024; docs/training.md, 'Post-hoc EMA'). A run trained with "
        "train.posthoc_ema_every=N saves two power-function averages of its weights every N steps "
        "(RUN/posthoc-ema/). This command combines them into the average of relative width --sigma-rel (the "
        "profile's standard deviation as a fraction of the training so far; the paper's best are 0.05-0.15) "
        "and writes a new run with those as its EMA weights, which sample, eval and the Pipeline use as "
        "any run's. --list shows the snapshots and how closely each width can be made.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="a run folder trained with train.posthoc_ema_every > 0")
    p.add_argument("--sigma-rel", type=float, nargs="+", metavar="S",
                   help="relative width(s) of the EMA to make, in (0, 0.289); with several, --out gets one run "
                        "per width (sigma-0.050, ...)")
    p.add_argument("--step", type=int,
                   help="the training step whose average to make, from the snapshots up to it (default: the "
                        "last snapshot's; an earlier step shows what a shorter training would have given)")
    p.add_argument("--out", help="the new run folder (or the folder of the runs, with several --sigma-rel)")
    p.add_argument("--list", action="store_true",
                   help="print the snapshots and the fit error of a range of widths; write nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
    from ..images import check_output_folder
    from ..training.posthoc_ema import Snapshots, scan_widths, sigma_rel_to_gamma

    run_folder = Path(args.run)
    if not run_folder.is_dir():
        raise FileNotFoundError(f"{run_folder} is not a run folder: give the folder `difflab train --out` wrote")
    if args.list:
        for line in scan_widths(run_folder, SCAN, args.step):
            print(line)
        return 0
    if not args.sigma_rel or not args.out:
        raise ValueError("give --sigma-rel S and --out NEW (or --list to see what the run's snapshots allow)")
    if args.step is not None and args.step < 1:
        raise ValueError(f"--step must be at least 1, got {args.step}")
    for sigma_rel in args.sigma_rel:  # every width checked before anything is read or written
        sigma_rel_to_gamma(sigma_rel)
    out = Path(args.out)
    targets = {s: out if len(args.sigma_rel) == 1 else out / f"sigma-{s:.3f}" for s in args.sigma_rel}
    for folder in targets.values():
        check_output_folder(folder)
        if (folder / "checkpoint").exists() or folder.resolve() == run_folder.resolve():
            raise FileExistsError(f"{folder} already holds a checkpoint: give another --out")
    config, tensors, _ = load_checkpoint(find_checkpoint(run_folder), with_extra=False)
    kept = {group: values for group, values in tensors.items() if not group.startswith("posthoc_ema_")}
    snapshots = Snapshots(run_folder, args.step)  # read once for every width
    for sigma_rel, folder in targets.items():
        state, record = snapshots.average(sigma_rel)
        if state.keys() != kept["ema"].keys():
            raise ValueError(f"the post-hoc EMA snapshots of {run_folder} do not hold this run's model (another "
                             "model's weights): they cannot make its EMA")
        save_checkpoint(folder / "checkpoint", {**config, "posthoc_ema": {**record, "source": str(run_folder)}},
                        {**kept, "ema": state})
        print(f"difflab posthoc-ema: sigma_rel {sigma_rel:g} at step {record['step']} from {record['snapshots']} "
              f"snapshots (profile fit error {100 * record['profile_error']:.1f} %): {folder}")
    return 0
