"""The generation records of prompt-to-prompt pairs: what each source and edit PNG carries.

A record is what ``difflab sample`` writes into its PNGs (checkpoint, prompt, seed, sampler,
guidance, size, version), plus a ``prompt_to_prompt`` block with the edit: both prompts, the
mode, reweighting, the fractions τ_c, τ_s, τ_f, local blend and which of the pair the image is.
``difflab edit --from-png`` reads the block back and makes the pair again (:func:`edit_arguments`);
the page's PNG drop and ``difflab sample --from-png`` read the plain fields, which make the source.
"""

from __future__ import annotations

from .. import __version__

ROLES = ("source", "edit")


def pair_records(model, *, prompt: str, edit: str, seeds: list[int], method: str, steps: int, spacing: str,
                 guidance_scale: float, mode: str, reweight: dict | None, cross_replace: float, self_replace: float,
                 feature_replace: float, blend_words: list[str] | None = None, blend_threshold: float = 0.3,
                 real_image: bool = False) -> list[dict]:
    """The records of n pairs, in the order source 0, edit 0, source 1, …"""
    block = {"source_prompt": prompt, "edit_prompt": edit, "mode": mode, "reweight": reweight or None,
             "cross_replace": cross_replace, "self_replace": self_replace, "feature_replace": feature_replace,
             "local_blend": list(blend_words) if blend_words else None,
             "blend_threshold": blend_threshold if blend_words else None, "real_image": real_image or None}
    block = {key: value for key, value in block.items() if value is not None}
    records = []
    for seed in seeds:
        for role, text in zip(ROLES, (prompt, edit)):
            records.append({"checkpoint": str(model.path) if model.path else None, "prompt": text, "seed": seed,
                            "method": method, "steps": steps, "spacing": spacing, "guidance_scale": guidance_scale,
                            "size": list(model.record.image_shape), "difflab": __version__,
                            "prompt_to_prompt": {**block, "role": role}})
    return [{key: value for key, value in record.items() if value is not None} for record in records]


def edit_arguments(record: dict, source: str) -> dict:
    """``prompt_to_prompt``'s arguments (and the checkpoint) that make the pair of a record again.

    Raises:
        ValueError: a record without a prompt-to-prompt block, or of an edited real picture (its
            noise came from the picture, which the record does not hold).
    """
    block = record.get("prompt_to_prompt")
    if not block:
        raise ValueError(f"{source} records no prompt-to-prompt edit: remake it with `difflab sample --from-png`")
    if block.get("real_image"):
        raise ValueError(f"{source} is the edit of a picture, which its record does not hold: edit the picture "
                         "again with `difflab edit --image`")
    return {"checkpoint": record.get("checkpoint"), "prompt": block["source_prompt"], "edit": block["edit_prompt"],
            "mode": block.get("mode", "replace"), "reweight": block.get("reweight"),
            "cross_replace": block["cross_replace"], "self_replace": block["self_replace"],
            "feature_replace": block.get("feature_replace", 0.0), "blend_words": block.get("local_blend"),
            "blend_threshold": block.get("blend_threshold", 0.3), "seeds": [record["seed"]],
            "method": record["method"], "steps": record["steps"], "spacing": record["spacing"],
            "guidance_scale": record.get("guidance_scale"), "role": block.get("role", "edit")}
