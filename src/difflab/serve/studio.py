"""The Python API behind ``difflab serve``: plain functions the web page's callbacks call.

Nothing here imports Gradio, so the logic is tested (and usable) without a browser::

    studio = Studio(["runs/demo-digits"])
    result = studio.generate(Request("demo-digits", seed=0, n=4))
    result.paths[3]            # a PNG carrying its generation record; seed 3 remakes it alone
    studio.settings_from_png(open(result.paths[3], "rb").read())   # the page's fields, restored

A :class:`Studio` holds the runs a server offers (loaded on first use), makes images one request
at a time per device (a lock: the page queues the rest), writes each image as a PNG with its
record (what ``difflab sample`` writes, so ``--from-png`` and the page's PNG drop remake it), and
reports progress, x̂₀ previews and cancellation through one per-step callback (DESIGN.md, "How the
applications plug in").
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .uploads import read_upload

EVERY_CLASS = "every class in turn"
AUTO_SPACING = "auto"  # the run's tuned levels for the sampler and steps if it has some, else its spacing
INPAINT_MODES = ("blend", "repaint", "model")
PREVIEW_SIDE = 128  # pixels: the x̂₀ preview of a small model is enlarged to about this


class Cancelled(Exception):
    """A generation stopped by its user (the page's Stop button)."""


@dataclass
class Request:
    """What the Generate, Image to image and Inpaint tabs send; None = the run's default.

    Attributes:
        model: a served run's name.
        prompt, negative_prompt: a text model's caption and CFG's unconditional caption.
        class_label: a class model's class name, or ``EVERY_CLASS`` (image i gets class i mod C).
        method, steps, spacing: the sampler (spacing None or ``AUTO_SPACING``: the checkpoint's tuned
            levels for this sampler and steps when it has some, else the run's spacing, as
            ``difflab sample`` chooses); seed: image i uses seed + i (−1: a random seed).
        guidance_scale, guidance_rescale: classifier-free guidance.
        n: how many images.
        image, strength, strength_mode: image to image (an uploaded PIL image).
        mask, inpaint, inpaint_area, inpaint_padding, mask_blur: inpainting (white = repaint).
    """

    model: str
    prompt: str = ""
    negative_prompt: str = ""
    class_label: str | None = EVERY_CLASS
    method: str | None = None
    steps: int | None = None
    spacing: str | None = None
    seed: int = 0
    guidance_scale: float | None = None
    guidance_rescale: float = 0.0
    n: int = 4
    image: Image.Image | None = None
    strength: float = 0.75
    strength_mode: str = "diffusers"
    mask: Image.Image | None = None
    inpaint: str = "blend"
    inpaint_area: str = "whole"
    inpaint_padding: int = 32
    mask_blur: float = 0.0


@dataclass
class Result:
    """The images of one request: PNG files (each with its record), captions and records."""

    paths: list[Path]
    captions: list[str]
    records: list[dict]
    seconds: float = 0.0


@dataclass
class ServedRun:
    """A run the server offers: its name on the page, its folder and (once used) its pipeline."""

    name: str
    path: Path
    pipeline: object = None  # difflab.Pipeline, loaded on first use
    record: dict = field(default_factory=dict)


def caption(record: dict) -> str:
    """The gallery caption of an image: what it shows and how to remake it."""
    what = record.get("prompt") or record.get("class_name") or (
        f"class {record['class']}" if record.get("class") is not None else "unconditional")
    return f"{what} · seed {record['seed']}"


class Studio:
    """The runs a server offers and what the page asks of them (see the module docstring).

    Args:
        runs: run folders; each is offered under its folder name (made unique).
        device: where the models run ("auto": a GPU if there is one).
        out_dir: where generated PNGs are written (default: a fresh temporary folder).
        max_n: the most images one request may ask for.
        max_upload_bytes: the largest upload accepted.
    """

    def __init__(self, runs: list[str | Path], device: str = "auto", out_dir: str | Path | None = None,
                 max_n: int = 16, max_upload_bytes: int = 10 * 2**20):
        from ..checkpoint import DIFFUSION_KIND, find_checkpoint, load_state

        if not runs:
            raise ValueError("give at least one run to serve: difflab serve RUN [RUN ...]")
        self.runs: dict[str, ServedRun] = {}
        for run in runs:
            config, _, _ = load_state(run, kind=DIFFUSION_KIND, with_extra=False, groups=())
            name = Path(find_checkpoint(run)).parent.name
            while name in self.runs:
                name += "'"
            self.runs[name] = ServedRun(name, Path(run), record=config)
        if out_dir is None:
            import tempfile

            out_dir = tempfile.mkdtemp(prefix="difflab-serve-")
        self.out_dir = Path(out_dir)
        self.device, self.max_n, self.max_upload_bytes = device, max_n, max_upload_bytes
        self._lock = threading.Lock()  # one generation at a time on this device

    # -- what the page shows ------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.runs)

    def run(self, name: str) -> ServedRun:
        if name not in self.runs:
            raise ValueError(f"unknown model {name!r}; this server offers: {', '.join(self.runs)}")
        return self.runs[name]

    def pipeline(self, name: str):
        """The run's :class:`~difflab.Pipeline` (loaded on first use)."""
        served = self.run(name)
        if served.pipeline is None:
            from ..pipelines.pipeline import Pipeline

            served.pipeline = Pipeline.load(served.path, device=self.device)
        return served.pipeline

    def features(self, name: str) -> dict:
        """What the page may offer for this run: its conditioning and the editing it supports."""
        record = self.run(name).record
        sample = record.get("train_config", {}).get("sample", {})
        image_condition = record.get("image_condition")
        return {
            "text": record.get("text_encoder") is not None,
            "classes": list(record.get("class_names") or []),
            "guidance": record.get("train_config", {}).get("diffusion", {}).get("cond_drop_prob", 0) > 0,
            "img2img": image_condition is None,
            "inpaint_modes": [m for m in INPAINT_MODES if m != "model" or image_condition == "inpaint"],
            "image_shape": record.get("latent", {}).get("image_shape") if record.get("latent") else
            record.get("image_shape"),
            "defaults": {"method": sample.get("method", "dpmpp_2m"), "steps": sample.get("steps", 20),
                         "spacing": sample.get("spacing", "trailing"),
                         "guidance_scale": sample.get("guidance_scale", 1.0)},
        }

    def card(self, name: str) -> str:
        """The model card (Markdown): architecture, parameters, data, training, schedule, defaults."""
        served = self.run(name)
        record = served.record
        model = dict(record.get("model", {}))
        train = record.get("train_config", {})
        data = train.get("data", {})
        features = self.features(name)
        params = ""
        if served.pipeline is not None:
            params = f"{sum(p.numel() for p in served.pipeline.model.network.parameters()) / 1e6:.2f}M parameters; "
        size = "×".join(str(s) for s in record.get("image_shape", []))
        lines = [
            f"### {name}",
            f"* **Network**: {model.get('name')} ({params}input {size}"
            + (", latent" if record.get("latent") else "") + ")",
            "* **Conditioning**: " + ("text (" + record["text_encoder"].get("name", "") + ")"
                                       if features["text"] else f"{len(features['classes'])} classes"
                                       if features["classes"] else "unconditional"),
            f"* **Data**: {data.get('dataset', record.get('imported_from', 'unknown'))}"
            + (f" at {data.get('resolution')} px" if data.get("resolution") else ""),
            f"* **Training**: step {record.get('step')}"
            + (f" of {train.get('train', {}).get('steps')}" if train.get("train", {}).get("steps") else ""),
            f"* **Schedule**: {record.get('schedule', {}).get('name')}, predicts {record.get('prediction')}"
            + (", learned variance" if record.get("learned_variance") else ""),
            "* **Sampling defaults**: " + ", ".join(f"{k} {v}" for k, v in features["defaults"].items()),
            f"* **Folder**: `{served.path}`",
        ]
        return "\n".join(lines)

    def metrics(self, name: str) -> list[dict]:
        """The run's ``metrics.jsonl`` rows (empty for an imported run)."""
        file = self.run(name).path / "metrics.jsonl"
        if not file.is_file():
            return []
        rows = []
        for line in file.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a killed run
        return rows

    def metrics_plot(self, name: str):
        """A matplotlib figure of the training loss (and any evaluated metric) against the step,
        or None when the run has no metrics."""
        rows = [r for r in self.metrics(name) if "step" in r]
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [k for k in ("loss", "fid", "kid", "classifier_score") if any(k in r for r in rows)]
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 2.6), squeeze=False)
        for ax, key in zip(axes[0], keys):
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            ax.plot(*zip(*points))
            ax.set_xlabel("step"), ax.set_title(key)
            if key == "loss":
                ax.set_yscale("log")
        fig.tight_layout()
        return fig

    # -- making images --------------------------------------------------------------------------
    def check(self, request: Request) -> None:
        """One clear error for a request the run cannot serve (before any work)."""
        features = self.features(request.model)
        if not 1 <= request.n <= self.max_n:
            raise ValueError(f"the number of images must be 1 to {self.max_n}, got {request.n}")
        if request.steps is not None and request.steps < 1:
            raise ValueError(f"steps must be at least 1, got {request.steps}")
        if request.mask is not None and request.image is None:
            raise ValueError("draw the mask on an uploaded image")
        if request.mask is not None and request.inpaint not in features["inpaint_modes"]:
            raise ValueError(f"inpainting mode {request.inpaint!r} is not available for {request.model}; "
                             f"choose one of {', '.join(features['inpaint_modes'])}")
        if (request.class_label not in (None, EVERY_CLASS)
                and request.class_label not in features["classes"]):
            raise ValueError(f"unknown class {request.class_label!r} for {request.model}")

    def generate(self, request: Request, *, progress: Callable[[int, int], None] | None = None,
                 preview: Callable[[Image.Image, int, int], None] | None = None, preview_every: int = 5,
                 cancel: threading.Event | None = None) -> Result:
        """Make the request's images; one request at a time (others wait for the lock).

        Args:
            progress: called with (step, steps) after each sampler step.
            preview: called with x̂₀ of the first image as a PIL image every ``preview_every`` steps.
            cancel: set it to stop the generation at the next step (:class:`Cancelled` is raised).
        """
        self.check(request)
        pipe = self.pipeline(request.model)
        seed = random.randrange(2**31) if request.seed is None or request.seed < 0 else int(request.seed)
        features = self.features(request.model)
        kwargs = dict(n=request.n, seed=seed, method=request.method, steps=request.steps,
                      spacing=None if request.spacing == AUTO_SPACING else request.spacing,
                      guidance_scale=request.guidance_scale, guidance_rescale=request.guidance_rescale)
        if features["text"]:
            kwargs.update(prompt=request.prompt or "", negative_prompt=request.negative_prompt or None)
        elif features["classes"] and request.class_label not in (None, EVERY_CLASS):
            kwargs["class_label"] = request.class_label
        if request.image is not None:
            kwargs.update(image=request.image.convert("RGB"), strength=request.strength,
                          strength_mode=request.strength_mode)
            if request.mask is not None:
                kwargs.update(mask=request.mask.convert("L"), inpaint=request.inpaint,
                              inpaint_area=request.inpaint_area, inpaint_padding=request.inpaint_padding,
                              mask_blur=request.mask_blur)
        kwargs["callback"] = self._step_callback(pipe, progress, preview, preview_every, cancel)
        with self._lock:
            start = time.perf_counter()
            images = pipe(**kwargs)
            seconds = time.perf_counter() - start
        return self._save(images, seconds)

    def edit(self, request: Request, edit_prompt: str, *, cross_replace: float = 0.8, self_replace: float = 0.4,
             feature_replace: float | None = None, progress: Callable[[int, int], None] | None = None,
             preview: Callable[[Image.Image, int, int], None] | None = None, preview_every: int = 5,
             cancel: threading.Event | None = None) -> Result:
        """Prompt-to-prompt on a text run (docs/editing.md): ``request.n`` (source, edit) pairs from
        the request's seeds, or, with ``request.image``, that picture null-text inverted under
        ``request.prompt`` and edited with DDIM (whatever ``request.method``: the inversion tunes
        DDIM's walk); the images alternate source, edit. Each PNG records its
        prompt, seed and sampler and, under ``prompt_to_prompt``, the edit (the fields a PNG drop
        restores make the source again, not the edit; ``difflab edit --from-png`` makes the pair).
        Arguments as for :meth:`generate`."""
        features = self.features(request.model)
        if not features["text"]:
            raise ValueError(f"prompt-to-prompt changes words of a prompt, and {request.model} is not a text model")
        if not (request.prompt or "").strip() or not (edit_prompt or "").strip():
            raise ValueError("give the prompt (what the picture shows) and the edited prompt")
        from ..models.unet import UNet

        self.check(request)
        pipe = self.pipeline(request.model)
        if not isinstance(pipe.model.network, UNet):
            feature_replace = 0.0  # the page's slider; a DiT has no decoder block to take features from
        seed = random.randrange(2**31) if request.seed is None or request.seed < 0 else int(request.seed)
        spacing = None if request.spacing == AUTO_SPACING else request.spacing
        # an uploaded picture is null-text inverted, which tunes DDIM's walk: it is edited with DDIM
        method = "ddim" if request.image is not None else request.method or "ddim"
        kwargs = dict(method=method, steps=request.steps, spacing=spacing, guidance_scale=request.guidance_scale,
                      cross_replace=cross_replace, self_replace=self_replace, feature_replace=feature_replace,
                      callback=self._step_callback(pipe, progress, preview, preview_every, cancel))
        if request.image is not None:
            kwargs["image"] = request.image.convert("RGB")
        else:
            kwargs.update(n=request.n, seed=seed)
        with self._lock:
            start = time.perf_counter()
            sources, edits = pipe.edit(request.prompt, edit_prompt, **kwargs)  # PIL images with their records
            seconds = time.perf_counter() - start
        return self._save([image for pair in zip(sources, edits) for image in pair], seconds)

    def _step_callback(self, pipe, progress, preview, every: int, cancel):
        def callback(step):
            if cancel is not None and cancel.is_set():
                raise Cancelled("the generation was cancelled")
            if progress is not None:
                progress(step.i + 1, step.n)
            if preview is not None and (step.i % every == 0 or step.i + 1 == step.n):
                preview(self._preview_image(pipe, step.denoised[:1]), step.i + 1, step.n)
        return callback

    @staticmethod
    @torch.no_grad()
    def _preview_image(pipe, x0: torch.Tensor) -> Image.Image:
        from ..data.convert import to_uint8
        from ..images import to_pil

        model = pipe.model
        x = model.latent.decode(x0.float()) if model.latent is not None else x0.float()
        image = to_pil(to_uint8(x)[0])
        factor = max(1, -(-PREVIEW_SIDE // max(image.size)))  # small images shown at least this big, pixels kept
        return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image

    def _save(self, images: list[Image.Image], seconds: float) -> Result:
        from ..pipelines.png_info import RECORD_KEY, save_png

        folder = self.out_dir / uuid.uuid4().hex[:12]
        paths, captions, records = [], [], []
        for i, image in enumerate(images):
            record = json.loads(image.info[RECORD_KEY])
            paths.append(save_png(image, folder / f"{i:03d}-seed{record['seed']}.png"))
            captions.append(caption(record))
            records.append(record)
        return Result(paths, captions, records, seconds)

    # -- PNG info ("send to") -------------------------------------------------------------------
    def settings_from_png(self, upload) -> dict:
        """The page's fields restored from a difflab PNG (an upload's bytes or its temporary file):
        the :class:`Request` fields its record sets, and the model if this server offers it.

        Raises:
            ValueError: not an image, or an image without a difflab record (one clear message).
        """
        from ..checkpoint import find_checkpoint
        from ..pipelines.pipeline import Pipeline
        from ..pipelines.png_info import RECORD_KEY

        image = read_upload(upload, self.max_upload_bytes, "the PNG")
        text = getattr(image, "text", {}).get(RECORD_KEY) if hasattr(image, "text") else None
        if text is None:
            raise ValueError("this image has no difflab generation record: only PNGs made by difflab carry one")
        record = json.loads(text)
        arguments = Pipeline.arguments_of(record)
        settings = {
            "prompt": arguments.get("prompt") or "", "negative_prompt": arguments.get("negative_prompt") or "",
            "class_label": record.get("class_name") or EVERY_CLASS, "method": arguments["method"],
            "steps": arguments["steps"], "seed": arguments["seed"],
            # tuned levels are the checkpoint's: auto finds them again (a named spacing would not)
            "spacing": AUTO_SPACING if arguments.get("sigmas") is not None else arguments["spacing"],
            "guidance_scale": arguments.get("guidance_scale"),
            "guidance_rescale": arguments.get("guidance_rescale", 0.0), "n": 1,
        }
        made_by = Path(record.get("checkpoint", "")).resolve()
        model = next((name for name, served in self.runs.items()
                      if Path(find_checkpoint(served.path)).resolve() == made_by), None)
        if model is not None:
            settings["model"] = model
        return settings
