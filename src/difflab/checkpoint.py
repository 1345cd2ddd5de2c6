"""Checkpoints: a folder of ``config.json`` + one ``NAME.safetensors`` per tensor group.

Layout of a checkpoint folder::

    config.json          the caller's config, with "kind" (what the checkpoint holds),
                         "checkpoint_files" (the files that must be present) and
                         "checkpoint_sizes" (their sizes in bytes); written last, it is the
                         completeness marker
    model.safetensors    one file per tensor group (model, ema, ...)
    extra.pt             optional non-tensor state (optimizer, RNG, step), torch.save'd and
                         read back only with torch.load(weights_only=True): no pickled code

A checkpoint is *complete* when its config.json parses and every file it lists is there with the
size it records (a checkpoint written before sizes were recorded: every file it lists is there).

Writes are atomic: everything goes into a temporary sibling folder ``.NAME.tmp-PID-N-HOST``, each
data file is fsync'ed, then config.json; then the old checkpoint is moved aside
(``.NAME.old-PID-N-HOST``), the new one renamed into place and the old one deleted. A save that
fails (an exception, a full disk) puts the old checkpoint back, removes its temporary folder and
raises. A kill at any point leaves the previous checkpoint or the new one, perhaps beside such
leftovers; when the checkpoint is missing or incomplete, the next load (:func:`load_checkpoint`,
:func:`load_state`, :func:`find_checkpoint`, given the checkpoint or its run folder) restores the
newest complete leftover, by its config's ``"step"`` and then by time, with a
:class:`CheckpointWarning` naming it. Leftovers of processes no longer running on this host are
deleted by the next save or load that finds the checkpoint complete; a running process's folders
(another save in progress) are never touched.

Test hook: with the environment variable ``DIFFLAB_TEST_PAUSE_IN_SAVE=SECONDS`` set,
:func:`save_checkpoint` sleeps that long after writing its temporary folder and again between the
two renames, so that a test can kill the process inside a write (tests/reliability).

What a diffusion model's (or a noisy classifier's) ``config.json`` holds is one typed record,
:class:`ModelRecord`: the trainer writes it and :class:`~difflab.pipelines.DiffusionModel`
reads it, so neither side spells out keys of its own.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import pickle
import re
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
EXTRA_FILE = "extra.pt"
PAUSE_ENV = "DIFFLAB_TEST_PAUSE_IN_SAVE"  # test hook (module docstring)
_FILES_KEY = "checkpoint_files"
_SIZES_KEY = "checkpoint_sizes"
_RESCUE = "restore the checkpoint from a copy, or resume from an older run"

# What a checkpoint holds (its config.json's "kind").
DIFFUSION_KIND = "diffusion"
CLASSIFIER_KIND = "noisy_classifier"  # ADM's noisy classifier, trained by the same loop
AUTOENCODER_KIND = "autoencoder"  # latent diffusion's KL / VQ autoencoders, trained by the same loop
CONTROLNET_KIND = "controlnet"  # a ControlNet: the control branch of a frozen diffusion run
LORA_KIND = "lora"  # a LoRA's adapters on a frozen diffusion run
EMBEDDING_KIND = "embedding"  # textual inversion's learned word for a frozen text model


class CheckpointWarning(UserWarning):
    """A load used something other than the current checkpoint: a copy an interrupted save left."""


# -- the sibling folders of a save: .NAME.tmp-PID-N-HOST (being written), .NAME.old-PID-N-HOST (moved aside) --
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0])[:32] or "host"
# what follows ".NAME." in a sibling's name (folders of earlier versions: just old-PID or tmp-PID)
_LEFTOVER = re.compile(r"(?P<tag>old|tmp)-(?P<pid>\d+)(?:-\d+-(?P<host>.+))?")
_WRITER_WAIT_S = 10.0  # how long a load waits for another process that has moved the checkpoint aside
_serial = itertools.count()  # distinct folders for saves in threads of one process
_in_use: set[str] = set()  # this process's sibling folders that a save is using right now
_lock = threading.Lock()  # one commit or restore at a time in this process


def _process_alive(pid: int) -> bool:
    if not 0 < pid < 2**31:
        return False  # no process has such an id (and os.kill would fail or signal a group)
    if os.name != "posix":
        return True  # no harmless probe (os.kill ends a process on Windows): keep its folders
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    try:  # a zombie (killed, not yet reaped) writes nothing more
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[:1] != ["Z"]
    except OSError:
        return True


@dataclass(frozen=True)
class _Leftover:
    path: Path
    tag: str  # "tmp" or "old"
    pid: int
    host: str | None  # None: named by a version that did not record the host

    @property
    def local(self) -> bool:
        return self.host in (None, _HOST)

    @property
    def stale(self) -> bool:
        """Left by a process of this host that no longer runs, or by this one outside any save."""
        if not self.local:
            return False
        if self.pid == os.getpid():
            return self.path.name not in _in_use
        return not _process_alive(self.pid)


def _sibling(path: Path, tag: str) -> Path:
    """A new sibling folder name of this process: ``.NAME.TAG-PID-N-HOST``."""
    path = Path(os.path.abspath(path))  # "." or "run/.." have a name only when spelled out
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{next(_serial)}-{_HOST}")


def _claim(path: Path, tag: str) -> Path:
    """A new sibling folder name, marked as in use (by a save of this process) until released."""
    sibling = _sibling(path, tag)
    _in_use.add(sibling.name)
    return sibling


def _leftovers(path: Path) -> list[_Leftover]:
    path = Path(os.path.abspath(path))
    prefix = f".{path.name}."
    try:
        names = [p.name for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []
    found = [(name, _LEFTOVER.fullmatch(name[len(prefix):])) for name in names]
    return [_Leftover(path.with_name(name), m["tag"], int(m["pid"]), m["host"]) for name, m in found if m]


# -- completeness -----------------------------------------------------------------------------------
def _read_config(folder: Path) -> dict:
    """``folder/config.json`` as a dict; a ValueError naming the file when it is not a JSON object."""
    config_path = folder / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{config_path} is not valid JSON ({err}): the checkpoint is damaged; {_RESCUE}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} holds a JSON {type(config).__name__}, not an object: "
                         "it is not a difflab checkpoint's config")
    return config


def _file_problem(folder: Path, name: str, sizes) -> str | None:
    file = folder / name
    if not file.is_file():
        return f"{name} is missing"
    expected = sizes.get(name) if isinstance(sizes, dict) else None
    size = file.stat().st_size
    if isinstance(expected, int) and size != expected:
        return f"{name} has {size} bytes, {expected} were written"
    return None


def _plain_names(files) -> bool:
    """Whether ``files`` (config.json's list) names files inside the folder, nothing else."""
    return isinstance(files, list) and all(isinstance(n, str) and n and Path(n).name == n != ".." for n in files)


def _problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None."""
    if not folder.is_dir():
        return "missing"
    try:
        config = _read_config(folder)
    except FileNotFoundError:
        return f"incomplete (no {CONFIG_FILE})"
    except (OSError, ValueError):
        return f"damaged (its {CONFIG_FILE} is not a JSON object)"
    files = config.get(_FILES_KEY)
    if not _plain_names(files) or "kind" not in config:
        return f"not a difflab checkpoint (its {CONFIG_FILE} lists no files)"
    for name in files:
        problem = _file_problem(folder, name, config.get(_SIZES_KEY))
        if problem:
            return f"incomplete ({problem})"
    return None


def _recorded_step(folder: Path) -> int | None:
    step = _read_config(folder).get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _newest(folders: list[Path]) -> Path:
    """The folder of the highest recorded step, then the latest config.json."""
    def key(folder: Path):
        step = _recorded_step(folder)
        return (-1 if step is None else step, (folder / CONFIG_FILE).stat().st_mtime)
    return max(folders, key=key)


# -- recovery after an interrupted save --------------------------------------------------------------
def _wait_for_writer(path: Path) -> None:
    """A process between its two renames has moved the checkpoint aside for a moment: wait for it."""
    deadline = time.monotonic() + _WRITER_WAIT_S
    while _problem(path) is not None and time.monotonic() < deadline:
        if not any(s.tag == "old" and s.local and not s.stale for s in _leftovers(path)):
            return
        time.sleep(0.05)


def _remove_stale(path: Path) -> None:
    for leftover in _leftovers(path):
        if leftover.stale:
            shutil.rmtree(leftover.path, ignore_errors=True)


def _restore(path: Path, problem: str) -> Path:
    """Put the newest complete leftover in place of a missing or incomplete ``path``; returns the
    folder to read (the leftover itself when it cannot be moved, e.g. in a read-only folder)."""
    candidates = [s.path for s in _leftovers(path) if (s.stale or not s.local) and _problem(s.path) is None]
    if not candidates:
        return path
    best = _newest(candidates)
    step = _recorded_step(best)
    used = best.name + ("" if step is None else f" (step {step})")
    try:
        if path.exists() or path.is_symlink():  # incomplete: moved aside, deleted as stale below
            os.replace(path, _sibling(path, "old"))
        os.replace(best, path)
        _fsync(path.parent)
    except OSError as err:
        if _problem(path) is None:  # another process restored it first
            return path
        warnings.warn(f"checkpoint {path} is {problem}; reading {used} instead, the newest complete copy an "
                      f"interrupted save left (it could not be moved into place: {err.strerror})",
                      CheckpointWarning, stacklevel=4)
        return best
    warnings.warn(f"checkpoint {path} was {problem}; restored {used}, the newest complete copy an interrupted "
                  "save left", CheckpointWarning, stacklevel=4)
    return path


def _recover(path: Path) -> Path:
    """The folder to read ``path``'s checkpoint from: ``path`` itself, once the newest complete
    leftover of an interrupted save replaces it if it is missing or incomplete. Deletes stale
    leftovers when the checkpoint is complete."""
    if not _leftovers(path):
        return path
    if _problem(path) is not None:
        _wait_for_writer(path)
    with _lock:
        problem = _problem(path)
        folder = path if problem is None else _restore(path, problem)
        if _problem(path) is None:
            _remove_stale(path)
    return folder


# -- writing -----------------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _test_pause() -> None:
    seconds = os.environ.get(PAUSE_ENV)
    if seconds:
        time.sleep(float(seconds))


def _write_files(folder: Path, config: dict, tensors: dict[str, dict[str, torch.Tensor]],
                 extra: dict | None) -> None:
    """The data files, each fsync'ed, then config.json (the completeness marker) and the folder."""
    folder.mkdir()
    data = [f"{group}.safetensors" for group in tensors]
    for group, state in tensors.items():
        contiguous = {name: t.detach().cpu().contiguous() for name, t in state.items()}
        save_file(contiguous, str(folder / f"{group}.safetensors"))
    if extra is not None:
        torch.save(extra, folder / EXTRA_FILE)
        data.append(EXTRA_FILE)
    for name in data:
        _fsync(folder / name)
    sizes = {name: (folder / name).stat().st_size for name in data}
    record = {**config, _FILES_KEY: [CONFIG_FILE, *data], _SIZES_KEY: sizes}
    (folder / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    _fsync(folder / CONFIG_FILE)
    _fsync(folder)


def _commit(path: Path, tmp: Path) -> None:
    """Move the current checkpoint aside, rename ``tmp`` into place, delete the old one; on any
    failure put the old one back."""
    old = _claim(path, "old") if path.exists() else None
    try:
        if old is not None:
            os.replace(path, old)
        _test_pause()
        os.replace(tmp, path)
    except BaseException:
        if old is not None and old.exists() and not path.exists():
            try:
                os.replace(old, path)
            except OSError:
                pass  # left for the next load to restore
        raise
    finally:
        if old is not None:
            _in_use.discard(old.name)
    _fsync(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _save_error(path: Path, err: OSError) -> OSError:
    why = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    where = f" (at {err.filename})" if err.filename else ""
    message = (f"could not save checkpoint {path}: {why}{where}; the previous checkpoint, if any, is kept "
               "and the temporary folder removed")
    return OSError(err.errno, message) if err.errno is not None else OSError(message)


def save_checkpoint(path: str | Path, config: dict, tensors: dict[str, dict[str, torch.Tensor]],
                    extra: dict | None = None) -> Path:
    """Write a checkpoint folder atomically; returns its path.

    Args:
        path: the checkpoint folder (replaced if it exists).
        config: JSON-serialisable settings; must hold ``"kind"`` (e.g. ``"classifier"``); its
            ``"step"``, when there is one, ranks the copies an interrupted save may leave.
        tensors: tensor groups, each written to ``GROUP.safetensors``.
        extra: optional state of plain Python values and tensors (``extra.pt``).

    Raises:
        OSError: the folder could not be written (full disk, read-only folder), naming it; the
            previous checkpoint is then kept as it was.
    """
    path = Path(path)
    if not isinstance(config.get("kind"), str):
        raise ValueError("a checkpoint config needs a 'kind' string saying what it holds")
    for group in tensors:
        if not group.isidentifier():
            raise ValueError(f"tensor group name {group!r} must be a plain identifier")
    tmp = _claim(path, "tmp")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_files(tmp, config, tensors, extra)
            _test_pause()
            with _lock:
                _commit(path, tmp)
        except OSError as err:
            raise _save_error(path, err) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _in_use.discard(tmp.name)
    with _lock:
        _remove_stale(path)  # left by earlier saves that were killed
    return path


# -- reading -----------------------------------------------------------------------------------------
def _read_tensors(file: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file), device=device)
    except SafetensorError as err:
        raise ValueError(f"{file} is damaged ({err}): the checkpoint cannot be read; {_RESCUE}") from None


def _read_extra(file: Path, map_location) -> dict:
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"it asks to import {found[1]}" if found else "it holds more than plain values and tensors"
        raise ValueError(f"{file} cannot be read: {what}, and difflab refuses to unpickle code from a checkpoint "
                         "(it may be damaged or not written by difflab); resume from a run difflab wrote, "
                         "or start afresh") from None
    except Exception as err:  # a truncated zip, garbage bytes, ...
        detail = str(err).splitlines()[0][:200] if str(err) else ""
        detail = type(err).__name__ + (f": {detail}" if detail and "weights_only" not in detail else "")
        raise ValueError(f"{file} is damaged ({detail}): the checkpoint cannot be read; {_RESCUE}") from None


def load_checkpoint(
    path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu", *,
    groups: Iterable[str] | None = None, with_extra: bool = True,
) -> tuple[dict, dict[str, dict[str, torch.Tensor]], dict | None]:
    """Read a checkpoint folder → (config, tensors by group, extra or None).

    A missing or incomplete checkpoint is first restored from what an interrupted save left
    (module docstring), with a :class:`CheckpointWarning`.

    Args:
        kind: when given, must match the checkpoint's ``"kind"``.
        groups: the tensor groups to read (e.g. ``["ema"]``); default: all.
        with_extra: read ``extra.pt``; False for inference, which needs no optimizer state (extra is None).

    Raises:
        FileNotFoundError: no checkpoint at ``path``, or a file it needs is missing.
        ValueError: not a difflab checkpoint, another kind, an unknown group, or a damaged or
            unsafe file (named in the message).
    """
    path = Path(path)
    folder = _recover(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not a difflab checkpoint: it has no {CONFIG_FILE}")
    config = _read_config(folder)
    files = config.pop(_FILES_KEY, None)
    sizes = config.pop(_SIZES_KEY, None)
    if not _plain_names(files) or "kind" not in config:
        raise ValueError(f"{folder} is not a difflab checkpoint (its {CONFIG_FILE} has no 'kind' or no list of "
                         "the files in the folder)")
    if kind is not None and config["kind"] != kind:
        raise ValueError(f"{folder} is a {config['kind']!r} checkpoint, expected a {kind!r} one")
    stored = [name.removesuffix(".safetensors") for name in files if name.endswith(".safetensors")]
    wanted = stored if groups is None else [groups] if isinstance(groups, str) else list(groups)
    unknown = [group for group in wanted if group not in stored]
    if unknown:
        raise ValueError(f"checkpoint {folder} has no tensor group {unknown[0]!r}; it holds {', '.join(stored)}")
    needed = [f"{group}.safetensors" for group in wanted]
    if with_extra and EXTRA_FILE in files:
        needed.append(EXTRA_FILE)
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {folder} is incomplete: missing {', '.join(missing)}; {_RESCUE}")
    for name in needed:
        problem = _file_problem(folder, name, sizes)
        if problem:
            raise ValueError(f"{folder / name} is damaged ({problem}): the checkpoint cannot be read; {_RESCUE}")
    device = str(map_location)
    tensors = {group: _read_tensors(folder / f"{group}.safetensors", device) for group in wanted}
    extra = _read_extra(folder / EXTRA_FILE, map_location) if EXTRA_FILE in needed else None
    return config, tensors, extra


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder holding one in ``checkpoint/``; a missing or incomplete
    one is restored first from what an interrupted save left (module docstring)."""
    path = Path(path)
    inner = path / "checkpoint"
    if inner.is_dir() or _leftovers(inner):
        return _recover(inner)
    return _recover(path)


def load_state(path: str | Path, kind: str = DIFFUSION_KIND, map_location: str | torch.device = "cpu", *,
               groups: Iterable[str] | None = None, with_extra: bool = True):
    """(config, tensors, extra) of a run's checkpoint of this kind (a run folder or its checkpoint
    folder); a clear error for anything else. ``groups``, ``with_extra``: see :func:`load_checkpoint`."""
    return load_checkpoint(find_checkpoint(path), kind=kind, map_location=map_location, groups=groups,
                           with_extra=with_extra)


@dataclass
class ModelRecord:
    """The ``config.json`` of a diffusion model's (or noisy classifier's) checkpoint, typed.

    Attributes:
        kind: :data:`DIFFUSION_KIND` or :data:`CLASSIFIER_KIND`.
        model: the network's config (rebuilds it with :func:`difflab.models.build_model`).
        schedule: the noise schedule's config (:func:`difflab.schedules.schedule_from_config`).
        prediction: what the network predicts: ``epsilon``, ``x0`` or ``v``.
        learned_variance: the network also outputs improved DDPM's variance interpolation.
        image_shape: (C, H, W) of what the network sees (latents for a latent model).
        class_names: the classes of a class-conditional model (or a classifier); empty otherwise.
        text_encoder: the text encoder of a caption-conditioned model; None otherwise.
        image_condition: the image concatenated to the network's input (``"inpaint"``: mask and
            masked image, :mod:`difflab.image_condition`); None otherwise.
        latent: a latent model's autoencoder (:meth:`difflab.latent.LatentSpace.to_config`).
        train_config: the whole training config (:class:`difflab.training.config.Config` as a dict).
        step: the training step the weights are from.
        init_from: where a fine-tuned run's starting weights came from (``train --init-from``).
        distilled: what a progressively distilled student (``difflab distill``) was trained for:
            ``{"method": "ddim", "steps", "sigmas" (its exact noise levels, ending in 0), "spacing",
            "guidance_range" ([lo, hi] of the w input, or None), "teacher": {"path", "step",
            "steps"}, "start_steps"}``; a consistency-distilled one (``--method consistency``):
            ``{"method": "consistency", "steps" (its default), "sigmas" (that default's levels),
            "levels" (the N + 1 it was trained on), "spacing", "guidance_range", "teacher"}``; an
            adversarially refined one adds ``"adversarial"`` (what refined it) and
            ``"guidance_interval"`` ([σ_lo, σ_hi] it was refined and samples with, or None); None
            for any other run. Sampling uses exactly that grid (a consistency run: k of its levels).
        other: keys this version does not know, kept so that a rewrite loses nothing.
    """

    kind: str
    model: dict
    schedule: dict
    image_shape: tuple[int, int, int]
    prediction: str = "epsilon"
    learned_variance: bool = False
    class_names: list[str] = field(default_factory=list)
    text_encoder: dict | None = None
    image_condition: str | None = None
    latent: dict | None = None
    train_config: dict = field(default_factory=dict)
    step: int | None = None
    init_from: dict | None = None
    distilled: dict | None = None
    other: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON mapping written to ``config.json``."""
        record = asdict(self)
        record["image_shape"] = list(self.image_shape)
        return {**record.pop("other"), **record}

    @classmethod
    def from_dict(cls, config: dict, path: str | Path = "") -> ModelRecord:
        """Read a ``config.json`` mapping (any version so far: missing optional keys default)."""
        names = {f.name for f in fields(cls)} - {"other"}
        missing = [key for key in ("kind", "model", "schedule", "image_shape") if key not in config]
        if missing:
            raise ValueError(f"{path or 'the checkpoint'} lacks {', '.join(missing)} in its {CONFIG_FILE}: "
                             "it was not written by `difflab train`")
        known = {key: value for key, value in config.items() if key in names}
        known["image_shape"] = tuple(known["image_shape"])
        known["class_names"] = list(known.get("class_names") or [])
        return cls(**known, other={key: value for key, value in config.items() if key not in names})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def conditional(self) -> bool:
        """Whether the network takes class labels or captions."""
        return self.num_classes > 0 or self.text_encoder is not None

    @property
    def trained_with_label_dropout(self) -> bool:
        """Whether the null label / empty caption was trained (``diffusion.cond_drop_prob > 0``):
        what classifier-free guidance needs."""
        return self.train_config.get("diffusion", {}).get("cond_drop_prob", 0.0) > 0

    @property
    def low_res(self) -> dict | None:
        """A super-resolution model's low-resolution input: ``{"size", "upsample", "aug_max"}``
        (from the training config); None for any other model."""
        if self.image_condition != "low_res":
            return None
        d = self.train_config.get("diffusion", {})
        return {"size": d.get("low_res"), "upsample": d.get("low_res_upsample", "bicubic"),
                "aug_max": d.get("aug_max", 0.0)}

    @property
    def takes_guidance_scale(self) -> bool:
        """Whether the network takes the guidance weight w as an input (distilled for guided sampling)."""
        return bool(self.model.get("guidance_embed"))

    @property
    def sample_defaults(self) -> dict:
        """The training config's ``sample`` section: method, steps, spacing, guidance_scale."""
        return self.train_config.get("sample", {})


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A SHA-256 of a network's weights: every tensor's name, dtype, shape and bytes (in the
    standard contiguous layout, so channels-last copies hash alike), in name order. A ControlNet
    records its base's, so a changed base is detected."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
