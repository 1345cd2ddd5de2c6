"""The training loop, top to bottom: data → the objective's loss → optimizer, EMA, logs,
previews, checkpoints. Runs as one process or under ``torchrun`` (DDP).

What is trained — a diffusion model, ADM's noisy classifier, a KL / VQ autoencoder — is an
:class:`~difflab.training.objectives.Objective` (chosen by ``model.name``): it builds the
network's config, draws the step's randomness, computes the loss, writes previews and says what
the checkpoint records. Everything else is here, the same for every objective.

Determinism: everything random in step s — the batch, t, ε, flips, label dropout, dropout —
comes from generators seeded by (seed, s), and every process draws the *global* batch's
randomness and keeps its own slice. So a resumed run repeats the uninterrupted run's losses
exactly, and N processes compute the same update as one process with the same global batch.
What an objective learns from past losses (importance-sampled t) it learns from the global
batch's losses, gathered from every process (``Objective.observe``), and it is checkpointed
(``Objective.state_dict``), so both still hold.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import find_checkpoint, load_state
from ..data.convert import random_crop, random_hflip, random_placement, to_float
from ..data.load import load_dataset
from ..device import bf16_autocast, memory_format
from ..images import check_output_folder
from ..latent import LatentSpace
from ..models import build_model
from ..run_lock import RunLock
from . import distributed
from .config import Config, ConfigError, validate
from .divergence import DivergenceGuard, TrainingDiverged, all_finite, tensors_finite
from .ema import EMA
from .fast_paths import clip_gradients, make_optimizer, match_optimizer_state_layout
from .init_from import load_initial_weights, state_dict_mismatch
from .lr_schedule import lr_lambda
from .objectives import Objective, TrainingData, objective_for, take_rows
from .posthoc_ema import PowerEMA, remove_snapshots_after
from .state import apply_optimizer_settings, check_resume_config, save_training_state

__all__ = ["CheckpointNotWritten", "TrainingDiverged", "batch_indices", "train"]


class CheckpointNotWritten(OSError):
    """A checkpoint could not be written (full disk, read-only folder); the previous one is kept."""


def batch_indices(n: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the global batch of ``step``: consecutive slices of a per-epoch permutation
    (seeded by the epoch), so every image is seen once per epoch and any step can be recomputed."""
    per_epoch = max(1, n // batch)
    epoch, position = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[position * batch : (position + 1) * batch]


def exclude_classes(dataset, names: tuple[str, ...]):
    """``dataset`` without the images of the classes ``names`` (which keep their label indices, so
    a model trained without a class still has its slot: personalisation adds it back)."""
    if not names:
        return dataset
    lower = [c.lower() for c in dataset.class_names]  # "ankle boot" names "Ankle boot"
    unknown = [name for name in names if name.lower() not in lower]
    if unknown:
        raise ConfigError(f"config key 'data.exclude_classes': {unknown[0]!r} is not a class of {dataset.name} "
                          f"({', '.join(dataset.class_names) or 'it has no classes'})")
    drop = torch.tensor([lower.index(name.lower()) for name in names])
    kept = ~torch.isin(dataset.labels, drop)
    return dataset.subset(kept, name=f"{dataset.name} without {', '.join(names)}")


def _step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device).manual_seed((seed * 7_919 + step) % (2**63 - 1))


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows of ``metrics.jsonl`` up to ``step`` (a resumed run logs the later steps
    again) and drop a line a kill cut short; written to a temporary file that replaces it."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Logger:
    """JSONL metrics (and TensorBoard when installed), written by the main process only."""

    def __init__(self, out: Path, enabled: bool, resumed_at: int = 0):
        self.enabled = enabled
        if enabled and resumed_at:
            truncate_metrics(out / "metrics.jsonl", resumed_at)
        self.file = open(out / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115 (closed by close())
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # tensorboard is optional: pip install tensorboard
                self.tb = None

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def train(config: Config, resume: str | Path | None = None, progress: bool = True, *,
          init_from: str | Path | None = None, objective: type[Objective] | None = None) -> Path:
    """Train what ``config`` says; returns the checkpoint folder.

    Args:
        resume: continue the run whose checkpoint (or run folder) this is: its weights, optimizer
            state and step, with this ``config``'s settings (docs/training.md says which may change).
        init_from: start a new run from the model and EMA weights of this run's checkpoint (fine-tuning;
            ``--init-from``): fresh optimizer and schedule, step 0; the architectures must match.
        objective: the :class:`~difflab.training.objectives.Objective` subclass to train; default: the
            one ``config.model.name`` selects (diffusion model, noisy classifier or autoencoder).

    Raises:
        ConfigError: a wrong config value (before any data is loaded), a setting a resumed run cannot change.
        RunLocked: another process writes to ``train.out_dir`` (:mod:`difflab.run_lock`).
        OSError: the output folder cannot be written (checked first), or a checkpoint could not be
            (:class:`CheckpointNotWritten`; the previous one is kept).
        TrainingDiverged: the loss, gradients or weights blew up; the last good checkpoint is kept.
    """
    if resume is not None and init_from is not None:
        raise ConfigError("--resume and --init-from exclude each other: --resume continues a run (weights, "
                          "optimizer, step), --init-from starts a new run from another run's weights")
    cfg = validate(config)
    try:
        rt = distributed.setup(cfg.train.device)
    except ValueError as err:  # an unknown device, or a GPU that is not there
        raise ConfigError(f"config key 'train.device': {err}") from None
    try:
        torch.empty(1, device=rt.device)
    except RuntimeError as err:  # a device torch knows by name but was not built for (mps, xpu)
        raise ConfigError(f"config key 'train.device' ({cfg.train.device!r}): {err}") from None
    out = Path(cfg.train.out_dir)
    lock, failure = None, None
    if rt.is_main:  # one writer per run folder, checked before anything is written or loaded
        try:
            check_output_folder(out)
            out.mkdir(parents=True, exist_ok=True)
            lock = RunLock(out).acquire()
        except OSError as err:
            failure = err
    if rt.distributed and distributed.any_process(failure is not None, rt.device):
        raise failure or OSError(f"process 0 could not take the run folder {out}; see its error")
    if failure is not None:
        raise failure
    try:
        return _train(cfg, rt, out, resume, init_from, objective or objective_for(cfg), progress)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Config, rt: distributed.Runtime, out: Path, resume, init_from, objective_cls: type[Objective],
           progress: bool) -> Path:
    device = rt.device
    if cfg.optim.batch_size % (rt.world_size * cfg.optim.grad_accum):
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} must divide evenly over {rt.world_size} processes "
            f"x {cfg.optim.grad_accum} accumulation steps"
        )
    saved = tensors = extra = None
    if resume is not None:  # read first: a setting the run cannot change fails before the data loads
        saved, tensors, extra = load_state(resume, kind=objective_cls.kind)
        check_resume_config(saved, cfg, resume)

    # -- data: decoded once into a uint8 tensor that lives on the device --------------------
    try:
        dataset = load_dataset(cfg.data.dataset, cfg.data.split, cfg.data.resolution, cfg.data.channels)
    except ValueError as err:
        raise ConfigError(f"config key 'data.dataset' ({cfg.data.dataset!r}): {err}") from None
    dataset = exclude_classes(dataset, cfg.data.exclude_classes)
    if cfg.data.repeats > 1:
        dataset = dataset.subset(torch.arange(len(dataset)).repeat(cfg.data.repeats),
                                 name=f"{dataset.name} ({cfg.data.repeats} times)")
    images = dataset.images.to(device)
    latent, latent_cache = None, None
    if cfg.data.autoencoder:  # latent diffusion: train on scale·E(x) of a frozen autoencoder
        latent = LatentSpace.from_checkpoint(cfg.data.autoencoder, device)
        if cfg.data.latent_cache:  # encoded once (and once flipped, for data.hflip)
            encode_g = torch.Generator(device).manual_seed(cfg.train.seed)
            latent_cache = [latent.encode_all(images, generator=encode_g, progress=progress and rt.is_main)]
            if cfg.data.hflip:
                latent_cache.append(latent.encode_all(images.flip(-1), generator=encode_g))
    objective = objective_cls(cfg, TrainingData(dataset, images, latent, device))  # checks the config against the data
    if cfg.optim.batch_size > len(dataset):
        raise ConfigError(f"config key 'optim.batch_size' must be at most the number of training images "
                          f"({len(dataset)} in {dataset.name}), got {cfg.optim.batch_size}; or repeat the images "
                          "with data.repeats")

    # -- the model, its EMA, the optimizer; weights from a checkpoint to resume or fine-tune --
    torch.manual_seed(cfg.train.seed)  # the same initial weights in every run and process
    try:
        model = build_model(objective.model_spec()).to(device)
    except (ValueError, TypeError) as err:  # an unknown model, preset or option
        raise ConfigError(f"config section 'model' ({cfg.model.name!r}, preset {cfg.model.preset!r}): {err}") from None
    model = memory_format(model, cfg.train.channels_last)  # before the EMA copy and the optimizer
    objective.attach(model)
    ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)
    power_ema = PowerEMA(model, cfg.train.posthoc_ema_sigma_rels) if cfg.train.posthoc_ema_every else None
    optimizer = make_optimizer(model.parameters(), device, cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay)
    schedule_lr = lr_lambda(cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.lr_schedule, cfg.optim.min_lr_fraction)
    start, provenance = 0, None  # provenance: where a fine-tuned run's first weights came from
    guard = DivergenceGuard()
    if resume is not None:
        problem = state_dict_mismatch(tensors["model"], model.state_dict())
        if problem:
            raise ConfigError(f"cannot resume {resume}: its weights do not fit this run's model: {problem}; resume "
                              "with the run's own model and data settings")
        model.load_state_dict(tensors["model"])
        ema.load_state_dict(tensors["ema"])
        if power_ema is not None:
            _resume_power_ema(power_ema, tensors, resume, out, int(extra["step"]), rt.is_main)
        optimizer.load_state_dict(extra["optimizer"])
        match_optimizer_state_layout(optimizer)  # the moments in the parameters' layout
        apply_optimizer_settings(optimizer, cfg.optim)  # this config's lr, betas, weight decay: not the saved ones
        start, provenance = int(extra["step"]), saved.get("init_from")
        objective.load_state_dict(extra.get("objective", {}))  # e.g. importance sampling's loss history
        guard.saved(find_checkpoint(resume), start)
    elif init_from is not None:
        provenance = load_initial_weights(init_from, objective.kind, model, ema, latent)
    # the schedule's factor depends on the step alone: a resumed run continues the curve at its step
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_lr, last_epoch=start - 1)
    if rt.is_main:
        summary = model.summary() if hasattr(model, "summary") else type(model).__name__
        print(f"difflab train: {summary}; {len(dataset)} images of {dataset.name}; device {device}"
              + (f" x{rt.world_size}" if rt.distributed else "") + (f"; resuming at step {start}" if start else "")
              + (f"; weights of {init_from} (step {provenance['step']})" if init_from is not None else ""))

    use_cuda = device.type == "cuda"
    net = DistributedDataParallel(model, device_ids=[device] if use_cuda else None) if rt.distributed else model
    if cfg.train.compile:
        net = torch.compile(net)
    autocast = bf16_autocast(device, cfg.train.bf16, cfg.train.bf16_cpu)

    ckpt_config = objective.checkpoint_config(init_from=provenance)  # config.json, besides kind and step
    ckpt_path = out / "checkpoint"
    logger = _Logger(out, rt.is_main, resumed_at=start)
    bar = None
    if progress and rt.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    global_batch = cfg.optim.batch_size
    local_batch = global_batch // rt.world_size
    micro = local_batch // cfg.optim.grad_accum
    running_loss = torch.zeros((), device=device)
    running_metrics: dict[str, torch.Tensor] = {}  # besides the loss: classifier accuracy, autoencoder terms
    gradients_finite = torch.ones((), dtype=torch.bool, device=device)  # over the log window, no sync per step
    window_start, window_steps = time.perf_counter(), 0
    clock_start = None  # wall clock of the time budget, started after the first (compiling) step

    @torch.no_grad()
    def loss_after_update(micro_inputs) -> float:
        """The new weights' loss on the step's last micro-batch, in eval mode (no state changes)."""
        model.eval()
        try:
            with autocast:
                return objective.loss(model, micro_inputs).loss.float().item()
        finally:
            model.train()

    net.train()
    for step in range(start, cfg.train.steps):
        # -- the global batch of this step and all its randomness, sliced to this process --
        g = _step_generator(cfg.train.seed, step, device)
        torch.manual_seed(cfg.train.seed * 7_919 + step)  # dropout
        idx = batch_indices(len(images), global_batch, step, cfg.train.seed).to(device)
        pixels = None  # the pixels of a latent batch, for an objective that needs them
        if latent_cache is not None:
            x0 = latent_cache[0][idx]
            flip = None
            if cfg.data.hflip:
                flip = (torch.rand(global_batch, generator=g, device=device) < 0.5).view(-1, 1, 1, 1)
                x0 = torch.where(flip, latent_cache[1][idx], x0)
            if objective.needs_pixels:
                pixels = to_float(images[idx])
                pixels = pixels if flip is None else torch.where(flip, pixels.flip(-1), pixels)
        else:
            x0 = to_float(images[idx])
            if cfg.data.hflip:
                x0 = random_hflip(x0, g)
            if cfg.data.random_crop:
                x0 = random_crop(x0, cfg.data.random_crop, g)
            if cfg.data.random_placement:
                x0 = random_placement(x0, cfg.data.random_placement, g)
            if latent is not None:  # encoded on the fly
                pixels = x0 if objective.needs_pixels else None
                x0 = latent.encode(x0, generator=g)
        # t, ε, label dropout, ...: the whole global batch's (the pixels only to an objective that asks)
        global_inputs = objective.draw(x0, idx, step, g, pixels=pixels) if objective.needs_pixels else \
            objective.draw(x0, idx, step, g)
        inputs = take_rows(global_inputs, slice(rt.rank * local_batch, (rt.rank + 1) * local_batch))

        # -- forward / backward over micro-batches -----------------------------------------
        per_sample = []  # the rows' losses, for an objective that observes them
        for k in range(cfg.optim.grad_accum):
            last = k == cfg.optim.grad_accum - 1
            sync = nullcontext() if (last or not rt.distributed) else net.no_sync()
            micro_inputs = take_rows(inputs, slice(k * micro, (k + 1) * micro))
            with sync, autocast:
                out_k = objective.loss(net, micro_inputs)
                (out_k.loss / cfg.optim.grad_accum).backward()
            running_loss += out_k.loss.detach().float() / cfg.optim.grad_accum
            if out_k.per_sample is not None:
                per_sample.append(out_k.per_sample.detach().float())
            for name, value in out_k.metrics.items():  # logged besides the loss
                running_metrics[name] = running_metrics.get(name, 0) + value.float() / cfg.optim.grad_accum
        if per_sample:  # the global batch's losses in row order, the same on every process
            rows = torch.cat(per_sample)
            objective.observe(global_inputs, distributed.gather(rows) if rt.distributed else rows)
        grad_norm = None
        if cfg.optim.grad_clip:
            grad_norm = clip_gradients(model.parameters(), cfg.optim.grad_clip)
            gradients_finite &= torch.isfinite(grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr_scheduler.step()
        ema.update(model, step)
        if power_ema is not None:
            power_ema.update(model, step + 1)
        window_steps += 1
        done = step + 1
        if clock_start is None:
            clock_start = time.perf_counter()
        out_of_time = bool(cfg.train.max_seconds) and time.perf_counter() - clock_start >= cfg.train.max_seconds
        if cfg.train.max_seconds and rt.distributed:  # every process must stop at the same step
            out_of_time = distributed.any_process(out_of_time, device)
        final = done == cfg.train.steps or out_of_time

        # -- logs (and the divergence checks), previews, checkpoints ---------------------------
        if done % cfg.train.log_every == 0 or final:
            window_loss = running_loss / window_steps
            if rt.distributed:  # the global batch's loss: every process judges the same number
                window_loss = distributed.mean(window_loss)
            loss_value = window_loss.item()
            guard.window(done, loss_value, bool(gradients_finite))
            elapsed = time.perf_counter() - window_start
            values = {"loss": loss_value, "lr": lr_scheduler.get_last_lr()[0],
                      "images_per_s": window_steps * global_batch / max(elapsed, 1e-9)}
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
            values.update({name: value.item() / max(1, window_steps) for name, value in running_metrics.items()})
            running_metrics.clear()
            logger.log(done, values)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{values['images_per_s']:.0f}")
            running_loss.zero_()
            window_start, window_steps = time.perf_counter(), 0
        if bar is not None:
            bar.update(1)
        if done % cfg.train.checkpoint_every == 0 or final:  # before the preview, which cannot lose it then
            # never checkpoint weights that a NaN or an exploding update has touched
            before, after = out_k.loss.item(), loss_after_update(micro_inputs)
            if rt.distributed:  # each process evaluated its own micro-batch: the worst one counts
                before, after = (distributed.maximum(v, device) for v in (before, after))
            if guard.before_save(done, all_finite(model, ema.shadow), before, after, final):
                _save_checkpoint(rt, guard, objective, ckpt_path, ckpt_config, model, ema, latent, optimizer,
                                 lr_scheduler, done, final, resume_hint=out, power_ema=power_ema)
            elif rt.is_main:
                print(f"difflab train: no checkpoint at step {done}: the loss is far above its median "
                      "(docs/training.md, Reliability); the last good one is kept")
        if power_ema is not None and rt.is_main and (done % cfg.train.posthoc_ema_every == 0 or final):
            _save_power_ema_snapshot(power_ema, out, done)
        if cfg.train.sample_every and (done % cfg.train.sample_every == 0 or final):
            if not all_finite(ema.shadow):  # every process: the weights are the same everywhere
                raise guard.diverged(f"the weights became NaN or inf by step {done}")
            if rt.is_main:
                objective.preview(ema.shadow, out / "samples" / f"step-{done:07d}.png")  # none for a classifier
        if out_of_time:
            if rt.is_main:
                print(f"difflab train: time budget of {cfg.train.max_seconds:g} s reached at step {done}")
            break
    if bar is not None:
        bar.close()
    logger.close()
    distributed.teardown(rt)
    if rt.is_main and objective.ships_tuned_levels:
        _ship_tuned_levels(cfg, objective, ckpt_path, 0.0 if clock_start is None else time.perf_counter() - clock_start,
                           device)
    return ckpt_path


def _ship_tuned_levels(cfg: Config, objective: Objective, checkpoint: Path, trained_seconds: float, device) -> None:
    """``train.tune_steps``: fit the sampler's levels to the finished model, as ``difflab
    tune-steps`` does, within ``train.tune_seconds``. The checkpoint is complete before this
    starts, so a failure or Ctrl-C here costs the tuned levels only, never the run."""
    from ..pipelines.tune import (
        CALIBRATION_IMAGES,
        MIN_BUDGET_S,
        ship_tuned_levels,
        shipped_budget,
        shipped_step_counts,
    )

    counts = shipped_step_counts(cfg.train.tune_steps, cfg.sample.steps)
    if not counts:
        return
    seconds = shipped_budget(cfg.train.tune_seconds, trained_seconds)
    if seconds is None:
        print(f"difflab train: sampler levels not tuned: a tenth of {trained_seconds:.0f} s of training is under the "
              f"{MIN_BUDGET_S:.0f} s a search needs (train.tune_seconds sets a budget; `difflab tune-steps` tunes "
              "later)")
        return
    print(f"difflab train: tuning the sampler's levels at {', '.join(map(str, counts))} steps for up to "
          f"{seconds:.0f} s (train.tune_steps: [] turns it off)")
    try:
        lines = ship_tuned_levels(checkpoint, counts, seconds, device=device,
                                  prompts=objective.calibration_prompts(CALIBRATION_IMAGES))
    except KeyboardInterrupt:
        lines = ["interrupted: the checkpoint is complete; `difflab tune-steps` tunes it later"]
    except (ValueError, RuntimeError, OSError) as err:
        lines = [f"not tuned ({err}); the checkpoint is complete"]
    for line in lines:
        print(f"difflab train: tuned levels: {line}")


def _resume_power_ema(power_ema: PowerEMA, tensors: dict, resume, out: Path, step: int, is_main: bool) -> None:
    """Restore the post-hoc averages of a resumed run, and drop the snapshots its killed process
    wrote after the checkpoint (those steps run again)."""
    try:
        power_ema.load(tensors)
    except ValueError:
        raise ConfigError(f"cannot resume {resume} with train.posthoc_ema_every: the run was trained without post-hoc "
                          "EMA, so its checkpoint has no averages to continue; resume with train.posthoc_ema_every=0, "
                          "or start a new run (--init-from keeps the weights)") from None
    if is_main:
        remove_snapshots_after(out, step)


def _save_power_ema_snapshot(power_ema: PowerEMA, out: Path, step: int) -> None:
    """``train.posthoc_ema_every``: one snapshot of the averages; a failed write costs that snapshot
    only (post-hoc reconstruction uses the others), never the run."""
    if not tensors_finite(v for average in power_ema.averages for v in average.values()):
        print(f"difflab train: no post-hoc EMA snapshot at step {step}: the averages are not finite")
        return
    try:
        power_ema.save_snapshot(out, step)
    except OSError as err:
        print(f"difflab train: post-hoc EMA snapshot of step {step} not written ({err}); training goes on")


def _save_checkpoint(rt, guard: DivergenceGuard, objective: Objective, path: Path, ckpt_config: dict, model, ema,
                     latent, optimizer, lr_scheduler, step: int, final: bool, resume_hint: Path,
                     power_ema: PowerEMA | None = None) -> None:
    """Write the checkpoint of ``step`` (main process); a full disk or a read-only folder stops the
    run with one :class:`CheckpointNotWritten` that says what is kept."""
    failure = None
    if rt.is_main:
        if final:  # e.g. an autoencoder's latent scale and held-out PSNR, from the EMA weights
            ckpt_config.update(objective.finalize(ema.shadow))
        try:
            save_training_state(path, kind=objective.kind, config=ckpt_config, model=model, ema=ema.shadow,
                                extra_tensors={**({"autoencoder": latent.autoencoder.state_dict()} if latent else {}),
                                               **(power_ema.tensors() if power_ema is not None else {})} or None,
                                optimizer=optimizer, lr_scheduler=lr_scheduler, step=step,
                                objective_state=objective.state_dict())
        except OSError as err:
            kept = (f"the last good checkpoint is the one of step {guard.good[1]} ({guard.good[0]})" if guard.good
                    else "no checkpoint of this run is on disk")
            failure = CheckpointNotWritten(f"checkpoint of step {step} not written: {err.strerror or err}. So "
                                           f"{kept}: free space or fix the folder's permissions, then continue "
                                           f"with --resume {resume_hint}")
            failure.errno = err.errno  # ENOSPC, EACCES, ...: for callers that branch on it
    if rt.distributed and distributed.any_process(failure is not None, rt.device):
        raise failure or CheckpointNotWritten(f"process 0 could not write the checkpoint of step {step}")
    if failure is not None:
        raise failure
    guard.saved(path, step)
