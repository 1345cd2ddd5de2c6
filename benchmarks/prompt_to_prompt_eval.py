"""Prompt-to-prompt word swaps on a text model (issue 19): does the edit draw the new class, and
does it keep the source's layout better than regenerating the edited prompt from the same noise?

For each word swap (class names of equal token count under the model's tokenizer, e.g. "a photo
of a sneaker" -> "a photo of a sandal") and each seed, three images share the seed's noise: the
source (source prompt), the prompt-to-prompt edit (replace mode, the source's attention maps for
the first steps, and its decoder features for the first τ_f: --feature-replace) and the
regeneration of the edited prompt without attention control. An independent classifier trained
on real images labels the edits; the mean squared difference to the source (pixels in [0, 1]) is
compared between edit and regeneration. Acceptance: edits
recognised as the edited class >= 0.70 of the time, and MSE(source, edit) <= 0.5 x
MSE(source, regeneration). Also checks that identical prompts give a bit-identical image and an
all-ones reweight is the identity. Writes results.json and grid.png (per swap: source, edit,
regeneration triples of the first seeds).

    python benchmarks/prompt_to_prompt_eval.py runs/fashion-mnist-16-text \\
        --classifier runs/fashion-mnist-16-eval-classifier --n-seeds 200 \\
        --out benchmarks/results/prompt_to_prompt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.conditioning import TextConditioning
from difflab.data.captions import TEMPLATES, with_article
from difflab.editing import prompt_to_prompt
from difflab.editing.tokens import prompt_tokens, word_pieces
from difflab.images import save_grid
from difflab.metrics import load_classifier
from difflab.pipelines import DiffusionModel, Guidance, SamplerSettings, generate
from difflab.pipelines.guidance_policy import guidance_scale

# Swaps of equal token count under all-MiniLM-L6-v2's WordPiece: sneaker = sneak ##er, sandal =
# sand ##al (2 tokens); shirt, coat, dress, bag (1 token each). Pullover (pull ##over) has 2,
# trouser 3, t-shirt/top 5; "an ankle boot" would change the article as well.
DEFAULT_SWAPS = "sneaker:sandal,sandal:sneaker,shirt:coat,coat:shirt,dress:bag"


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared difference of uint8 images, pixels scaled to [0, 1]."""
    return ((a.double() - b.double()) / 255.0).pow(2).flatten(1).mean(1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a text-conditioned run with cross-attention")
    p.add_argument("--classifier", required=True, help="independent classifier checkpoint (real images)")
    p.add_argument("--swaps", default=DEFAULT_SWAPS, help="comma-separated SOURCE:EDIT class names (lower case)")
    p.add_argument("--n-seeds", type=int, default=200, help="seeds per swap")
    p.add_argument("--first-seed", type=int, default=0, help="seeds FIRST_SEED .. FIRST_SEED + N_SEEDS - 1")
    p.add_argument("--batch", type=int, default=200, help="seeds per prompt_to_prompt call")
    p.add_argument("--cross-replace", type=float, default=0.8, help="tau_c (library default)")
    p.add_argument("--self-replace", type=float, default=0.4, help="tau_s (library default)")
    p.add_argument("--feature-replace", type=float,
                   help="tau_f, decoder feature injection (default: the library's; 0: the paper's prompt-to-prompt)")
    p.add_argument("--blend", action="store_true", help="local blend on the swapped words (Hertz et al. 2022, §3.2)")
    p.add_argument("--method", default="ddim", help="sampler (prompt_to_prompt's default)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--guidance-scale", type=float, help="CFG weight (default: the checkpoint's)")
    p.add_argument("--template", default=TEMPLATES[0], help="caption template with one {} for 'a/an CLASS'")
    p.add_argument("--grid-seeds", type=int, default=4, help="triples per swap in the grid")
    p.add_argument("--skip-checks", action="store_true", help="skip the identity checks")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default; on a CPU shared with other jobs more threads "
                        "than free cores slow every call down many times)")
    p.add_argument("--out", type=Path, help="write results.json and grid.png here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model = DiffusionModel.load(args.checkpoint)
    classifier = load_classifier(args.classifier)
    index = {name.lower(): i for i, name in enumerate(classifier.class_names)}
    text = TextConditioning(model.text_encoder)
    guidance = Guidance(scale=args.guidance_scale)
    sampling = {"method": args.method, "steps": args.steps, "guidance": guidance}
    swaps = [tuple(item.split(":")) for item in args.swaps.split(",")]
    seeds = list(range(args.first_seed, args.first_seed + args.n_seeds))
    prompt = {name: args.template.format(with_article(name)) for pair in swaps for name in pair}

    checks = {}
    if not args.skip_checks:
        p0, few = prompt[swaps[0][0]], seeds[:8]
        sources, edits, _ = prompt_to_prompt(model, p0, p0, seeds=few, **sampling)
        plain, _ = generate(model, len(few), seeds=few, prompts=[p0], **sampling)
        checks["identical_prompts_bit_identical"] = bool(torch.equal(sources, edits) and torch.equal(sources, plain))
        sources, edits, _ = prompt_to_prompt(model, p0, mode="reweight", reweight={swaps[0][0]: 1.0}, seeds=few,
                                             **sampling)
        checks["all_ones_reweight_identity"] = bool(torch.equal(sources, edits))
        for name, ok in checks.items():
            print(f"check {name}: {'ok' if ok else 'FAILED'}")

    rows, per_swap, all_mse_edit, all_mse_regen, all_hits = [], {}, [], [], []
    for source_name, edit_name in swaps:
        src_prompt, edit_prompt = prompt[source_name], prompt[edit_name]
        src_pieces, edit_pieces = word_pieces(text, source_name), word_pieces(text, edit_name)
        if len(prompt_tokens(text, src_prompt)) != len(prompt_tokens(text, edit_prompt)):
            raise SystemExit(f"{source_name} {src_pieces} -> {edit_name} {edit_pieces}: unequal token counts")
        tic = time.perf_counter()
        sources, edits, regens = [], [], []
        for i in range(0, len(seeds), args.batch):
            chunk = seeds[i : i + args.batch]
            s, e, control = prompt_to_prompt(model, src_prompt, edit_prompt, mode="replace", seeds=chunk,
                                       cross_replace=args.cross_replace, self_replace=args.self_replace,
                                       feature_replace=args.feature_replace,
                                       blend_words=[source_name, edit_name] if args.blend else None, **sampling)
            r, _ = generate(model, len(chunk), seeds=chunk, prompts=[edit_prompt], **sampling)
            sources.append(s), edits.append(e), regens.append(r)
        sources, edits, regens = torch.cat(sources), torch.cat(edits), torch.cat(regens)
        seconds = time.perf_counter() - tic
        target, origin = index[edit_name], index[source_name]
        labels = {key: classifier.probabilities(images).argmax(1)
                  for key, images in (("source", sources), ("edit", edits), ("regen", regens))}
        hits = (labels["edit"] == target).double()
        mse_edit, mse_regen = mse(sources, edits), mse(sources, regens)
        all_hits.append(hits), all_mse_edit.append(mse_edit), all_mse_regen.append(mse_regen)
        per_swap[f"{source_name}->{edit_name}"] = record = {
            "source_prompt": src_prompt, "edit_prompt": edit_prompt,
            "tokens": [src_pieces, edit_pieces],
            "edit_accuracy": float(hits.mean()),
            "regen_accuracy": float((labels["regen"] == target).double().mean()),
            "source_accuracy": float((labels["source"] == origin).double().mean()),
            "edit_still_source_class": float((labels["edit"] == origin).double().mean()),
            "mse_source_edit": float(mse_edit.mean()), "mse_source_regen": float(mse_regen.mean()),
            "ratio": float(mse_edit.mean() / mse_regen.mean()),
            "mse_edit_regen": float(mse(edits, regens).mean()),
            "seconds": round(seconds, 1)}
        k = min(args.grid_seeds, len(seeds))
        rows.append(torch.stack([im for j in range(k) for im in (sources[j], edits[j], regens[j])]))
        print(f"{source_name + ' -> ' + edit_name:18} tokens {len(src_pieces)}={len(edit_pieces)}  "
              f"edit acc {record['edit_accuracy']:.3f} (regen {record['regen_accuracy']:.3f}, "
              f"source {record['source_accuracy']:.3f})  MSE edit {record['mse_source_edit']:.4f} "
              f"regen {record['mse_source_regen']:.4f} ratio {record['ratio']:.3f} (edit-regen "
              f"{record['mse_edit_regen']:.4f})  {seconds:.0f} s", flush=True)

    hits, mse_edit, mse_regen = torch.cat(all_hits), torch.cat(all_mse_edit), torch.cat(all_mse_regen)
    overall = {"edit_accuracy": float(hits.mean()), "mse_source_edit": float(mse_edit.mean()),
               "mse_source_regen": float(mse_regen.mean()), "ratio": float(mse_edit.mean() / mse_regen.mean()),
               "pairs": len(hits)}
    criteria = {"edit_accuracy >= 0.70": overall["edit_accuracy"] >= 0.70, "ratio <= 0.5": overall["ratio"] <= 0.5}
    wall = time.perf_counter() - start
    print(f"overall ({len(hits)} pairs): edit accuracy {overall['edit_accuracy']:.3f}, MSE source-edit "
          f"{overall['mse_source_edit']:.4f}, source-regen {overall['mse_source_regen']:.4f}, "
          f"ratio {overall['ratio']:.3f} (pixels in [0, 1])")
    for name, ok in criteria.items():
        print(f"criterion {name}: {'PASS' if ok else 'FAIL'}")
    print(f"wall time {wall:.0f} s")
    if args.out:
        settings = SamplerSettings.resolve(model, args.method, args.steps)
        args.out.mkdir(parents=True, exist_ok=True)
        save_grid(torch.cat(rows), args.out / "grid.png", nrow=3 * min(args.grid_seeds, len(seeds)),
                  upscale=max(1, 64 // rows[0].shape[-1]))
        (args.out / "results.json").write_text(json.dumps(
            {"checkpoint": args.checkpoint, "classifier": args.classifier, "n_seeds": args.n_seeds,
             "first_seed": args.first_seed, "method": args.method, "steps": settings.steps,
             "spacing": settings.spacing, "guidance_scale": guidance_scale(model, guidance),
             "cross_replace": args.cross_replace, "self_replace": args.self_replace,
             "feature_replace": control.feature_steps / settings.steps, "blend": args.blend,
             "template": args.template, "mse_pixel_range": [0, 1],
             "checks": checks, "per_swap": per_swap, "overall": overall, "criteria": criteria,
             "wall_seconds": round(wall, 1)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
