"""Adversarial distillation (``difflab distill RUN --method adversarial``,
training/objectives/adversarial.py): the differentiable sampler is the student's DDIM sampler, the
discriminator learns, a zero adversarial weight keeps the student, the game resumes where it stopped,
and the result samples like any distilled run."""

import copy

import numpy as np
import pytest
import torch

from difflab import Pipeline
from difflab.checkpoint import load_state
from difflab.cli import main as cli
from difflab.data.load import load_dataset
from difflab.models.conditioning import GUIDANCE_EMBED
from difflab.models.discriminator import ProjectionDiscriminator
from difflab.pipelines.png_info import read_record
from difflab.sampling.ddim import ddim
from difflab.training.objectives import AdversarialDistillationObjective, TrainingData
from difflab.training.objectives.adversarial import ddim_sample, distribution_matching_loss, hinge_losses
from difflab.training.trainer import train
from helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A 2-step progressive student of a tiny class-conditional teacher trained with label dropout."""
    root = tmp_path_factory.mktemp("adversarial")
    train(tiny_config(root / "teacher", "train.steps=3", "diffusion.cond_drop_prob=0.2"), progress=False)
    assert cli(["distill", str(root / "teacher"), "--steps", "2", "--start-steps", "4", "--iterations-per-round", "3",
                "--batch-size", "8", "--out", str(root / "student"), "--no-progress"]) == 0
    return root / "student"


def objective(student, tmp_path, *extra):
    config = tiny_config(tmp_path, "diffusion.cond_drop_prob=0.0", f"distill.teacher={student}", "distill.steps=2",
                         "distill.method=adversarial", *extra)
    dataset = load_dataset("digits")
    return AdversarialDistillationObjective(config, TrainingData(dataset, dataset.images, None, torch.device("cpu")))


def refine(student, out, *flags):
    return cli(["distill", str(student), "--method", "adversarial", "--steps", "2", "--batch-size", "8",
                "--out", str(out), "--no-progress", *flags])


def test_the_differentiable_sampler_is_the_students_ddim(student, tmp_path):
    obj = objective(student, tmp_path)
    noise, labels = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 4, 9])
    cond = {"class_labels": labels, "guidance_scale": torch.full((3,), 2.0)}
    start = noise * float(obj.schedule.prior_std(obj.sigmas[0]))
    mine = ddim_sample(obj.teacher.denoiser(), start, obj.sigmas, cond)
    theirs = ddim(obj.teacher.denoiser().bind(**cond), start, obj.sigmas)
    torch.testing.assert_close(mine, theirs)
    net = obj.teacher.network
    x = start.clone().requires_grad_(True)
    ddim_sample(obj.teacher.denoiser().with_model(net), x, obj.sigmas, cond).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients pass through every step


def test_the_discriminator_learns_to_tell_real_from_generated(student, tmp_path):
    obj = objective(student, tmp_path, "distill.discriminator_lr=1e-3")
    g = torch.Generator().manual_seed(1)
    real = obj.data.images[:16].float() / 127.5 - 1
    fake = torch.rand(real.shape, generator=g) * 2 - 1  # noise: easy to tell apart
    labels = torch.arange(16) % 10
    losses, class_losses = [], []
    for _ in range(30):
        loss = hinge_losses(obj.discriminator(real, labels), obj.discriminator(fake, labels))
        class_loss = torch.nn.functional.cross_entropy(obj.discriminator.classifier(obj.discriminator.features(real)),
                                                       labels)
        obj.d_optimizer.zero_grad()
        (loss + class_loss).backward()
        obj.d_optimizer.step()
        losses.append(loss.item())
        class_losses.append(class_loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert class_losses[-1] < 0.5 * class_losses[0], class_losses  # and the auxiliary classifier the classes


def test_the_class_term_is_the_guidance_tilt_zero_at_w_1(student, tmp_path):
    """L_G's classifier term is weighted by w − 1: nothing at w = 1 (the data's p(x | y), which the
    adversarial term matches), more as the guidance scale grows."""
    with_term, without = (objective(student, tmp_path, f"distill.classifier_weight={c}") for c in (0.5, 0.0))
    without.discriminator.load_state_dict(with_term.discriminator.state_dict())
    x0 = with_term.data.images[:6].float() / 127.5 - 1
    inputs = with_term.draw(x0, torch.arange(6), 0, torch.Generator().manual_seed(2))
    net = with_term.teacher.network
    with torch.no_grad():  # as the trainer re-scores a step: the discriminator does not move
        for w, same in ((1.0, True), (3.0, False)):
            inputs["w"] = torch.full((6,), w, dtype=torch.float64)
            a, b = with_term.loss(net, inputs), without.loss(net, inputs)
            assert torch.equal(a.loss, b.loss) == same, (w, a.loss, b.loss)
            assert ("class_loss" in a.metrics) and "class_loss" not in b.metrics
    assert a.loss > b.loss  # w = 3: 0.5 · 2 · (cross-entropy > 0) more


def test_every_discriminator_layer_is_spectrally_normalised():
    disc = ProjectionDiscriminator(3, 32, 5, channels=8)
    for _ in range(20):  # the power iteration converges while training
        disc(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    disc.eval()
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5  # 3x3 in, 32 -> 16 -> 8 -> 4, 3x3 out
    for conv in convs:
        top = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item()
        assert top == pytest.approx(1.0, rel=0.05)
    with pytest.raises(ValueError, match="pass class_labels"):
        disc(torch.randn(1, 3, 32, 32))


def test_zero_adversarial_and_classifier_weights_keep_the_student(student, tmp_path):
    assert refine(student, tmp_path / "zero", "--adversarial-weight", "0", "--set", "distill.classifier_weight=0",
                  "--iterations-per-round", "3") == 0
    assert refine(student, tmp_path / "some", "--adversarial-weight", "1", "--iterations-per-round", "3",
                  "--lr", "1e-3") == 0
    base = load_state(student)[1]["ema"]
    zero, some = load_state(tmp_path / "zero")[1]["ema"], load_state(tmp_path / "some")[1]["ema"]
    assert all(torch.equal(zero[k], base[k]) for k in base)  # the regression's gradient is 0 at the student
    assert any(not torch.equal(some[k], base[k]) for k in base)
    a = Pipeline.load(tmp_path / "zero", device="cpu")(class_label=3, n=2, seed=4, guidance_scale=2.0)
    b = Pipeline.load(student, device="cpu")(class_label=3, n=2, seed=4, guidance_scale=2.0)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("discriminator", ["pixel", "teacher"])
def test_a_stopped_refinement_resumes_to_the_same_weights_and_discriminator(student, tmp_path, capsys, discriminator):
    flags = ["--iterations-per-round", "4", "--lr", "1e-3", "--set", "train.checkpoint_every=2",
             "--discriminator", discriminator]
    assert refine(student, tmp_path / "whole", *flags) == 0
    assert refine(student, tmp_path / "parts", *flags, "--seconds", "1e-3") == 0
    assert "time budget reached" in capsys.readouterr().out
    assert load_state(tmp_path / "parts", groups=[], with_extra=False)[0]["step"] < 4
    assert refine(student, tmp_path / "parts", *flags, "--resume") == 0
    (cw, tw, xw), (cp, tp, xp) = load_state(tmp_path / "whole"), load_state(tmp_path / "parts")
    assert cw["step"] == cp["step"] == 4
    for group in ("model", "ema"):
        for key, value in tw[group].items():
            torch.testing.assert_close(tp[group][key], value, rtol=0, atol=0)
    dw, dp = xw["objective"], xp["objective"]
    assert {k.split(".")[0] for k in dw} == {"discriminator", "discriminator_optimizer"}
    assert dw.keys() == dp.keys() and all(torch.equal(dw[k], dp[k]) for k in dw)

    config = cw["distilled"]
    student_record = load_state(student, groups=[], with_extra=False)[0]["distilled"]
    assert config["sigmas"] == student_record["sigmas"] and config["method"] == "ddim"
    assert config["adversarial"]["path"] == str(student.resolve()) and config["adversarial"]["weight"] == 0.1
    assert config["adversarial"]["discriminator"] == discriminator
    # a normal distilled run: the CLI samples it with guidance, and refuses other grids in one line
    assert cli(["sample", str(tmp_path / "whole"), "--n", "2", "--class", "1", "--guidance-scale", "3",
                "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert cli(["sample", str(tmp_path / "whole"), "--n", "1", "--steps", "4", "--out", str(tmp_path / "bad")]) == 2
    assert "distilled for DDIM with 2 steps" in capsys.readouterr().err


def test_a_refinement_with_post_hoc_ema_makes_a_distilled_run_of_any_width(student, tmp_path, capsys):
    """Snapshots of the refinement's power averages; `posthoc-ema` makes a run that keeps the
    student's grid and guidance range (its record), and samples only as the refinement does."""
    assert refine(student, tmp_path / "g", "--iterations-per-round", "4", "--guidance-range", "1.5,3",
                  "--set", "train.posthoc_ema_every=2") == 0
    assert sorted(p.name for p in (tmp_path / "g" / "posthoc-ema").iterdir()) == ["step-0000002", "step-0000004"]
    assert cli(["posthoc-ema", str(tmp_path / "g"), "--sigma-rel", "0.08", "--out", str(tmp_path / "p")]) == 0
    made, refined = (load_state(tmp_path / f, groups=[], with_extra=False)[0] for f in ("p", "g"))
    assert made["distilled"] == refined["distilled"] and made["posthoc_ema"]["snapshots"] == 2
    assert cli(["sample", str(tmp_path / "p"), "--n", "2", "--class", "1", "--guidance-scale", "2",
                "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert cli(["sample", str(tmp_path / "p"), "--n", "1", "--steps", "4", "--out", str(tmp_path / "bad")]) == 2
    assert "distilled for DDIM with 2 steps" in capsys.readouterr().err


def test_a_refinement_on_a_narrower_guidance_range_records_it_and_refuses_the_rest(student, tmp_path, capsys):
    """G is refined on the w it draws; outside them it has only drifted from S, so the run's record
    holds the refinement's range, not the student's, and sampling outside it is one line."""
    taught = load_state(student, groups=[], with_extra=False)[0]["distilled"]["guidance_range"]
    assert refine(student, tmp_path / "all", "--iterations-per-round", "2") == 0
    assert refine(student, tmp_path / "narrow", "--iterations-per-round", "2", "--guidance-range", "1.5,3") == 0
    record = load_state(tmp_path / "all", groups=[], with_extra=False)[0]["distilled"]
    assert record["guidance_range"] == taught == [1.0, 5.0]
    assert load_state(tmp_path / "narrow", groups=[], with_extra=False)[0]["distilled"]["guidance_range"] == [1.5, 3.0]
    assert cli(["sample", str(tmp_path / "narrow"), "--n", "1", "--class", "2", "--guidance-scale", "2",
                "--out", str(tmp_path / "ok")]) == 0
    capsys.readouterr()
    assert cli(["sample", str(tmp_path / "narrow"), "--n", "1", "--guidance-scale", "4",
                "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "distilled for guidance scales in [1.5, 3]" in err and len(err.strip().splitlines()) == 1
    assert refine(student, tmp_path / "wide", "--guidance-range", "0.5,3") == 2
    assert "within it" in capsys.readouterr().err


def per_step_ddim(denoiser, start, sigmas, cond, interval):
    """DDIM with the w input per step by hand: w inside (σ_lo, σ_hi], 1 outside (the definition)."""
    x, w = start, cond["guidance_scale"]
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        w_step = w if interval[0] < sigma <= interval[1] else torch.ones_like(w)
        x = ddim(denoiser.bind(**{**cond, "guidance_scale": w_step}), x, torch.tensor([sigma, sigma_next]))
    return x


def test_a_guidance_interval_refines_and_anchors_on_the_first_level_unguided(student, tmp_path):
    """With distill.guidance_interval, G and the frozen student both sample with their w input 1 at
    the levels outside it: the refinement learns the trajectory the run will sample."""
    sigmas = torch.tensor(load_state(student, groups=[], with_extra=False)[0]["distilled"]["sigmas"])
    interval = (0.0, float((sigmas[0] * sigmas[1]).sqrt()))  # every level but the first
    obj = objective(student, tmp_path, f"distill.guidance_interval=[0, {interval[1]}]")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a w embedding far from its zero start, so that w visibly matters
        for name, p in obj.teacher.network.named_parameters():
            if name.startswith(GUIDANCE_EMBED):
                p.copy_(torch.randn(p.shape, generator=g))
    inputs = {"noise": torch.randn(3, 1, 8, 8, generator=g), "cond": {"class_labels": torch.tensor([1, 5, 7])},
              "w": torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)}
    with torch.no_grad():
        fake, anchor = obj.samples(obj.teacher.network, inputs)
    cond = {"class_labels": inputs["cond"]["class_labels"], "guidance_scale": inputs["w"].float()}
    start = inputs["noise"] * float(obj.schedule.prior_std(obj.sigmas[0]))
    expected = per_step_ddim(obj.teacher.denoiser(), start, obj.sigmas, cond, interval)
    torch.testing.assert_close(anchor, expected)
    torch.testing.assert_close(fake, expected)  # G starts as S
    everywhere = ddim(obj.teacher.denoiser().bind(**cond), start, obj.sigmas)
    assert (everywhere - expected).abs().max() > 1e-4  # the first level's w matters
    assert obj.distilled_record()["guidance_interval"] == [0.0, interval[1]]


def test_a_run_refined_with_an_interval_samples_with_it_by_default(student, tmp_path, capsys):
    """The record's interval is the run's default: the CLI and the Pipeline sample with it, the PNG
    says so, an explicit interval overrides it; a student that never learned w = 1 refuses one."""
    sigmas = load_state(student, groups=[], with_extra=False)[0]["distilled"]["sigmas"]
    hi = (sigmas[0] * sigmas[1]) ** 0.5
    assert refine(student, tmp_path / "iv", "--iterations-per-round", "2", "--guidance-range", "1.5,3",
                  "--guidance-interval", "0", str(hi)) == 0
    record = load_state(tmp_path / "iv", groups=[], with_extra=False)[0]["distilled"]
    assert record["guidance_interval"] == [0.0, hi] and record["guidance_range"] == [1.5, 3.0]
    assert cli(["sample", str(tmp_path / "iv"), "--n", "2", "--class", "3", "--guidance-scale", "2",
                "--out", str(tmp_path / "s")]) == 0
    png = sorted((tmp_path / "s").glob("*.png"))[0]
    assert read_record(png)["guidance_interval"] == [0.0, hi]
    pipe = Pipeline.load(tmp_path / "iv", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a w embedding far from its zero start, so that w visibly matters
        for name, p in pipe.model.network.named_parameters():
            if name.startswith(GUIDANCE_EMBED):
                p.copy_(torch.randn(p.shape, generator=g))
    noise = torch.randn(2, 1, 8, 8, generator=g)
    default = pipe(class_label=3, guidance_scale=2, noise=noise, output="tensor")
    model, walk = pipe.model, torch.tensor(sigmas, dtype=torch.float64)
    cond = {"class_labels": torch.tensor([3, 3]), "guidance_scale": torch.full((2,), 2.0)}
    by_hand = per_step_ddim(model.denoiser(), noise * float(model.schedule.prior_std(walk[0])), walk, cond, (0.0, hi))
    assert (default.float() - ((by_hand.clamp(-1, 1) + 1) * 127.5)).abs().max() <= 1.0
    everywhere = pipe(class_label=3, guidance_scale=2, noise=noise, output="tensor", guidance_interval=(0.0, 1e9))
    assert not torch.equal(default, everywhere)  # an explicit interval overrides the run's
    capsys.readouterr()
    assert refine(student, tmp_path / "narrow", "--iterations-per-round", "1", "--guidance-range", "1.5,3") == 0
    assert cli(["sample", str(tmp_path / "narrow"), "--n", "1", "--guidance-scale", "2", "--guidance-interval", "0",
                "1", "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "learned w in [1.5, 3] only" in err and len(err.strip().splitlines()) == 1
    assert cli(["sample", str(student), "--n", "1", "--guidance-scale", "2", "--guidance-interval", "0", "1",
                "--out", str(tmp_path / "yes")]) == 0  # a progressive student learned w = 1 at every level


def test_what_cannot_be_refined_is_one_line(student, tmp_path, capsys):
    teacher = student.parent / "teacher"
    assert cli(["distill", str(teacher), "--method", "adversarial", "--steps", "2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "is not a progressive student" in err and len(err.strip().splitlines()) == 1
    assert refine(student, tmp_path / "b", "--steps", "1") == 2  # argparse keeps the last --steps
    err = capsys.readouterr().err
    assert "samples in 2 steps" in err and "--steps 2" in err
    assert cli(["distill", str(teacher), "--method", "consistency", "--steps", "2", "--levels", "4",
                "--iterations-per-round", "1", "--batch-size", "4", "--out", str(tmp_path / "cm"),
                "--no-progress"]) == 0
    capsys.readouterr()
    assert cli(["distill", str(tmp_path / "cm"), "--method", "adversarial", "--steps", "2", "--out",
                str(tmp_path / "c")]) == 2
    assert "is a consistency student: adversarial distillation refines a progressive one" in capsys.readouterr().err
    assert refine(student, tmp_path / "d", "--adversarial-weight", "-1") == 2
    assert "'distill.adversarial_weight' must be a number >= 0" in capsys.readouterr().err
    assert refine(student, tmp_path / "e", "--set", "distill.discriminator=dino") == 2
    assert "'distill.discriminator' must be pixel or teacher" in capsys.readouterr().err
    assert refine(student, tmp_path / "f", "--guidance-interval", "5", "1") == 2
    assert "'distill.guidance_interval' must be null or two noise levels 0 <= sigma_lo < sigma_hi" \
        in capsys.readouterr().err
    assert cli(["distill", str(teacher), "--steps", "2", "--start-steps", "4", "--guidance-interval", "0", "1",
                "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "--guidance-interval refines whole trajectories (--method adversarial)" in err, err
    with pytest.raises(ValueError, match="must be a progressive student"):
        objective(teacher, tmp_path)


def test_encoder_features_are_what_the_unets_forward_pass_computes():
    """The taps are the encoder's last output per resolution and the middle block's, as the
    network's own forward pass computes them (hooks on the same call)."""
    from difflab.models.unet import UNet, UNetConfig

    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=1, image_size=16, model_channels=8, channel_mult=(1, 2, 2), num_res_blocks=2,
                          attention_resolutions=(4,), num_head_channels=8, num_classes=3, norm_groups=4)).eval()
    x, t, labels = torch.randn(2, 1, 16, 16), torch.tensor([10.0, 500.0]), torch.tensor([0, 2])
    seen = {}
    for name in ("encoder.1", "encoder.4", "encoder.7", "middle"):  # levels of 2 blocks and a downsampling
        net.get_submodule(name).register_forward_hook(lambda m, i, out, name=name: seen.setdefault(name, out))
    with torch.no_grad():
        net(x, t, labels)
        taps = net.encoder_features(x, t, labels)
    assert [tuple(h.shape[1:]) for h in taps] == [(8, 16, 16), (16, 8, 8), (16, 4, 4), (16, 4, 4)]
    assert [h.shape[1] for h in taps] == net.encoder_feature_channels()
    for tap, name in zip(taps, ("encoder.1", "encoder.4", "encoder.7", "middle"), strict=True):
        torch.testing.assert_close(tap, seen[name])


def test_the_teacher_feature_discriminator_learns_heads_only_and_passes_gradients_to_g(student, tmp_path):
    """``distill.discriminator=teacher`` (LADD): heads on the frozen student's encoder. D's state is
    its heads alone, they learn to tell real from generated, the frozen network never changes, and
    G's loss reaches G through it."""
    import copy

    obj = objective(student, tmp_path, "distill.discriminator=teacher", "distill.discriminator_lr=3e-3")
    disc, frozen = obj.discriminator, obj.teacher.network
    assert all(k.split(".")[0] in ("convs", "outs", "class_embeds", "classifier") for k in disc.state_dict())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}

    g = torch.Generator().manual_seed(1)
    real = obj.data.images[:16].float() / 127.5 - 1
    fake = torch.rand(real.shape, generator=g) * 2 - 1
    inputs = obj.draw(real, torch.arange(16), 0, g)
    labels = inputs["cond"]["class_labels"]
    assert (inputs["real_sigma"] > 0).all() and inputs["real_sigma"].shape == (16,)
    losses, class_losses = [], []
    for _ in range(30):
        h_real, h_fake = obj.judge(real, inputs, "real"), obj.judge(fake, inputs, "fake")
        loss = hinge_losses(disc.logits(h_real, labels), disc.logits(h_fake, labels))
        class_loss = torch.nn.functional.cross_entropy(disc.class_logits(h_real), labels)
        obj.d_optimizer.zero_grad()
        (loss + class_loss).backward()
        obj.d_optimizer.step()
        losses.append(loss.item())
        class_losses.append(class_loss.item())
    assert losses[-1] < 0.75 * losses[0], losses  # (slower than a pixel trunk: the heads are all it learns)
    assert class_losses[-1] < class_losses[0], class_losses
    assert all(p.grad is None for p in frozen.parameters())
    assert all(torch.equal(v, before[k]) for k, v in frozen.state_dict().items())

    generator = copy.deepcopy(frozen).requires_grad_(True)
    step = obj.loss(generator, obj.draw(real, torch.arange(16), 1, g))
    step.loss.backward()
    assert step.metrics["adversarial"] > 0 and step.metrics["regression"] == 0  # G starts as the student
    assert sum(p.grad.abs().sum() for p in generator.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in frozen.parameters())


def test_distribution_matching_descends_towards_the_real_distribution():
    """For Gaussians x₀ ~ N(μ, I), E[x₀ | x₀ + σε] = μ + (x − μ)/(1 + σ²) (Tweedie), so the fake denoiser
    minus the real one is (μ_f − μ_r)·σ²/(1 + σ²) at every x: L_DM's gradient moves every sample from the
    generated mean towards the real one, by exactly g/dims (DMD, Yin et al. 2024a, eq. 7-8)."""
    g = torch.Generator().manual_seed(3)
    mu_real, mu_fake, sigma = torch.randn(1, 2, 4, 4, generator=g), torch.randn(1, 2, 4, 4, generator=g), 0.7
    x = (mu_fake + torch.randn(5, 2, 4, 4, generator=g)).requires_grad_(True)
    noisy = x.detach() + sigma * torch.randn(x.shape, generator=g)

    def posterior_mean(mu):
        return mu + (noisy - mu) / (1 + sigma**2)

    real_x0, fake_x0 = posterior_mean(mu_real), posterior_mean(mu_fake)
    distribution_matching_loss(x, real_x0, fake_x0).backward()
    scale = (x.detach() - real_x0).abs().flatten(1).mean(1).view(-1, 1, 1, 1)
    expected = (mu_fake - mu_real) * sigma**2 / (1 + sigma**2) / scale / x.numel()
    torch.testing.assert_close(x.grad, expected.expand_as(x))
    assert ((-x.grad) * (mu_real - mu_fake)).sum() > 0  # a descent step heads for the real mean


def test_dmd_starts_with_the_fake_denoiser_at_the_teacher_and_zero_matching_at_w_1(student, tmp_path):
    """F starts as the root teacher T (zero w embedding), so at w = 1 (T unguided) the two denoisers
    agree and L_DM is 0 (to rounding: guidance at w = 1 is u + 1·(c − u)); at w = 3 guidance separates
    them. The regression is off (DMD2)."""
    obj = objective(student, tmp_path, "distill.distribution_weight=1.0", "distill.regression_weight=0",
                    "distill.adversarial_weight=0", "distill.classifier_weight=0")
    net = obj.teacher.network
    obj.attach(copy.deepcopy(net))
    assert str(obj.real.path.parent.resolve()).endswith("teacher")
    x0 = obj.data.images[:6].float() / 127.5 - 1
    inputs = obj.draw(x0, torch.arange(6), 0, torch.Generator().manual_seed(2))
    with torch.no_grad():  # as the trainer re-scores a step: F does not move
        inputs["w"] = torch.ones(6, dtype=torch.float64)
        at_one = obj.loss(net, inputs)
        inputs["w"] = torch.full((6,), 3.0, dtype=torch.float64)
        at_three = obj.loss(net, inputs)
    assert at_one.metrics["distribution_matching"] < 1e-12 and "regression" not in at_one.metrics
    assert at_three.metrics["distribution_matching"] > 1e-9


def test_a_dmd_refinement_trains_its_fake_denoiser_and_resumes_it(student, tmp_path, capsys):
    flags = ["--iterations-per-round", "4", "--lr", "1e-3", "--set", "train.checkpoint_every=2",
             "--regression-weight", "0", "--distribution-weight", "1", "--set", "distill.fake_score_steps=2",
             "--set", "distill.distribution_warmup=3"]
    assert refine(student, tmp_path / "whole", *flags) == 0
    assert "3 warm-up steps of the fake denoiser" in capsys.readouterr().out
    assert refine(student, tmp_path / "parts", *flags, "--seconds", "1e-3") == 0
    assert refine(student, tmp_path / "parts", *flags, "--resume") == 0
    assert capsys.readouterr().out.count("warm-up steps") == 1  # not again on resume: F is restored
    (cw, tw, xw), (cp, tp, xp) = load_state(tmp_path / "whole"), load_state(tmp_path / "parts")
    assert cw["step"] == cp["step"] == 4
    for key, value in tw["ema"].items():
        torch.testing.assert_close(tp["ema"][key], value, rtol=0, atol=0)
    fake = {k[len("fake_score."):]: v for k, v in xw["objective"].items() if k.startswith("fake_score.")}
    assert fake and all(torch.equal(v, xp["objective"]["fake_score." + k]) for k, v in fake.items())
    teacher = load_state(student.parent / "teacher")[1]["ema"]
    assert any(not torch.equal(fake[k], v) for k, v in teacher.items())  # F learned, from T
    record = cw["distilled"]["adversarial"]
    assert record["distribution_weight"] == 1 and record["regression_weight"] == 0
    # a run refined without F cannot resume with it: one line
    assert refine(student, tmp_path / "plain", "--iterations-per-round", "4", "--set", "train.checkpoint_every=2",
                  "--seconds", "1e-3") == 0
    capsys.readouterr()
    assert refine(student, tmp_path / "plain", *flags, "--resume") == 2
    err = capsys.readouterr().err
    assert "no fake score" in err and "--distribution-weight 0" in err and "Traceback" not in err


def test_dmd_finds_the_root_teacher_or_says_in_one_line_why_not(student, tmp_path):
    from types import SimpleNamespace

    from difflab.training.config import ConfigError
    from difflab.training.objectives.adversarial import root_teacher

    record = load_state(student, groups=[], with_extra=False)[0]
    teacher = str((student.parent / "teacher").resolve())
    assert root_teacher(SimpleNamespace(distilled=record["distilled"]), "S") == teacher
    with pytest.raises(ConfigError, match="does not name the run it was distilled from"):
        root_teacher(SimpleNamespace(distilled={"teacher": {}}), "S")
    with pytest.raises(ConfigError, match="cannot be read"):
        root_teacher(SimpleNamespace(distilled={"teacher": {"path": str(tmp_path / "gone")}}), "S")
