"""Generation parameters inside PNG files, as AUTOMATIC1111 and ComfyUI keep them.

Every image difflab saves carries two ``tEXt`` chunks: ``difflab``, the JSON record of
:meth:`~difflab.pipelines.GenerationPlan.image_record` (checkpoint, prompt, class, the image's own
seed, sampler, steps, spacing, guidance, difflab version …), which ``difflab sample --from-png``
reads back to make the same image again; and ``parameters``, the same in AUTOMATIC1111's
one-paragraph form, which image viewers and other tools show.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, PngImagePlugin

RECORD_KEY = "difflab"
PARAMETERS_KEY = "parameters"


def parameters_text(record: dict) -> str:
    """AUTOMATIC1111's form: the prompt, a ``Negative prompt:`` line, then ``Key: value`` pairs."""
    lines = [record.get("prompt") or record.get("class_name") or ""]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    size = record.get("size")
    pairs = {"Steps": record.get("steps"), "Sampler": record.get("method"), "Schedule type": record.get("spacing"),
             "CFG scale": record.get("guidance_scale"), "Seed": record.get("seed"),
             "Size": f"{size[-1]}x{size[-2]}" if size else None, "Model": record.get("checkpoint"),
             "Version": f"difflab {record.get('difflab')}"}
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs.items() if value is not None))
    return "\n".join(lines)


def png_text(record: dict) -> PngImagePlugin.PngInfo:
    """The text chunks of a PNG that records ``record``."""
    info = PngImagePlugin.PngInfo()
    info.add_text(RECORD_KEY, json.dumps(record, sort_keys=True))
    info.add_text(PARAMETERS_KEY, parameters_text(record))
    return info


def save_png(image: Image.Image, path: str | Path, record: dict | None = None) -> Path:
    """Save ``image`` as a PNG carrying ``record`` (default: the record a :class:`~difflab.Pipeline`
    attached to the image's ``info``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = record if record is not None else image.info.get(RECORD_KEY)
    if isinstance(record, str):
        record = json.loads(record)
    image.save(path, pnginfo=png_text(record) if record else None)
    return path


def read_record(path: str | Path) -> dict:
    """The generation record of a PNG difflab saved; one clear error for any other file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(RECORD_KEY)
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path} is not an image PIL can read ({err})") from None
    if text is None:
        raise ValueError(f"{path} has no difflab generation record: only PNGs saved by `difflab sample` (or "
                         "difflab.Pipeline with save_png) carry one")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}'s difflab record is not valid JSON ({err})") from None
