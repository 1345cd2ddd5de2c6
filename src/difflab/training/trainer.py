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
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import load_state
from ..data.convert import random_crop, random_hflip, to_float
from ..data.load import load_dataset
from ..device import bf16_autocast, memory_format
from ..latent import LatentSpace
from ..models import build_model
from . import distributed
from .config import Config, ConfigError
from .ema import EMA
from .fast_paths import clip_gradients, make_optimizer, match_optimizer_state_layout
from .init_from import load_initial_weights
from .lr_schedule import lr_lambda
from .objectives import Objective, TrainingData, objective_for, take_rows
from .state import save_training_state

__all__ = ["TrainingDiverged", "batch_indices", "train"]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or inf."""


def batch_indices(n: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the global batch of ``step``: consecutive slices of a per-epoch permutation
    (seeded by the epoch), so every image is seen once per epoch and any step can be recomputed."""
    per_epoch = max(1, n // batch)
    epoch, position = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[position * batch : (position + 1) * batch]


def _step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device).manual_seed((seed * 7_919 + step) % (2**63 - 1))


class _Logger:
    """JSONL metrics (and TensorBoard when installed), written by the main process only."""

    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
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
        resume: continue the run whose checkpoint (or run folder) this is: its weights, optimizer,
            learning-rate schedule and step.
        init_from: start a new run from the model and EMA weights of this run's checkpoint (fine-tuning;
            ``--init-from``): fresh optimizer and schedule, step 0; the architectures must match.
        objective: the :class:`~difflab.training.objectives.Objective` subclass to train; default: the
            one ``config.model.name`` selects (diffusion model, noisy classifier or autoencoder).
    """
    if resume is not None and init_from is not None:
        raise ConfigError("--resume and --init-from exclude each other: --resume continues a run (weights, "
                          "optimizer, step), --init-from starts a new run from another run's weights")
    rt = distributed.setup(config.train.device)
    device, cfg = rt.device, config
    out = Path(cfg.train.out_dir)
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.optim.batch_size % (rt.world_size * cfg.optim.grad_accum):
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} must divide evenly over {rt.world_size} processes "
            f"x {cfg.optim.grad_accum} accumulation steps"
        )

    # -- data: decoded once into a uint8 tensor that lives on the device --------------------
    dataset = load_dataset(cfg.data.dataset, cfg.data.split, cfg.data.resolution, cfg.data.channels)
    images = dataset.images.to(device)
    latent, latent_cache = None, None
    if cfg.data.autoencoder:  # latent diffusion: train on scale·E(x) of a frozen autoencoder
        latent = LatentSpace.from_checkpoint(cfg.data.autoencoder, device)
        if cfg.data.latent_cache:  # encoded once (and once flipped, for data.hflip)
            encode_g = torch.Generator(device).manual_seed(cfg.train.seed)
            latent_cache = [latent.encode_all(images, generator=encode_g, progress=progress and rt.is_main)]
            if cfg.data.hflip:
                latent_cache.append(latent.encode_all(images.flip(-1), generator=encode_g))
    objective = (objective or objective_for(cfg))(cfg, TrainingData(dataset, images, latent, device))

    # -- the model, its EMA, the optimizer; weights from a checkpoint to resume or fine-tune --
    torch.manual_seed(cfg.train.seed)  # the same initial weights in every run and process
    model = build_model(objective.model_spec()).to(device)
    model = memory_format(model, cfg.train.channels_last)  # before the EMA copy and the optimizer
    objective.attach(model)
    ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)
    optimizer = make_optimizer(model.parameters(), device, cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay)
    try:
        schedule_lr = lr_lambda(cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.lr_schedule,
                                cfg.optim.min_lr_fraction)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_lr)
    start, provenance = 0, None  # provenance: where a fine-tuned run's first weights came from
    if resume is not None:
        saved, tensors, extra = load_state(resume, kind=objective.kind)
        model.load_state_dict(tensors["model"])
        ema.load_state_dict(tensors["ema"])
        optimizer.load_state_dict(extra["optimizer"])
        match_optimizer_state_layout(optimizer)  # the moments in the parameters' layout
        lr_scheduler.load_state_dict(extra["lr_scheduler"])
        start, provenance = int(extra["step"]), saved.get("init_from")
    elif init_from is not None:
        provenance = load_initial_weights(init_from, objective.kind, model, ema, latent)
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
    logger = _Logger(out, rt.is_main)
    bar = None
    if progress and rt.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    global_batch = cfg.optim.batch_size
    local_batch = global_batch // rt.world_size
    micro = local_batch // cfg.optim.grad_accum
    running_loss = torch.zeros((), device=device)
    running_metrics: dict[str, torch.Tensor] = {}  # besides the loss: classifier accuracy, autoencoder terms
    window_start, window_steps = time.perf_counter(), 0
    clock_start = None  # wall clock of the time budget, started after the first (compiling) step

    def check_loss(step):
        value = running_loss.item() / max(1, window_steps)
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"the loss became {value} by step {step}: training diverged. Lower optim.lr, set "
                f"optim.grad_clip, or check the data; the last good checkpoint ({ckpt_path}) is kept"
            )
        return value

    net.train()
    for step in range(start, cfg.train.steps):
        # -- the global batch of this step and all its randomness, sliced to this process --
        g = _step_generator(cfg.train.seed, step, device)
        torch.manual_seed(cfg.train.seed * 7_919 + step)  # dropout
        idx = batch_indices(len(images), global_batch, step, cfg.train.seed).to(device)
        if latent_cache is not None:
            x0 = latent_cache[0][idx]
            if cfg.data.hflip:
                flip = (torch.rand(global_batch, generator=g, device=device) < 0.5).view(-1, 1, 1, 1)
                x0 = torch.where(flip, latent_cache[1][idx], x0)
        else:
            x0 = to_float(images[idx])
            if cfg.data.hflip:
                x0 = random_hflip(x0, g)
            if cfg.data.random_crop:
                x0 = random_crop(x0, cfg.data.random_crop, g)
            if latent is not None:  # encoded on the fly
                x0 = latent.encode(x0, generator=g)
        inputs = objective.draw(x0, idx, step, g)  # t, ε, label dropout, ...: the whole global batch's
        inputs = take_rows(inputs, slice(rt.rank * local_batch, (rt.rank + 1) * local_batch))

        # -- forward / backward over micro-batches -----------------------------------------
        for k in range(cfg.optim.grad_accum):
            last = k == cfg.optim.grad_accum - 1
            sync = nullcontext() if (last or not rt.distributed) else net.no_sync()
            with sync, autocast:
                out_k = objective.loss(net, take_rows(inputs, slice(k * micro, (k + 1) * micro)))
                (out_k.loss / cfg.optim.grad_accum).backward()
            running_loss += out_k.loss.detach().float() / cfg.optim.grad_accum
            for name, value in out_k.metrics.items():  # logged besides the loss
                running_metrics[name] = running_metrics.get(name, 0) + value.float() / cfg.optim.grad_accum
        grad_norm = None
        if cfg.optim.grad_clip:
            grad_norm = clip_gradients(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr_scheduler.step()
        ema.update(model, step)
        window_steps += 1
        done = step + 1
        if clock_start is None:
            clock_start = time.perf_counter()
        out_of_time = bool(cfg.train.max_seconds) and time.perf_counter() - clock_start >= cfg.train.max_seconds
        if cfg.train.max_seconds and rt.distributed:  # every process must stop at the same step
            out_of_time = distributed.any_process(out_of_time, device)
        final = done == cfg.train.steps or out_of_time

        # -- logs, previews, checkpoints ---------------------------------------------------
        if done % cfg.train.log_every == 0 or final:
            loss_value = check_loss(done)
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
        if rt.is_main and cfg.train.sample_every and (done % cfg.train.sample_every == 0 or final):
            objective.preview(ema.shadow, out / "samples" / f"step-{done:07d}.png")  # none for a classifier
        if done % cfg.train.checkpoint_every == 0 or final:
            if window_steps:
                check_loss(done)  # never checkpoint weights that a NaN has touched
            if final and rt.is_main:  # e.g. an autoencoder's latent scale and held-out PSNR, EMA weights
                ckpt_config.update(objective.finalize(ema.shadow))
            if rt.is_main:
                save_training_state(ckpt_path, kind=objective.kind, config=ckpt_config, model=model, ema=ema.shadow,
                                    extra_tensors={"autoencoder": latent.autoencoder.state_dict()} if latent else None,
                                    optimizer=optimizer, lr_scheduler=lr_scheduler, step=done)
        if out_of_time:
            if rt.is_main:
                print(f"difflab train: time budget of {cfg.train.max_seconds:g} s reached at step {done}")
            break
    if bar is not None:
        bar.close()
    logger.close()
    distributed.teardown(rt)
    return ckpt_path
