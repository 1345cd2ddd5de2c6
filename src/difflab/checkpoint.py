"""Checkpoints: a folder of ``config.json`` + one ``NAME.safetensors`` per tensor group.

Layout of a checkpoint folder::

    config.json          the caller's config, with "kind" (what the checkpoint holds) and
                         "checkpoint_files" (the files that must be present)
    model.safetensors    one file per tensor group (model, ema, ...)
    extra.pt             optional non-tensor state (optimizer, RNG, step), torch.save'd and
                         read back only with torch.load(weights_only=True): no pickled code

Writes are atomic: everything goes into a temporary sibling folder, each file and the folder
are fsync'ed, then the old checkpoint is moved aside, the new one renamed into place and the
old one deleted. A crash at any point leaves either the previous checkpoint or the new one;
in the one window where only the moved-aside copy exists, the next save or load puts it back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
EXTRA_FILE = "extra.pt"
_FILES_KEY = "checkpoint_files"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def _restore_moved_aside(path: Path) -> None:
    """If a save crashed after moving the old checkpoint aside, put it back."""
    if path.exists():
        return
    for old in sorted(path.parent.glob(f".{path.name}.old-*")):
        os.replace(old, path)
        return


def _write_files(folder: Path, config: dict, tensors: dict[str, dict[str, torch.Tensor]],
                 extra: dict | None) -> None:
    folder.mkdir(parents=True)
    files = [CONFIG_FILE] + [f"{group}.safetensors" for group in tensors]
    for group, state in tensors.items():
        contiguous = {name: t.detach().cpu().contiguous() for name, t in state.items()}
        save_file(contiguous, str(folder / f"{group}.safetensors"))
    if extra is not None:
        torch.save(extra, folder / EXTRA_FILE)
        files.append(EXTRA_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps({**config, _FILES_KEY: files}, indent=2) + "\n")
    for name in files:
        _fsync(folder / name)
    _fsync(folder)


def save_checkpoint(path: str | Path, config: dict, tensors: dict[str, dict[str, torch.Tensor]],
                    extra: dict | None = None) -> Path:
    """Write a checkpoint folder atomically; returns its path.

    Args:
        path: the checkpoint folder (replaced if it exists).
        config: JSON-serialisable settings; must hold ``"kind"`` (e.g. ``"classifier"``).
        tensors: tensor groups, each written to ``GROUP.safetensors``.
        extra: optional state of plain Python values and tensors (``extra.pt``).
    """
    path = Path(path)
    if not isinstance(config.get("kind"), str):
        raise ValueError("a checkpoint config needs a 'kind' string saying what it holds")
    for group in tensors:
        if not group.isidentifier():
            raise ValueError(f"tensor group name {group!r} must be a plain identifier")
    path.parent.mkdir(parents=True, exist_ok=True)
    _restore_moved_aside(path)
    tmp, old = _sibling(path, "tmp"), _sibling(path, "old")
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    try:
        _write_files(tmp, config, tensors, extra)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: str | Path, kind: str | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[dict, dict[str, dict[str, torch.Tensor]], dict | None]:
    """Read a checkpoint folder → (config, tensors by group, extra or None).

    ``kind``, when given, must match the checkpoint's ``"kind"``.
    """
    path = Path(path)
    _restore_moved_aside(path)
    config_path = path / CONFIG_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a difflab checkpoint: it has no {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    files = config.pop(_FILES_KEY, None) if isinstance(config, dict) else None
    if files is None or "kind" not in config:
        raise ValueError(f"{path} is not a difflab checkpoint (its {CONFIG_FILE} has no 'kind')")
    if kind is not None and config["kind"] != kind:
        raise ValueError(f"{path} is a {config['kind']!r} checkpoint, expected a {kind!r} one")
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    device = str(map_location)
    tensors = {name.removesuffix(".safetensors"): load_file(str(path / name), device=device)
               for name in files if name.endswith(".safetensors")}
    extra = None
    if EXTRA_FILE in files:
        extra = torch.load(path / EXTRA_FILE, map_location=map_location, weights_only=True)
    return config, tensors, extra
