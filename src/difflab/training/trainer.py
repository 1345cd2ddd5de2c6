"""The training loop, top to bottom: data → noise → loss → optimizer, EMA, logs, previews,
checkpoints. Runs as one process or under ``torchrun`` (DDP).

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

from .. import losses
from ..checkpoint import AUTOENCODER_KIND, CLASSIFIER_KIND, DIFFUSION_KIND, load_state
from ..data.convert import random_crop, random_hflip, to_float, to_uint8
from ..data.load import load_dataset
from ..conditioning import TextConditioning, select
from ..denoiser import Denoiser
from ..latent import LatentSpace, x0_clip
from ..guidance import guide, null_class_labels
from ..images import save_grid
from ..models import build_model, model_config_dict
from ..sampling import sample
from ..schedules import get_schedule
from . import distributed, objectives
from .config import Config, ConfigError
from .ema import EMA
from .fast_paths import clip_gradients, make_optimizer, match_optimizer_state_layout
from ..device import bf16_autocast, memory_format
from .lr_schedule import lr_lambda
from .state import save_training_state


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or inf."""


def is_classifier(config: Config) -> bool:
    """Whether the run trains ADM's noisy classifier (model.name: noisy_classifier) rather than a
    diffusion model: the same loop with cross-entropy on xₜ as the loss."""
    return config.model.name == "noisy_classifier"


def text_encoder_config(config: Config, dataset) -> dict | None:
    """The text encoder of a caption-conditioned run, completed from the data (the trainable
    encoder's vocabulary is built from the training captions); None without text conditioning."""
    if not config.data.text_conditional:
        return None
    if dataset.captions is None:
        raise ConfigError(f"data.text_conditional is true but dataset {dataset.name!r} has no captions; use a "
                          "captioned dataset (emoji, fashion-mnist, an image folder with metadata.jsonl or .txt files)")
    encoder = dict(config.model.text_encoder)
    if encoder.get("name") == "small" and "vocab" not in encoder:
        from ..text import WordTokenizer

        encoder["vocab"] = WordTokenizer.build(dataset.captions).vocab
    return encoder


def model_spec(config: Config, dataset, text: dict | None = None, context_dim: int = 0,
               data_shape: tuple[int, int, int] | None = None) -> dict:
    """The model's config: the preset and options of ``config.model``, completed from the data
    (and, for text conditioning, the text encoder's width; a trainable encoder goes inside)."""
    if objectives.is_autoencoder(config):
        return objectives.autoencoder_spec(config, dataset)
    uses_labels = config.data.class_conditional or is_classifier(config)
    num_classes = len(dataset.class_names) if uses_labels else 0
    if uses_labels and not num_classes:
        what = "a noisy classifier needs" if is_classifier(config) else "data.class_conditional is true but"
        raise ConfigError(f"{what} class labels, and dataset {dataset.name!r} has none; put each class's "
                          "images in their own sub-folder (FOLDER/CLASS/image.png)")
    return {
        "name": config.model.name,
        "preset": config.model.preset,
        **config.model.options,
        "in_channels": data_shape[0] if data_shape else dataset.channels,  # a latent's, in latent diffusion
        "image_size": data_shape[-1] if data_shape else dataset.resolution,
        "learned_sigma": config.diffusion.learned_variance,
        "num_classes": num_classes,
        **({"context_dim": context_dim} if text else {}),
        **({"text_encoder": text} if text and text.get("name") == "small" else {}),
    }


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
        self.file = open(out / "metrics.jsonl", "a") if enabled else None
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


def preview_conditioning(config: Config, spec: dict, text=None, captions=None) -> tuple[dict, object]:
    """(cond, uncond) of the preview grids: every class in turn, or the first training captions;
    uncond (for classifier-free guidance) is None when the model was trained without dropout."""
    n = config.train.num_preview
    if text is not None:
        cond = text.encode(list(captions[:n]) * (n // max(1, len(captions[:n])) + 1))
        cond = {k: v[:n] for k, v in cond.items()}
        null = text.null()
        uncond = (lambda c: null) if config.diffusion.cond_drop_prob > 0 else None
        return cond, uncond
    if spec.get("num_classes"):
        uncond = null_class_labels(spec["num_classes"]) if config.diffusion.cond_drop_prob > 0 else None
        return {"class_labels": torch.arange(n) % spec["num_classes"]}, uncond
    return {}, None


@torch.no_grad()
def preview(model, schedule, config: Config, spec: dict, device, path: Path, cond: dict, uncond,
            latent: LatentSpace | None = None) -> Path:
    """A grid of samples from ``model`` (the EMA weights), fixed noise so grids are comparable;
    with the configured classifier-free guidance scale when the model supports it, decoded to
    pixels for a latent model."""
    n = config.train.num_preview
    g = torch.Generator().manual_seed(config.train.seed)
    noise = torch.randn(n, spec["in_channels"], spec["image_size"], spec["image_size"], generator=g).to(device)
    cond = {k: v.to(device) for k, v in cond.items()}
    denoiser = Denoiser(model, schedule, config.diffusion.prediction, config.diffusion.learned_variance,
                        clip_x0=x0_clip(latent))  # as `difflab sample` clips
    if uncond is not None:
        denoiser = guide(denoiser, scale=config.sample.guidance_scale, uncond=uncond)
    x = sample(denoiser, noise, method=config.sample.method, steps=config.sample.steps,
               spacing=config.sample.spacing, cond=cond, generator=config.train.seed)
    nrow = spec["num_classes"] if spec.get("num_classes") else None
    if latent is not None:
        x = latent.decode(x)
    return save_grid(to_uint8(x), path, nrow=nrow, upscale=max(1, 64 // x.shape[-1]))


def train(config: Config, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train a diffusion model (or a noisy classifier, see :func:`is_classifier`, or a KL / VQ
    autoencoder, see :mod:`.objectives`) as ``config`` says; returns the checkpoint folder."""
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
    classifier = is_classifier(cfg)
    autoencoder = objectives.is_autoencoder(cfg)  # KL / VQ autoencoder: reconstruction loss, no noise process
    if cfg.data.random_crop and not autoencoder:  # autoencoders are convolutional; the rest see whole images
        raise ConfigError("data.random_crop trains autoencoders on crops; a diffusion model or classifier "
                          "sees whole images: remove data.random_crop or set data.resolution instead")
    kind = AUTOENCODER_KIND if autoencoder else CLASSIFIER_KIND if classifier else DIFFUSION_KIND
    labels = dataset.labels.to(device) if (cfg.data.class_conditional or classifier) else None
    latent, latent_cache = None, None
    if cfg.data.autoencoder:  # latent diffusion: train on scale·E(x) of a frozen autoencoder
        latent = LatentSpace.from_checkpoint(cfg.data.autoencoder, device)
        if cfg.data.latent_cache:  # encoded once (and once flipped, for data.hflip)
            encode_g = torch.Generator(device).manual_seed(cfg.train.seed)
            latent_cache = [latent.encode_all(images, generator=encode_g, progress=progress and rt.is_main)]
            if cfg.data.hflip:
                latent_cache.append(latent.encode_all(images.flip(-1), generator=encode_g))
    data_shape = latent.latent_shape if latent else tuple(images.shape[1:])
    text_config = text_encoder_config(cfg, dataset)
    text = TextConditioning(text_config, device) if text_config else None
    if text is not None:  # every distinct caption encoded once; rows gathered per step
        caption_table, caption_rows = text.table(dataset.captions)
        null_caption = text.null()

    # -- the noise process and the model --------------------------------------------------
    schedule = get_schedule(cfg.diffusion.schedule, **cfg.diffusion.schedule_options)
    torch.manual_seed(cfg.train.seed)  # the same initial weights in every run and process
    model = build_model(model_spec(cfg, dataset, text_config, text.dim if text else 0,
                                   latent.latent_shape if latent else None)).to(device)
    model = memory_format(model, cfg.train.channels_last)  # before the EMA copy and the optimizer
    spec = model_config_dict(model)  # every field spelled out: what the checkpoint records
    if autoencoder:
        objectives.check_random_crop(cfg, model)
    ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)
    optimizer = make_optimizer(model.parameters(), device, cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay)
    try:
        schedule_lr = lr_lambda(cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.lr_schedule, cfg.optim.min_lr_fraction)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_lr)
    start = 0
    if resume is not None:
        saved, tensors, extra = load_state(resume, kind=kind)
        model.load_state_dict(tensors["model"])
        ema.load_state_dict(tensors["ema"])
        optimizer.load_state_dict(extra["optimizer"])
        match_optimizer_state_layout(optimizer)  # the moments in the parameters' layout
        lr_scheduler.load_state_dict(extra["lr_scheduler"])
        start = int(extra["step"])
    if rt.is_main:
        summary = model.summary() if hasattr(model, "summary") else type(model).__name__
        print(f"difflab train: {summary}; {len(dataset)} images of {dataset.name}; device {device}"
              + (f" x{rt.world_size}" if rt.distributed else "") + (f"; resuming at step {start}" if start else ""))

    use_cuda = device.type == "cuda"
    net = DistributedDataParallel(model, device_ids=[device] if use_cuda else None) if rt.distributed else model
    if cfg.train.compile:
        net = torch.compile(net)
    autocast = bf16_autocast(device, cfg.train.bf16, cfg.train.bf16_cpu)
    null_class = spec.get("num_classes", 0)  # index of the "no class" embedding for guidance dropout

    ckpt_config = {"model": spec, "schedule": schedule.to_config(), "prediction": cfg.diffusion.prediction,
                   "learned_variance": cfg.diffusion.learned_variance, "image_shape": list(data_shape),
                   "latent": latent.to_config() if latent else None,
                   "class_names": dataset.class_names if labels is not None else [], "text_encoder": text_config,
                   "train_config": cfg.to_dict()}
    if autoencoder:  # shapes instead of the noise process; the latent scale and PSNR come at the end
        ckpt_config = objectives.checkpoint_config(spec, model, cfg)
    preview_cond, preview_uncond = preview_conditioning(cfg, spec, text, dataset.captions)
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
        t = losses.sample_training_t(schedule, global_batch, torch.Generator().manual_seed(cfg.train.seed + step))
        # an autoencoder's noise is the ε of its posterior sample z = μ + σ·ε: latent-shaped
        noise_shape = (global_batch, model.latent_shape[0], *(n // model.config.factor for n in x0.shape[-2:])) \
            if autoencoder else x0.shape
        noise = torch.randn(noise_shape, generator=g, device=device)
        y = labels[idx] if labels is not None else None
        if y is not None and cfg.diffusion.cond_drop_prob > 0 and not classifier:
            drop = torch.rand(global_batch, generator=g, device=device) < cfg.diffusion.cond_drop_prob
            y = torch.where(drop, torch.full_like(y, null_class), y)
        cond = {"class_labels": y} if y is not None and not classifier else {}
        if text is not None:  # caption dropout: the empty caption is the null condition
            drop_text = torch.rand(global_batch, generator=g, device=device) < cfg.diffusion.cond_drop_prob
            cond.update(select(caption_table, caption_rows[idx], null_caption, drop_text))
        mine = slice(rt.rank * local_batch, (rt.rank + 1) * local_batch)
        x0, t, noise = x0[mine], t[mine], noise[mine]
        y = y[mine] if y is not None else None
        cond = {k: v[mine] for k, v in cond.items()}

        # -- forward / backward over micro-batches -----------------------------------------
        for k in range(cfg.optim.grad_accum):
            part = slice(k * micro, (k + 1) * micro)
            last = k == cfg.optim.grad_accum - 1
            sync = nullcontext() if (last or not rt.distributed) else net.no_sync()
            with sync, autocast:
                metrics_k = {}  # logged besides the loss
                if classifier:
                    out_k = losses.noisy_classifier_loss(net, x0[part], y[part], schedule, t=t[part], noise=noise[part])
                    metrics_k = {"accuracy": out_k.accuracy}
                elif autoencoder:
                    out_k = objectives.autoencoder_loss(net, x0[part], cfg, noise=noise[part])
                    metrics_k = out_k.metrics
                else:
                    out_k = losses.diffusion_loss(
                        net, x0[part], schedule, prediction=cfg.diffusion.prediction,
                        weighting=cfg.diffusion.weighting, min_snr_gamma=cfg.diffusion.min_snr_gamma,
                        learned_variance=cfg.diffusion.learned_variance, vlb_weight=cfg.diffusion.vlb_weight,
                        cond={k: v[part] for k, v in cond.items()}, t=t[part], noise=noise[part],
                    )
                (out_k.loss / cfg.optim.grad_accum).backward()
            running_loss += out_k.loss.detach().float() / cfg.optim.grad_accum
            for name, value in metrics_k.items():
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
        if rt.is_main and cfg.train.sample_every and not classifier and (done % cfg.train.sample_every == 0 or final):
            if autoencoder:  # inputs / reconstructions instead of samples
                objectives.reconstruction_grid(ema.shadow, objectives.preview_images(images, cfg.train.num_preview),
                                               out / "samples" / f"step-{done:07d}.png")
            else:
                preview(ema.shadow, schedule, cfg, spec, device, out / "samples" / f"step-{done:07d}.png",
                        preview_cond, preview_uncond, latent)
        if done % cfg.train.checkpoint_every == 0 or final:
            if window_steps:
                check_loss(done)  # never checkpoint weights that a NaN has touched
            if autoencoder and final and rt.is_main:  # LDM's latent scale and held-out PSNR, EMA weights
                ckpt_config.update(objectives.evaluate(ema.shadow, images, cfg))
            if rt.is_main:
                save_training_state(ckpt_path, kind=kind, config=ckpt_config, model=model, ema=ema.shadow,
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
