"""Reading the safetensors weights of another project's model folder, never a pickle.

diffusers' and transformers' ``save_pretrained`` write one file (``diffusion_pytorch_model.safetensors``,
``model.safetensors``) or, for large models, shards named by ``<file>.index.json``'s ``weight_map``.
Older folders hold ``*.bin`` files instead: pickles, which can run code when loaded, so difflab
refuses them with the way to convert them where the file is trusted.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor


def read_safetensors_folder(folder: str | Path, name: str, convert: str) -> dict[str, Tensor] | None:
    """The tensors ``folder`` holds as ``name`` (one file) or sharded (``name.index.json``), or None
    when it holds neither (the caller says what it expected).

    Args:
        folder: the model folder.
        name: the weights file, e.g. ``diffusion_pytorch_model.safetensors``.
        convert: how to convert a pickled folder, quoted in the error.

    Raises:
        FileNotFoundError: the folder holds only pickled ``*.bin`` weights.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / name).is_file():
        return load_file(str(folder / name))
    index = folder / f"{name}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return {key: value for shard in shards for key, value in load_file(str(folder / shard)).items()}
    pickled = sorted(p.name for p in folder.glob("*.bin"))
    if pickled:
        raise FileNotFoundError(f"{folder} holds only {', '.join(pickled)}, a pickle, which difflab never loads "
                                f"(unpickling can run code); convert it once where you trust the file: {convert}")
    return None
