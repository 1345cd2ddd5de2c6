"""Guidance: classifier-free guidance (weights, one batched pass, rescale against diffusers,
interval, learned variance) and ADM classifier guidance (Algorithms 1 and 2 against direct
formulas, s = 0, gradients only through the classifier), with every sampler on CPU."""

import math

import pytest
import torch

from difflab.denoiser import Denoiser
from difflab.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    GuidanceInputInterval,
    classifier_log_prob_gradient,
    guide,
    null_class_labels,
)
from difflab.process import posterior
from difflab.sampling import SAMPLERS, get_sigmas, sample
from difflab.sampling.ddpm import ddpm
from difflab.schedules import get_schedule

NUM_CLASSES = 3


class ToyConditional(torch.nn.Module):
    """output = a[y]·xₜ + b[y]·t/1000, with label NUM_CLASSES the null class; counts its calls."""

    def __init__(self, channels=2, learned_variance=False, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        out = channels * (2 if learned_variance else 1)
        self.a = torch.nn.Parameter(torch.randn(NUM_CLASSES + 1, out, 1, 1, generator=g) * 0.3 + 0.5)
        self.b = torch.nn.Parameter(torch.randn(NUM_CLASSES + 1, out, 1, 1, generator=g))
        self.channels, self.calls, self.batch_sizes, self.grad_enabled = channels, 0, [], []

    def forward(self, x_t, t, class_labels=None):
        self.calls += 1
        self.batch_sizes.append(x_t.shape[0])
        self.grad_enabled.append(torch.is_grad_enabled())
        x = x_t.repeat(1, self.a.shape[1] // self.channels, 1, 1)
        return self.a[class_labels] * x + self.b[class_labels] * (t / 1000).reshape(-1, 1, 1, 1)


class LinearClassifier(torch.nn.Module):
    """logits = W·flatten(xₜ) + c·t: log p(y | xₜ) has the closed-form gradient W_y − Σₖ pₖ W_k."""

    def __init__(self, dim, seed=1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(NUM_CLASSES, dim, generator=g) * 0.2)
        self.c = torch.nn.Parameter(torch.randn(NUM_CLASSES, generator=g))

    def forward(self, x_t, t):
        return x_t.flatten(1) @ self.w.T + (t / 1000)[:, None] * self.c

    def exact_gradient(self, x_t, t, y):
        with torch.no_grad():
            p = self.forward(x_t, t).softmax(-1)
            return (self.w[y] - p @ self.w).reshape(x_t.shape)


def batch(n=4, channels=2, size=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, channels, size, size, generator=g), torch.rand(n, generator=g) * 999,
            torch.arange(n) % NUM_CLASSES)


def test_cfg_weights_one_and_zero_are_the_conditional_and_unconditional_models():
    model = ToyConditional()
    x, t, y = batch()
    uncond = null_class_labels(NUM_CLASSES)
    with torch.no_grad():
        cond_out = model(x, t, class_labels=y)
        uncond_out = model(x, t, class_labels=torch.full_like(y, NUM_CLASSES))
        torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, uncond)(x, t, class_labels=y), cond_out)
        torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0, uncond)(x, t, class_labels=y), uncond_out)
        w = 3.5
        model.calls, model.batch_sizes = 0, []
        guided = ClassifierFreeGuidance(model, w, uncond)(x, t, class_labels=y)
    assert model.calls == 1 and model.batch_sizes == [2 * len(x)]  # both branches in one forward pass
    torch.testing.assert_close(guided, uncond_out + w * (cond_out - uncond_out))
    with pytest.raises(ValueError, match="needs class_labels"):
        ClassifierFreeGuidance(model, 2.0, uncond)(x, t)


def test_cfg_rescale_matches_diffusers():
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    model = ToyConditional()
    x, t, y = batch()
    w, phi = 5.0, 0.7
    with torch.no_grad():
        cond_out = model(x, t, class_labels=y)
        uncond_out = model(x, t, class_labels=torch.full_like(y, NUM_CLASSES))
        ours = ClassifierFreeGuidance(model, w, null_class_labels(NUM_CLASSES), rescale=phi)(x, t, class_labels=y)
    theirs = rescale_noise_cfg(uncond_out + w * (cond_out - uncond_out), cond_out, guidance_rescale=phi)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="rescale must be in"):
        ClassifierFreeGuidance(model, w, null_class_labels(NUM_CLASSES), rescale=1.5)


def test_cfg_interval_guides_only_inside_the_noise_range():
    schedule = get_schedule("linear")
    model = ToyConditional()
    x, _, y = batch()
    t = torch.tensor([50.0, 400.0, 700.0, 950.0])
    sigma = schedule.sigma(t.double())
    interval = (float(sigma[1]) * 0.99, float(sigma[2]) * 1.01)  # only samples 1 and 2 are inside
    guided = ClassifierFreeGuidance(model, 4.0, null_class_labels(NUM_CLASSES), interval=interval, schedule=schedule)
    full = ClassifierFreeGuidance(model, 4.0, null_class_labels(NUM_CLASSES))
    with torch.no_grad():
        out, everywhere = guided(x, t, class_labels=y), full(x, t, class_labels=y)
        cond_out = model(x, t, class_labels=y)
    torch.testing.assert_close(out[1:3], everywhere[1:3])
    torch.testing.assert_close(out[[0, 3]], cond_out[[0, 3]])
    with pytest.raises(ValueError, match="needs the model's schedule"):
        ClassifierFreeGuidance(model, 4.0, null_class_labels(NUM_CLASSES), interval=interval)


def test_a_students_interval_sets_its_w_input_to_one_outside_and_keeps_it_inside():
    """A guidance-distilled student's interval: the w input it receives is w where σ_lo < σ ≤ σ_hi
    (the same rule as classifier-free guidance's interval) and 1, its unguided mode, elsewhere."""
    schedule = get_schedule("linear")
    seen = []

    def student(x_t, t, class_labels=None, guidance_scale=None):
        seen.append(guidance_scale)
        return x_t

    t = torch.tensor([50.0, 400.0, 700.0, 950.0])
    sigma = schedule.sigma(t.double())
    interval = (float(sigma[1]) * 0.99, float(sigma[2]) * 1.01)
    wrapped = GuidanceInputInterval(student, interval, schedule)
    x, w = torch.zeros(4, 1, 2, 2), torch.tensor([2.0, 2.5, 3.0, 4.0])
    wrapped(x, t, guidance_scale=w)
    torch.testing.assert_close(seen[-1], torch.tensor([1.0, 2.5, 3.0, 1.0]))
    wrapped(x, t[1:3], guidance_scale=w[1:3])  # every level inside: w untouched
    assert seen[-1] is not None and torch.equal(seen[-1], w[1:3])
    wrapped(x, t, class_labels=torch.zeros(4, dtype=torch.long))  # no w input: nothing to switch
    assert seen[-1] is None
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        GuidanceInputInterval(student, (3.0, 1.0), schedule)


def test_cfg_with_learned_variance_guides_the_mean_and_keeps_the_conditional_variance():
    model = ToyConditional(learned_variance=True)
    x, t, y = batch()
    with torch.no_grad():
        cond_out = model(x, t, class_labels=y)
        uncond_out = model(x, t, class_labels=torch.full_like(y, NUM_CLASSES))
        guided = ClassifierFreeGuidance(model, 2.0, null_class_labels(NUM_CLASSES), learned_variance=True)
        out = guided(x, t, class_labels=y)
    torch.testing.assert_close(out[:, :2], uncond_out[:, :2] + 2.0 * (cond_out[:, :2] - uncond_out[:, :2]))
    torch.testing.assert_close(out[:, 2:], cond_out[:, 2:])


def test_cfg_broadcasts_a_single_null_context():
    """Text models give one null context (1, L, D) for the whole batch."""
    calls = []

    def model(x_t, t, context):
        calls.append(context.shape)
        return x_t * context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)

    x, t, _ = batch()
    context = torch.randn(len(x), 5, 8)
    null = torch.zeros(1, 5, 8)
    out = ClassifierFreeGuidance(model, 2.0, lambda cond: {"context": null})(x, t, context=context)
    assert calls == [(2 * len(x), 5, 8)]
    torch.testing.assert_close(out, 2.0 * model(x, t, context))


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_classifier_guidance_algorithm_2_shifts_epsilon_by_the_scaled_gradient(prediction):
    """ε̂ = ε − s·√(1 − ᾱₜ)·∇ₓₜ log p(y | xₜ), whatever the model predicts."""
    schedule = get_schedule("linear")
    model = ToyConditional()
    x, t, y = batch()
    classifier = LinearClassifier(x[0].numel())
    s = 2.5
    guided = ClassifierGuidance(model, classifier, s, schedule, prediction, model_takes_labels=True)
    with torch.no_grad():
        out = guided(x, t, class_labels=y)
        raw = model(x, t, class_labels=y)
    scale, std = (c.float().reshape(-1, 1, 1, 1) for c in schedule.scale_std(t.double()))
    grad = classifier.exact_gradient(x, t, y)
    to_eps = {"epsilon": lambda o: o, "x0": lambda o: (x - scale * o) / std,
              "v": lambda o: std * x + scale * o}[prediction]  # ε from each parametrization (s² + d² = 1)
    torch.testing.assert_close(to_eps(out), to_eps(raw) - s * std * grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(classifier_log_prob_gradient(classifier, x, t, y), grad, rtol=1e-5, atol=1e-6)


def test_classifier_guidance_scale_zero_is_no_guidance_and_labels_reach_the_model_only_when_asked():
    schedule = get_schedule("cosine")
    model = ToyConditional()
    x, t, y = batch()
    classifier = LinearClassifier(x[0].numel())
    with torch.no_grad():
        out = ClassifierGuidance(model, classifier, 0.0, schedule, model_takes_labels=True)(x, t, class_labels=y)
        assert torch.equal(out, model(x, t, class_labels=y))

    seen = []

    def unconditional(x_t, t, **cond):
        seen.append(sorted(cond))
        return torch.zeros_like(x_t)

    ClassifierGuidance(unconditional, classifier, 1.0, schedule)(x, t, class_labels=y)
    assert seen == [[]]
    with pytest.raises(ValueError, match="needs class_labels"):
        ClassifierGuidance(unconditional, classifier, 1.0, schedule)(x, t)


def test_classifier_guidance_of_the_null_label_branch_is_adm_on_the_unconditional_model():
    """``guide(scale=0, classifier=...)`` (``--guidance-scale 0 --classifier``): the network sees the
    null label, the classifier the requested one, and w = 0 does not scale the classifier's shift
    away (it is applied after CFG) — ADM's unconditional model + classifier, from one network."""
    schedule = get_schedule("cosine")
    model = ToyConditional()
    x, t, y = batch()
    classifier = LinearClassifier(x[0].numel())
    guided = guide(Denoiser(model, schedule), scale=0.0, uncond=null_class_labels(NUM_CLASSES),
                   classifier=classifier, classifier_scale=2.0, model_takes_labels=True)

    def null_branch(x_t, t):
        return model(x_t, t, class_labels=torch.full_like(y, NUM_CLASSES))

    adm = ClassifierGuidance(null_branch, classifier, 2.0, schedule)  # the model gets no labels
    with torch.no_grad():
        out = guided.model(x, t, class_labels=y)
        torch.testing.assert_close(out, adm(x, t, class_labels=y))
        assert not torch.allclose(out, null_branch(x, t))


def test_gradients_flow_only_through_the_classifier():
    schedule = get_schedule("linear")
    model = ToyConditional()
    x, _, y = batch()
    classifier = LinearClassifier(x[0].numel())
    denoiser = guide(Denoiser(model, schedule), scale=3.0, uncond=null_class_labels(NUM_CLASSES),
                     classifier=classifier, classifier_scale=2.0, model_takes_labels=True)
    out = sample(denoiser, x, method="dpmpp_2m", steps=4, cond={"class_labels": y})
    assert torch.isfinite(out).all() and not out.requires_grad
    assert model.grad_enabled and not any(model.grad_enabled)  # the diffusion model never builds a graph
    assert all(p.grad is None for p in [*model.parameters(), *classifier.parameters()])


def test_ancestral_classifier_guidance_is_adm_algorithm_1():
    """ddpm + mode='mean' equals a direct x_t-space loop: x_{t-1} = μ̃(xₜ, x̂₀) + s·Σ·∇ log p(y | xₜ)
    (noise switched off so the two loops can be compared exactly)."""
    schedule = get_schedule("linear", num_steps=1000)
    model = ToyConditional()
    x_T, _, y = batch(seed=3)
    classifier = LinearClassifier(x_T[0].numel())
    s = 3.0
    sigmas = get_sigmas(schedule, 10, "leading", final_denoise=True)
    for variance in ("fixed_small", "fixed_large"):
        denoiser = Denoiser(ClassifierGuidance(model, classifier, s, schedule, mode="mean", model_takes_labels=True),
                            schedule)
        x_start = x_T * float(schedule.prior_std(sigmas[0]))  # x = xₜ/√ᾱₜ
        ours = ddpm(denoiser.bind(class_labels=y), x_start, sigmas, variance=variance,
                    noise_source=lambda x: torch.zeros_like(x))

        times = schedule.t_from_sigma(sigmas[:-1]).round()
        x = x_T.double()
        with torch.no_grad():
            for i, t in enumerate(times):
                t_prev = times[i + 1] if i + 1 < len(times) else None
                ab = schedule.alpha_bar(t)
                ab_prev = schedule.alpha_bar(t_prev) if t_prev is not None else torch.tensor(1.0, dtype=torch.float64)
                tt = torch.full((len(x),), float(t))
                eps = model(x.float(), tt, class_labels=y).double()
                x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
                if t_prev is None:
                    x = x0
                    break
                beta = 1 - ab / ab_prev
                mean = (ab_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_prev) * x) / (1 - ab)
                var = beta * (1 - ab_prev) / (1 - ab) if variance == "fixed_small" else beta
                x = mean + s * var * classifier.exact_gradient(x.float(), tt, y).double()
        torch.testing.assert_close(ours.double(), x, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="only works with the ddpm sampler"):
        sample(denoiser, x_T, schedule, method="ddim", steps=3, cond={"class_labels": y})


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_every_sampler_runs_guided_on_cpu(method):
    schedule = get_schedule("cosine")
    model = ToyConditional()
    x, _, y = batch()
    classifier = LinearClassifier(x[0].numel())
    denoiser = guide(Denoiser(model, schedule, clip_x0=1.0), scale=2.0, uncond=null_class_labels(NUM_CLASSES),
                     rescale=0.5, classifier=classifier, classifier_scale=1.0,
                     classifier_mode="mean" if method == "ddpm" else "epsilon", model_takes_labels=True)
    out = sample(denoiser, x, method=method, steps=4, cond={"class_labels": y}, generator=0)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_guide_without_guidance_returns_the_denoiser():
    denoiser = Denoiser(ToyConditional(), get_schedule("cosine"))
    assert guide(denoiser) is denoiser
    with pytest.raises(ValueError, match="needs the unconditional input"):
        guide(denoiser, scale=2.0)
    assert math.isfinite(float(posterior(get_schedule("linear"), torch.tensor([10.0]), torch.tensor([9.0])).variance))
