"""Adversarial distillation: a progressively distilled student sharpened by a discriminator that
sees real images, so that a few-step sampler can end closer to the data than its teacher does.

Distillation copies its teacher, errors included: a student can at best sample the teacher's
distribution. A discriminator trained on the *data* removes that ceiling, as in Adversarial
Diffusion Distillation (Sauer et al. 2023, "ADD") and DMD2 (Yin et al. 2024, "Improved
Distribution Matching Distillation for Fast Image Synthesis", whose one- and four-step students
beat their teachers' FID). Here the generator G starts as a progressive student S (``difflab
distill``, method ddim), S stays frozen beside it, and each step, for real images x with classes
y, fresh noise ε and a guidance scale w drawn from ``distill.guidance_range`` (S's range or a part
of it, which the result then records as its own):

    x̂   = G_N(ε, y, w)        G's own N DDIM steps from noise, with gradients through all of
                              them (DMD2's "backward simulation": G learns from the inputs it
                              meets when it samples, not from noised real images)
    x̂ˢ  = S_N(ε, y, w)        the frozen student's sample of the same noise

    L_D = E[max(0, 1 − D(x + s·η, y))] + E[max(0, 1 + D(x̂ + s·η′, y))] + CE(C(x + s·η), y)
    L_G = λ · E[softplus(−D(x̂ + s·η′, y))] + λ_r · E‖x̂ − x̂ˢ‖² + λ_c · E[(w − 1) · CE(C(x̂ + s·η′), y)]

G's adversarial term is the non-saturating loss (Goodfellow et al. 2014), which stays ≥ 0, so the
trainer's divergence guard can judge L_G as it judges any loss. D is a
:class:`~difflab.models.discriminator.ProjectionDiscriminator` trained from scratch with
its own Adam optimizer (β = (0, 0.99), as GANs train; ``distill.discriminator_lr``); η, η′ are
instance noise of std s (``distill.instance_noise``), which lets the real and generated
distributions overlap early on. The second term of L_G is DMD's regression loss (Yin et al. 2024a,
§3.3) with S's samples as the paired targets and the squared error in place of LPIPS: it keeps G
on S's map from noise to image, so the w input keeps its meaning and the adversarial term
(weight λ, ``distill.adversarial_weight``) only corrects what S gets wrong.

**The guidance tilt.** A GAN on real images pulls every w towards the data, p(x | y), and so undoes
classifier-free guidance, which samples p(x | y)·p(y | x)^(w − 1). C is AC-GAN's auxiliary
classifier on D's features (Odena et al. 2017), trained on real images only; G pays (w − 1) times
its cross-entropy on the samples (weight λ_c, ``distill.classifier_weight``): nothing at w = 1,
where the adversarial term alone is right, more as w grows. For an unguided student the term is off.

**A guidance interval** (``distill.guidance_interval`` = (σ_lo, σ_hi)). Guiding at pure noise pulls
each class towards a template and costs diversity (Kynkäänniemi et al. 2024); on the Fashion-MNIST
teacher at 4 steps, leaving the first level unguided cut FID by 17 % (docs/benchmarks.md). A
student refined with one w for all its steps has not learned that trajectory, so with an interval G
(and S, for the anchor) samples with its w input 1 at the levels outside it
(:class:`~difflab.guidance.GuidanceInputInterval`), the adversarial and tilt terms judge those
samples, and the result records the interval as the one it samples with. DMD's teacher is guided
within the same interval.

**Distribution matching instead of regression** (DMD2, Yin et al. 2024b). The regression holds G
to S's map, whose samples are worse than the teacher's. DMD's term (Yin et al. 2024a, eq. 7-8)
holds G's *distribution* to the teacher's guided one instead, through the difference of two
denoisers at a level σ drawn from the middle 96 % of the schedule's times: the frozen teacher T
guided at w (the root run of S's chain of teachers, classifier-free guidance), and a "fake"
denoiser F, initialised as T with a zero w embedding and trained online (its own Adam,
``distill.fake_score_lr``, ``distill.fake_score_steps`` steps per G step, DMD2's two time-scale
rule) to denoise G's samples with T's own loss::

    xₛ   = sg(x̂) + σ·ε
    g    = (F(xₛ, σ, y, w) − T_w(xₛ, σ, y)) / mean|x̂ − T_w(xₛ, σ, y)|     per sample
    L_DM = ½ · E‖x̂ − sg(x̂ − g)‖²                                         (∂L_DM/∂x̂ = g/dims)

F − T_w is σ² times the difference of the two distributions' scores (Tweedie), so descending g
moves x̂ up log p_T,w − log p_G. ``distill.distribution_weight`` weighs it. F starts at T, not at
G's distribution, and unguided, so before G's first step it takes ``distill.distribution_warmup``
steps of its own on G's samples (random classes and w), lest its first gradients push G towards
what F has not learned yet. With ``distill.regression_weight`` (λ_r) 0, S's samples are not made
(DMD2's recipe: DM plus GAN).

**Which discriminator** (``distill.discriminator``). ``pixel``: the projection discriminator above.
``teacher``: latent adversarial distillation's (Sauer et al. 2024, "LADD"), a
:class:`~difflab.models.discriminator.FeatureDiscriminator` whose features are the frozen student's
own encoder (:meth:`~difflab.models.unet.UNet.encoder_features`, at w = 1) on the images noised to
a level σ drawn per image, ln σ ~ N(−1.2, 1.2²) (EDM's training distribution, Karras et al. 2022);
only its heads learn, and the tilt uses its classifier on the last map.

D takes one optimizer step per micro-batch, before G's loss is formed (none when the trainer
re-scores a step without gradients, before a checkpoint); its weights and optimizer state are
part of the checkpoint's objective state, so ``--resume`` continues the game where it stopped.
The result is a normal distilled run: the same DDIM grid and w input as S.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ... import losses, process
from ...checkpoint import load_state
from ...denoiser import Denoiser
from ...guidance import ClassifierFreeGuidance, GuidanceInputInterval, null_class_labels
from ...models import build_model
from ...models.conditioning import ZERO_INIT_MODULES
from ...models.discriminator import FeatureDiscriminator, ProjectionDiscriminator
from ...models.unet import UNet
from ..config import Config, ConfigError
from .base import Inputs, StepLoss, TrainingData
from .distill import DistillationObjective, ddim_step, with_guidance_scale
from .frozen_base import load_base

# the checkpoint's objective state: each trained module beside G and its optimizer's moments, by prefix
PREFIXES = {"discriminator": ("discriminator.", "discriminator_optimizer."),
            "fake_score": ("fake_score.", "fake_score_optimizer.")}
MISSING_STATE = {
    "discriminator": "the checkpoint holds no discriminator: resume it with the objective that wrote it "
                     "(difflab distill --method progressive?)",
    "fake_score": "the checkpoint holds no fake score: it was refined without distribution matching; resume it "
                  "with --distribution-weight 0",
}
# the feature discriminator's noise levels: ln σ ~ N(−1.2, 1.2²), EDM's training distribution (Karras et al. 2022)
FEATURE_LOG_SIGMA_MEAN, FEATURE_LOG_SIGMA_STD = -1.2, 1.2


def ddim_sample(denoise, x: Tensor, sigmas: Tensor, cond: dict) -> Tensor:
    """DDIM (η = 0) from x at σ₀ down the levels ``sigmas`` (ending in 0), differentiable: the
    student's sampler with the autograd graph kept (:func:`difflab.sampling.ddim.ddim` keeps none)."""
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        denoised = denoise(x, sigma, **cond)
        x = ddim_step(x, denoised, torch.tensor([sigma]), torch.tensor([sigma_next]))
    return x


def distribution_matching_loss(x: Tensor, real_x0: Tensor, fake_x0: Tensor) -> Tensor:
    """L_DM = ½·E‖x − sg(x − g)‖² with g = (fake_x0 − real_x0) / mean|x − real_x0| per sample (DMD,
    Yin et al. 2024a, eq. 7-8): its gradient in x is g / x.numel(), which descends the KL divergence of
    the generated distribution (denoised to ``fake_x0``) from the real one (``real_x0``)."""
    with torch.no_grad():
        scale = (x - real_x0).abs().float().flatten(1).mean(1).clamp_min(1e-8)
        g = torch.nan_to_num((fake_x0 - real_x0).float() / process.broadcast_to(scale, x))
    return 0.5 * (x.float() - (x.float() - g).detach()).square().mean()


def root_teacher(record, where: str) -> str:
    """The path of the run a progressive student was distilled from at the start of its chain of
    rounds (each round records its teacher's path)."""
    distilled, path = record.distilled, None
    while distilled is not None:
        path = (distilled.get("teacher") or {}).get("path")
        if path is None:
            raise ConfigError(f"{where}'s record does not name the run it was distilled from: distribution matching "
                              "needs that teacher (set distill.distribution_weight=0)")
        try:
            distilled = load_state(path, groups=[], with_extra=False)[0].get("distilled")
        except (OSError, ValueError) as err:
            raise ConfigError(f"the teacher of {where} ({path}) cannot be read ({err}): distribution matching needs "
                              "it (set distill.distribution_weight=0)") from None
    return path


def hinge_losses(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """The discriminator's hinge loss E[max(0, 1 − D(real))] + E[max(0, 1 + D(fake))] (Lim & Ye 2017;
    Miyato et al. 2018)."""
    return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()


class AdversarialDistillationObjective(DistillationObjective):
    """Adversarial refinement of a progressive student (``difflab distill RUN --method adversarial``)."""

    def __init__(self, config: Config, data: TrainingData):
        super().__init__(config, data)
        d = config.distill
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise ConfigError("adversarial distillation runs in one process (its discriminator is not synchronised "
                              "across processes): run it without torchrun")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)
            self.discriminator = self.build_discriminator(d, data).to(data.device)
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=d.discriminator_lr, betas=(0.0, 0.99))
        # DMD's frozen guided teacher; its fake denoiser is built in attach(), once G's spec is known
        self.real = None if d.distribution_weight == 0 else load_base(
            root_teacher(self.teacher.record, d.teacher), "distill.teacher's teacher", "RUN", data)
        self.fake_score, self.fake_optimizer, self.fake_warmed = None, None, False
        self.interval = tuple(d.guidance_interval) if d.guidance_interval is not None else None
        if self.interval is not None and self.guidance_range is None:
            raise ConfigError("distill.guidance_interval switches the student's guidance off at some levels, and it "
                              "is distilled without guidance: set distill.guidance_range or drop the interval")

    def attach(self, model) -> None:
        """G starts as S; DMD's fake denoiser F as the root teacher T (G's network, a zero w embedding)."""
        super().attach(model)
        if self.real is None:
            return
        if self.real.record.model.get("name") != self.teacher.record.model.get("name"):
            raise ConfigError("distribution matching needs the student's network to be its teacher's")
        self.real.network.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.train.seed)
            fake = build_model(self.spec).to(self.data.device)
        own = {k: v for k, v in fake.state_dict().items() if k.split(".")[0] in ZERO_INIT_MODULES}
        fake.load_state_dict({**own, **self.real.network.state_dict()})
        self.fake_score = fake.train()
        self.fake_optimizer = torch.optim.Adam(fake.parameters(), lr=self.config.distill.fake_score_lr)

    def build_discriminator(self, d, data: TrainingData) -> ProjectionDiscriminator | FeatureDiscriminator:
        """``distill.discriminator``: a pixel-space projection discriminator trained from scratch, or
        heads on the frozen student's own encoder (LADD's teacher features)."""
        classes = self.teacher.num_classes
        if d.discriminator == "pixel":
            return ProjectionDiscriminator(data.shape[0], data.shape[-1], classes, d.discriminator_channels)
        network = self.teacher.network
        if not (isinstance(network, UNet) and network.is_class_or_unconditional):
            raise ConfigError(f"distill.discriminator={d.discriminator} reads a class- or unconditional U-Net's "
                              f"encoder; {d.teacher} is not one: use distill.discriminator=pixel")
        network.requires_grad_(False)
        denoiser, guided = self.teacher.denoiser(), self.teacher.record.takes_guidance_scale

        def extract(x: Tensor, labels: Tensor | None, noise: Tensor, sigma: Tensor) -> list[Tensor]:
            sigma = sigma.to(device="cpu", dtype=torch.float64)
            scale, std = self.schedule.scale_std_at_sigma(sigma)  # xₜ = s·x₀ + d·ε, as q_sample at level σ
            noisy = process.broadcast_to(scale, x) * x + process.broadcast_to(std, x) * noise
            t = denoiser.model_time(sigma).to(device=x.device, dtype=x.dtype)
            w = torch.ones_like(t) if guided else None  # the student's unguided features
            return network.encoder_features(noisy, t, labels, guidance_scale=w)

        return FeatureDiscriminator(extract, network.encoder_feature_channels(), classes, d.discriminator_channels)

    def grids(self, record, d) -> tuple[Tensor, Tensor]:
        """The progressive student's own grid, for it and for G."""
        distilled = record.distilled
        if distilled is None or distilled.get("method") != "ddim":
            raise ConfigError(f"distill.teacher ({d.teacher}) must be a progressive student (difflab distill RUN "
                              "--steps N): adversarial distillation refines one on its own grid")
        if distilled["steps"] != d.steps:
            raise ConfigError(f"distill.teacher samples in {distilled['steps']} steps: set distill.steps="
                              f"{distilled['steps']} (adversarial distillation keeps the grid)")
        sigmas = torch.tensor(distilled["sigmas"], dtype=torch.float64)
        return sigmas, sigmas

    def draw(self, x0: Tensor, idx: Tensor, step: int, generator: torch.Generator,
             pixels: Tensor | None = None) -> Inputs:
        """Progressive distillation's draws (noise, classes, w), the discriminator's noises for the real
        and the generated images and, for the feature discriminator, their noise levels."""
        inputs = super().draw(x0, idx, step, generator, pixels)
        inputs["real_noise"] = torch.randn(x0.shape, generator=generator, device=x0.device)
        inputs["fake_noise"] = torch.randn(x0.shape, generator=generator, device=x0.device)
        if self.real is not None:  # DMD's level and noise, and the fake denoiser's training draws
            n, t_min, t_max = x0.shape[0], *self.matching_times()
            g = torch.Generator().manual_seed(self.config.train.seed + step + 1)
            t = t_min + (t_max - t_min) * torch.rand(n, generator=g, dtype=torch.float64)
            inputs["dm_t"] = t.round() if self.schedule.is_discrete else t
            inputs["dm_noise"] = torch.randn(x0.shape, generator=generator, device=x0.device)
            k = self.config.distill.fake_score_steps
            # F's k steps, as (rows, k, ...) so that a micro-batch takes its rows' draws
            inputs["fake_score_t"] = torch.stack([losses.sample_training_t(self.schedule, n, g) for _ in range(k)], 1)
            inputs["fake_score_noise"] = torch.randn((n, k, *x0.shape[1:]), generator=generator, device=x0.device)
        if isinstance(self.discriminator, FeatureDiscriminator):
            sigma_min, sigma_max = self.schedule.sigma_min, self.schedule.sigma_max
            for key in ("real_sigma", "fake_sigma"):
                log_sigma = torch.randn(x0.shape[0], generator=generator, device=x0.device, dtype=torch.float64)
                inputs[key] = (FEATURE_LOG_SIGMA_MEAN + FEATURE_LOG_SIGMA_STD * log_sigma).exp().clamp(sigma_min,
                                                                                                        sigma_max)
        return inputs

    def matching_times(self) -> tuple[float, float]:
        """DMD's range of times: the middle 96 % of the schedule's (DMD2: timesteps 20-980 of 1,000)."""
        if self.schedule.is_discrete:
            lo, hi = 0.0, float(self.schedule.num_steps - 1)
        else:
            lo, hi = float(self.schedule.t_min), float(self.schedule.t_max)
        return lo + 0.02 * (hi - lo), lo + 0.98 * (hi - lo)

    def fake_score_step(self, fake: Tensor, inputs: Inputs, cond: dict) -> Tensor:
        """``distill.fake_score_steps`` Adam steps of F on G's samples (detached), with the teacher's
        own loss (its prediction type, uniform weighting); returns the last loss."""
        for t, noise in zip(inputs["fake_score_t"].unbind(1), inputs["fake_score_noise"].unbind(1), strict=True):
            out = losses.diffusion_loss(self.fake_score, fake.detach(), self.schedule,
                                        prediction=self.real.prediction, cond=cond, t=t, noise=noise)
            self.fake_optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            self.fake_optimizer.step()
        return out.loss.detach()

    def warm_up_fake_score(self, net, inputs: Inputs) -> None:
        """``distill.distribution_warmup`` steps of F alone on G's samples (no gradients to G) of fresh
        noise, classes and w, so that F knows G's distribution before its gradients reach G."""
        self.fake_warmed = True
        steps = self.config.distill.distribution_warmup
        if steps == 0:
            return
        x0, g = inputs["x0"], torch.Generator().manual_seed(self.config.train.seed + 7)
        n, k, device = x0.shape[0], self.config.distill.fake_score_steps, x0.device
        print(f"difflab distill: {steps} warm-up steps of the fake denoiser on the student's samples", flush=True)
        for _ in range(steps):
            draws = {"noise": torch.randn(x0.shape, generator=g).to(device), "cond": {}}
            if "class_labels" in inputs["cond"]:
                draws["cond"]["class_labels"] = torch.randint(self.teacher.num_classes, (n,), generator=g).to(device)
            if self.guidance_range is not None:
                lo, hi = self.guidance_range
                draws["w"] = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
            draws["fake_score_t"] = torch.stack([losses.sample_training_t(self.schedule, n, g) for _ in range(k)], 1)
            draws["fake_score_noise"] = torch.randn((n, k, *x0.shape[1:]), generator=g).to(device)
            with torch.no_grad():
                sample = self.samples(net, {**draws, "skip_anchor": True})[0]
            self.fake_score_step(sample, draws, with_guidance_scale(draws["cond"], draws.get("w"), sample))

    def distribution_matching(self, fake: Tensor, inputs: Inputs, cond: dict) -> Tensor:
        """L_DM of G's samples (module docstring): T guided at each row's w against F."""
        sigma = self.schedule.sigma(inputs["dm_t"])
        noisy = fake.detach() + process.broadcast_to(sigma.to(device=fake.device, dtype=fake.dtype), fake) \
            * inputs["dm_noise"]
        real = Denoiser(self.real.network, self.schedule, self.real.prediction, self.real.learned_variance)
        w = inputs.get("w")
        if w is not None:
            real = real.with_model(ClassifierFreeGuidance(real.model, w, null_class_labels(self.real.num_classes),
                                                          interval=self.interval, schedule=self.schedule,
                                                          learned_variance=self.real.learned_variance))
        fake_denoiser = real.with_model(self.fake_score)
        with torch.no_grad():
            real_x0 = real.predict(noisy, sigma, **inputs["cond"]).x0
            fake_x0 = fake_denoiser.predict(noisy, sigma, **cond).x0
        return distribution_matching_loss(fake, real_x0, fake_x0)

    def judge(self, x: Tensor, inputs: Inputs, kind: str):
        """D's features of real or generated images (``kind``), with their noise; a frozen feature
        network keeps no graph unless x needs a gradient (G's term)."""
        noise, disc = inputs[f"{kind}_noise"], self.discriminator
        if isinstance(disc, FeatureDiscriminator):
            with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
                return disc.features(x, inputs["cond"].get("class_labels"), noise, inputs[f"{kind}_sigma"])
        return disc.features(x + self.config.distill.instance_noise * noise)

    def sampler_model(self, net):
        """``net`` as G and S sample: its w input 1 outside ``distill.guidance_interval`` when one is set."""
        return net if self.interval is None else GuidanceInputInterval(net, self.interval, self.schedule)

    def samples(self, net, inputs: Inputs) -> tuple[Tensor, Tensor | None]:
        """(x̂, x̂ˢ): G's and the frozen student's samples of the rows' noise, with gradients through G's
        (x̂ˢ None without the regression)."""
        noise, w = inputs["noise"], inputs.get("w")
        cond = with_guidance_scale(inputs["cond"], w, noise)
        start = noise * float(self.schedule.prior_std(self.sigmas[0]))
        frozen, anchor = self.teacher.denoiser(), None
        if self.config.distill.regression_weight > 0 and not inputs.get("skip_anchor"):
            with torch.no_grad():
                anchor = ddim_sample(frozen.with_model(self.sampler_model(frozen.model)), start, self.sigmas, cond)
        return ddim_sample(frozen.with_model(self.sampler_model(net)), start, self.sigmas, cond), anchor

    def loss(self, net, inputs: Inputs) -> StepLoss:
        """One discriminator step on this micro-batch, then G's loss L_G (module docstring)."""
        d, labels, w = self.config.distill, inputs["cond"].get("class_labels"), inputs.get("w")
        disc = self.discriminator
        fake, anchor = self.samples(net, inputs)
        classify = disc.classifier is not None and d.classifier_weight > 0

        learning = torch.is_grad_enabled()  # not so when the trainer re-scores a step: then no state changes
        disc.train(learning)  # (eval mode: spectral norm's power iteration stands still)
        disc.requires_grad_(learning)
        h_real = self.judge(inputs["x0"], inputs, "real")
        d_real, d_fake = disc.logits(h_real, labels), disc.logits(self.judge(fake.detach(), inputs, "fake"), labels)
        d_loss = hinge_losses(d_real, d_fake)
        if classify:  # the auxiliary classifier learns the classes of real images only
            d_loss = d_loss + F.cross_entropy(disc.class_logits(h_real).float(), labels)
        if learning:
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_optimizer.step()

        disc.requires_grad_(False)  # G's loss reaches G only
        h_fake = self.judge(fake, inputs, "fake")
        adversarial = F.softplus(-disc.logits(h_fake, labels).float()).mean()
        disc.train()
        metrics = {"d_loss": d_loss.detach(), "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean(),
                   "adversarial": adversarial.detach()}
        loss = d.adversarial_weight * adversarial
        if anchor is not None:
            regression = (fake - anchor).float().square().mean()
            metrics["regression"] = regression.detach()
            loss = loss + d.regression_weight * regression
        if self.real is not None:
            cond = with_guidance_scale(inputs["cond"], w, fake)
            if learning:
                if not self.fake_warmed:
                    self.warm_up_fake_score(net, inputs)
                metrics["fake_score_loss"] = self.fake_score_step(fake, inputs, cond)
            matching = self.distribution_matching(fake, inputs, cond)
            metrics["distribution_matching"] = matching.detach()
            loss = loss + d.distribution_weight * matching
        if classify and w is not None:  # the guidance tilt p(y | x)^(w − 1) of classifier-free guidance
            tilt = (w - 1).to(device=fake.device, dtype=torch.float32)
            cross_entropy = F.cross_entropy(disc.class_logits(h_fake).float(), labels, reduction="none")
            metrics["class_loss"] = cross_entropy.detach().mean()
            loss = loss + d.classifier_weight * (tilt * cross_entropy).mean()
        return StepLoss(loss, metrics)

    def trained_beside(self) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]:
        """What trains beside G, by :data:`PREFIXES` key: D, and DMD's fake denoiser when on."""
        modules = {"discriminator": (self.discriminator, self.d_optimizer)}
        if self.fake_score is not None:
            modules["fake_score"] = (self.fake_score, self.fake_optimizer)
        return modules

    def state_dict(self) -> dict[str, Tensor]:
        """D's (and F's) weights and their optimizers' moments, flattened to tensors."""
        state = {}
        for name, (module, optimizer) in self.trained_beside().items():
            weights_prefix, optimizer_prefix = PREFIXES[name]
            state.update({weights_prefix + k: v for k, v in module.state_dict().items()})
            for index, moments in optimizer.state_dict()["state"].items():
                state.update({f"{optimizer_prefix}{index}.{k}": torch.as_tensor(v) for k, v in moments.items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, (module, optimizer) in self.trained_beside().items():
            weights_prefix, optimizer_prefix = PREFIXES[name]
            weights = {k[len(weights_prefix):]: v for k, v in state.items() if k.startswith(weights_prefix)}
            if not weights:
                raise ValueError(MISSING_STATE[name])
            module.load_state_dict(weights)
            self.fake_warmed = True  # a resumed F has had its warm-up
            moments: dict[int, dict] = {}
            for key, value in state.items():
                if key.startswith(optimizer_prefix):
                    index, moment = key[len(optimizer_prefix):].split(".", 1)
                    moments.setdefault(int(index), {})[moment] = value
            saved = optimizer.state_dict()
            optimizer.load_state_dict({"state": moments, "param_groups": saved["param_groups"]})

    def distilled_record(self) -> dict:
        """The progressive student's record (its grid, w range and teacher), with what refined it."""
        d, student = self.config.distill, self.teacher
        return {**student.record.distilled,
                # the w range G was refined on: outside it G has only drifted from S, so sampling refuses it
                "guidance_range": list(self.guidance_range) if self.guidance_range is not None else None,
                # the interval G was refined with, and the one it samples with unless told otherwise
                "guidance_interval": list(self.interval) if self.interval is not None else None,
                "adversarial": {"path": str(student.path.parent.resolve()) if student.path else None,
                                "step": student.record.step, "weight": d.adversarial_weight,
                                "discriminator": d.discriminator, "instance_noise": d.instance_noise,
                                "regression_weight": d.regression_weight,
                                "distribution_weight": d.distribution_weight}}
