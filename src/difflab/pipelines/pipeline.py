"""``difflab.Pipeline``: a trained run as one callable object, the diffusers habit.

    pipe = difflab.Pipeline.load("runs/emoji-latent-text-64-cpu")
    images = pipe(prompt="red apple", n=4, seed=0, guidance_scale=3)   # PIL images
    for i, image in enumerate(images):
        difflab.save_png(image, f"apple-{i}.png")                       # parameters inside

Each image returned carries its generation record in ``image.info["difflab"]`` (a JSON string),
which :func:`~difflab.pipelines.png_info.save_png` writes into the PNG; ``difflab sample
--from-png`` and :meth:`Pipeline.from_png` make the same image again from it.

Editing (docs/editing.md): ``pipe(image=..., strength=...)`` and ``mask=...`` (img2img,
inpainting), :meth:`Pipeline.invert` (DDIM or null-text inversion) and :meth:`Pipeline.edit`
(prompt-to-prompt, of seeds or of real images).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path

import torch

from ..device import pick_device
from ..images import to_pil
from ..masks import MASK_SHAPES, box_mask, shape_mask
from .controlnet import build_controls
from .embeddings import add_embedding
from .generate import Edit, Generated, SamplerSettings, plan, run
from .guidance_policy import Guidance
from .guidance_policy import guidance_scale as resolve_scale
from .img2img import InitImages, load_init_images, pixel_shape
from .inpaint import Inpainting, as_mask, read_mask
from .inpaint_area import INPAINT_AREAS, MaskedArea
from .inversion import invert_images
from .loading import DiffusionModel, NoisyClassifierModel
from .lora import add_lora
from .null_text import null_text_inversion, sample_back
from .png_info import RECORD_KEY, parameters_text, read_record
from .super_resolution import load_cond_images
from .tune import find_tuned

OUTPUTS = ("pil", "tensor", "numpy")


class Pipeline:
    """A loaded diffusion model you call to make images (see the module docstring).

    Args:
        model: the loaded checkpoint.
    """

    def __init__(self, model: DiffusionModel):
        self.model = model

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto", use_ema: bool = True) -> Pipeline:
        """The run at ``path`` (a run folder or its ``checkpoint/``) on ``device`` (auto: a GPU
        when one is visible)."""
        device = pick_device(device) if isinstance(device, str) else device
        return cls(DiffusionModel.load(path, use_ema=use_ema, device=device))

    def load_lora(self, path: str | Path, scale: float = 1.0, force: bool = False):
        """Load a LoRA (a file of any layout, or a train-lora run) onto this pipeline's network at
        ``scale``; several combine. Returns the :class:`~difflab.models.lora.LoraNetwork` (its
        ``scale`` may be changed later)."""
        return add_lora(self.model, path, scale, force)

    def load_embedding(self, path: str | Path) -> list[str]:
        """Add the learned words of an embedding file (or train-embedding run) to the text encoder;
        returns the words, to use in prompts."""
        return [loaded.token.word for loaded in add_embedding(self.model, path)]

    def fuse_lora(self) -> None:
        """Merge the loaded LoRAs into the weights (faster sampling; the same images to float tolerance)."""
        for lora in self.model.loras:
            lora.merge()

    def unfuse_lora(self) -> None:
        """Restore the weights from before :meth:`fuse_lora`, bit for bit (the LoRAs stay loaded)."""
        for lora in reversed(self.model.loras):
            lora.unmerge()

    def unload_lora(self) -> None:
        """Take every LoRA off (unfused first): the base model again."""
        self.unfuse_lora()
        for lora in self.model.loras:
            lora.remove()
        self.model.loras.clear()

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    def class_index(self, class_label: int | str | None) -> int | None:
        """A class given by index or by name, as an index."""
        if class_label is None or isinstance(class_label, int):
            return class_label
        if class_label not in self.class_names:
            raise ValueError(f"unknown class {class_label!r}; this model's classes are: {', '.join(self.class_names)}")
        return self.class_names.index(class_label)

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        class_label: int | str | None = None,
        n: int | None = None,
        seed: int = 0,
        seeds: list[int] | None = None,
        method: str | None = None,
        steps: int | None = None,
        spacing: str | None = None,
        sigmas=None,
        tuned: bool = True,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        negative_prompt: str | None = None,
        classifier: str | Path | NoisyClassifierModel | None = None,
        classifier_scale: float = 1.0,
        classifier_mode: str | None = None,
        threshold: float | None = None,
        precision: str = "auto",
        batch_size: int = 64,
        noise: torch.Tensor | None = None,
        x_start: torch.Tensor | None = None,
        strength: float | None = None,
        callback=None,
        image=None,
        strength_mode: str = "diffusers",
        mask=None,
        mask_box=None,
        inpaint: str | None = None,
        mask_blur: float = 0.0,
        repaint_jumps: int = 10,
        repaint_resample: int = 10,
        inpaint_area: str = "whole",
        inpaint_padding: int = 32,
        paste_back: bool = True,
        cond_image=None,
        aug_level: float | None = None,
        image_guidance: float | None = None,
        controlnet=None,
        control_image=None,
        control_scale=None,
        control_start=0.0,
        control_end=1.0,
        guess_mode: bool = False,
        control_preprocess=None,
        force: bool = False,
        progress: bool = False,
        output: str = "pil",
        null_text=None,
        **options,
    ):
        """n images; ``output``: ``"pil"`` (a list of PIL images with their records in ``info``),
        ``"tensor"`` (uint8 (N, C, H, W)) or ``"numpy"`` (uint8 (N, H, W, C)).

        ``prompt``: a text model's caption (a list: image i gets prompt i mod len); ``class_label``:
        a class index or name (default: every class in turn); image i uses seed ``seed + i`` (or
        ``seeds[i]``); ``classifier``: a noisy classifier run (or loaded model) for classifier
        guidance; ``**options``: the sampler's (``eta``, ``variance``, ``order`` …); ``tuned``: use
        the checkpoint's levels tuned for this method, step count and guidance scale (``difflab
        tune-steps``, or those ``difflab train`` ships) when neither ``spacing`` nor ``sigmas`` is
        given, as ``difflab sample`` does. The rest is :func:`~difflab.pipelines.generate`'s.

        Editing (docs/editing.md): ``image`` (a path, a folder, PIL image(s) or a uint8 tensor; n
        defaults to their count) with ``strength`` in [0, 1] and ``strength_mode`` (diffusers |
        fixed) is img2img; with ``mask`` (a path, PIL image or tensor, white/1 = repaint; or a
        shape name of :data:`difflab.masks.MASK_SHAPES`) it is inpainting by ``inpaint`` = blend,
        repaint (``repaint_jumps``, ``repaint_resample``) or model (a mask-conditioned model's own;
        the default for one, blend otherwise), ``mask_blur`` feathering it (pixels);
        ``inpaint_area="masked"`` repaints only a crop around the mask (grown by ``inpaint_padding``
        pixels) at the model's resolution, for images larger than the model, which keep their size.
        The pixels outside the mask are the input's (``paste_back=False``: the model's output there).

        Super-resolution (docs/image-conditioning.md): ``cond_image`` gives an upsampler its
        low-resolution input(s), in any form ``image`` takes (n defaults to their count), and
        ``aug_level`` its noise-conditioning augmentation level. An instruct-pix2pix model edits
        ``cond_image`` as ``prompt`` says, ``image_guidance`` (s_I) beside ``guidance_scale`` (s_T).

        ControlNet (docs/controlnet.md): ``controlnet`` (a ``train-controlnet`` run or a loaded
        :class:`~.controlnet.ControlNetModel`; a list for several, whose residuals add up) with
        ``control_image`` (any form ``image`` takes; a list with one entry per ControlNet for
        several; n defaults to their count), ``control_scale`` (a number, or one per residual),
        ``control_start`` / ``control_end`` (the fractions of the steps it acts in),
        ``guess_mode``, ``control_preprocess`` (make the control image from a picture: canny,
        soft_edges, tile, grayscale, auto) and ``force`` (apply it to changed base weights).
        """
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; choose one of: {', '.join(OUTPUTS)}")
        if isinstance(classifier, (str, Path)):
            classifier = NoisyClassifierModel.load(classifier, device=self.model.device)
        guidance = Guidance(scale=guidance_scale, rescale=guidance_rescale, interval=guidance_interval,
                            classifier=classifier, classifier_scale=classifier_scale if classifier else 0.0,
                            classifier_mode=classifier_mode, negative_prompt=negative_prompt,
                            image_scale=image_guidance)
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if null_text is not None:  # its walk, scale and noise (n defaults to its count)
            method, steps, spacing, guidance, noise = null_text.fill(method, steps, spacing, guidance, noise)
        settings = SamplerSettings.resolve(self.model, method, steps, spacing, sigmas, **options)
        if tuned and spacing is None and sigmas is None:
            found, _ = find_tuned(self.model, settings.method, settings.steps, guidance)
            if found is not None:
                settings = SamplerSettings.resolve(self.model, found.method, None, None, found.tensor(),
                                                   **{**found.options, **options})
        edit = None
        if image is not None:
            edit = make_edit(self.model, image, strength, strength_mode, mask, inpaint, mask_blur, repaint_jumps,
                             repaint_resample, mask_box, inpaint_area, inpaint_padding, paste_back)
            strength = None
        elif mask is not None or mask_box is not None:
            raise ValueError("a mask needs the image to inpaint: pass image=...")
        cond_images = load_cond_images(cond_image, self.model) if cond_image is not None else None
        controls = []
        if controlnet is not None:
            controls = build_controls(self.model, controlnet, control_image, control_scale, control_start, control_end,
                                      guess_mode, control_preprocess)
        elif control_image is not None:
            raise ValueError("a control image needs its ControlNet: pass controlnet=...")
        n = n if n is not None else (len(seeds) if seeds else len(noise) if noise is not None else
                                     len(edit.init) if edit is not None else
                                     len(cond_images) if cond_images is not None else
                                     len(controls[0].images) if controls else 1)
        job = plan(self.model, n, settings, seed=seed, seeds=seeds, class_index=self.class_index(class_label),
                   guidance=guidance, prompts=prompts, threshold=threshold, precision=precision, edit=edit,
                   cond_images=cond_images, aug_level=aug_level, controls=controls, force_controls=force)
        if null_text is not None:
            job, batch_size = sample_back(job, null_text), n
        out = run(job, batch_size=batch_size, progress=progress, noise=noise, x_start=x_start, strength=strength,
                  strength_mode=strength_mode, callback=callback)
        return self._as(out, output)

    def invert(self, image, *, prompt: str | None = None, class_label: int | str | None = None,
               steps: int | None = None, spacing: str | None = None, null_text: bool = False,
               guidance_scale: float | None = None, inner_steps: int = 10):
        """DDIM inversion of ``image`` (any form :meth:`__call__` takes): the unit-scale noise
        (N, C, H, W) that DDIM at guidance 1 with the same steps, spacing and ``prompt`` /
        ``class_label`` maps back (``pipe(prompt, noise=..., method="ddim", guidance_scale=1)``).
        With ``null_text``: a :class:`~.null_text.NullText` for sampling back, and editing, under
        classifier-free guidance at ``guidance_scale`` (default: the checkpoint's; a text model with
        a frozen encoder): ``pipe(prompt, null_text=...)``, :meth:`edit` ``(null_text=...)``."""
        images = load_init_images(image, self.model).images
        if null_text:
            scale = resolve_scale(self.model, Guidance(scale=guidance_scale))
            return null_text_inversion(self.model, images, prompt, guidance_scale=scale, steps=steps,
                                       spacing=spacing, inner_steps=inner_steps)
        if guidance_scale is not None:
            raise ValueError("guidance_scale is null-text inversion's (null_text=True); plain DDIM inversion runs "
                             "unguided")
        return invert_images(self.model, images, steps=steps, spacing=spacing,
                             class_index=self.class_index(class_label), prompt=prompt)

    def edit(self, prompt: str, edit: str | None = None, *, image=None, null_text=None,
             guidance_scale: float | None = None, output: str = "pil", **options):
        """Prompt-to-prompt (docs/editing.md): ``(sources, edits)``, each in the ``output`` form of
        :meth:`__call__` (PIL images carrying their records, :func:`~difflab.editing.records.pair_records`;
        a uint8 tensor; an array).

        ``image`` (any form :meth:`__call__` takes): edit real images, null-text inverted under
        ``prompt`` first; ``null_text``: an inversion made earlier (:meth:`invert`). ``options``
        are :func:`~difflab.editing.prompt_to_prompt`'s: ``mode``, ``reweight``, ``cross_replace``,
        ``self_replace``, ``feature_replace``, ``n``, ``seed``, ``seeds``, ``method``, ``steps``,
        ``spacing``, ``noise``, ``blend_words``, ``blend_threshold``."""
        from ..editing import prompt_to_prompt
        from ..editing.records import pair_records

        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; choose one of: {', '.join(OUTPUTS)}")
        if image is not None:
            if null_text is not None or options.get("noise") is not None:
                raise ValueError("image= is inverted here: pass image, null_text or noise, one of them")
            null_text = self.invert(image, prompt=prompt, null_text=True, guidance_scale=guidance_scale,
                                    steps=options.get("steps"), spacing=options.get("spacing"))
        guidance = Guidance(scale=guidance_scale) if guidance_scale is not None else None
        sources, edits, control = prompt_to_prompt(self.model, prompt, edit, null_text=null_text, guidance=guidance,
                                                   **options)
        records = pair_records(self.model, **control.run)
        return (self._as(Generated(sources, None, records[0::2]), output),
                self._as(Generated(edits, None, records[1::2]), output))

    def from_png(self, path: str | Path, output: str = "pil"):
        """The image a difflab PNG records, made again (this pipeline's weights, its record's settings)."""
        record = read_record(path)
        return self(**self.arguments_of(record), **self.input_arguments_of(record),
                    output=output)[0 if output == "pil" else slice(None)]

    @staticmethod
    def arguments_of(record: dict) -> dict:
        """:meth:`__call__`'s arguments that remake the one image a generation record describes."""
        if record.get("classifier"):
            raise ValueError("this image was made with classifier guidance: load its classifier "
                             f"({record['classifier']}) and pass it, with the record's settings, to the pipeline")
        return dict(prompt=record.get("prompt"), class_label=record.get("class"), n=1, seed=record["seed"],
                    method=record["method"], steps=record["steps"], spacing=record["spacing"],
                    sigmas=record.get("sigmas"), guidance_scale=record.get("guidance_scale"),
                    guidance_rescale=record.get("guidance_rescale", 0.0),
                    guidance_interval=tuple(record["guidance_interval"]) if record.get("guidance_interval") else None,
                    negative_prompt=record.get("negative_prompt"), threshold=record.get("threshold"),
                    precision=record.get("precision", "auto"), **record.get("options", {}))

    @staticmethod
    def input_arguments_of(record: dict, given: Collection[str] = (), source: str = "this image",
                           how: Callable[[str], str] = lambda argument: f"as {argument}=...") -> dict:
        """:meth:`__call__`'s arguments for the inputs a record names: the init image, strength and
        mask of an img2img or inpainting image, the conditioning image of an upsampler or
        instruct-pix2pix model, its augmentation level and image guidance. The PNG holds the paths,
        not the pictures: a file that is not there any more (or an input given in memory) is a
        ValueError that says which argument to pass. Inputs named in ``given`` (the caller has its
        own) are left out; ``source`` and ``how`` word the error for another front end (``difflab
        sample --from-png`` names its file and flags)."""
        def existing(key: str, what: str, argument: str) -> str:
            path = record.get(key)
            if not path or not Path(path).is_file():
                raise ValueError(f"{source} {what} {path or '(given in memory)'}, which is not there any more: "
                                 f"give it {how(argument)}")
            return path

        arguments = {}
        if "strength" in record or "inpaint" in record:
            if "image" not in given:
                arguments["image"] = existing("init_image", "is an edit of the image", "image")
            if "strength" not in given:
                arguments["strength"] = record.get("strength")
            arguments["strength_mode"] = record.get("strength_mode", "diffusers")
        if "inpaint" in record:
            mask = record.get("mask") or ""
            if not {"mask", "mask_box"} & set(given):  # the record's mask: a box, a shape or a file
                if mask.startswith("box:"):
                    arguments["mask_box"] = mask[4:]
                else:
                    arguments["mask"] = mask[6:] if mask.startswith("shape:") else existing(
                        "mask", "was inpainted with the mask", "mask")
            arguments.update(inpaint=record["inpaint"], mask_blur=record.get("mask_blur") or 0.0,
                             paste_back=record.get("paste_back", True),
                             repaint_jumps=record.get("repaint_jumps", 10),
                             repaint_resample=record.get("repaint_resample", 10),
                             inpaint_area=record.get("inpaint_area", "whole"),
                             inpaint_padding=record.get("inpaint_padding", 32))
        if "cond_image" not in given and any(record.get(key) is not None
                                             for key in ("cond_image", "aug_level", "image_guidance_scale")):
            arguments["cond_image"] = existing("cond_image", "is made from the conditioning image", "cond_image")
        for key, argument in (("aug_level", "aug_level"), ("image_guidance_scale", "image_guidance")):
            if record.get(key) is not None and argument not in given:
                arguments[argument] = record[key]
        return arguments

    @staticmethod
    def _as(out: Generated, output: str):
        if output == "tensor":
            return out.images
        if output == "numpy":
            return out.images.permute(0, 2, 3, 1).numpy()
        images = []
        for image, record in zip(out.images, out.records):
            pil = to_pil(image)
            pil.info[RECORD_KEY] = json.dumps(record, sort_keys=True)
            pil.info["parameters"] = parameters_text(record)
            images.append(pil)
        return images


def make_edit(model, image, strength=None, strength_mode="diffusers", mask=None, inpaint=None, mask_blur=0.0,
              repaint_jumps=10, repaint_resample=10, mask_box=None, inpaint_area="whole",
              inpaint_padding=32, paste_back=True) -> Edit:
    """The :class:`~.generate.Edit` of init ``image`` and an optional ``mask`` (a path, PIL image,
    tensor or shape name) or ``mask_box`` (x0,y0,x1,y1): what the pipeline and ``difflab sample``
    build from their arguments. ``inpaint`` None: a mask-conditioned model's own inpainting
    (``model``), blend for any other. ``inpaint_area="masked"`` repaints only a crop around the
    mask, grown by ``inpaint_padding`` pixels, of images kept at their own size (:mod:`.inpaint_area`).
    ``paste_back=False``: the known pixels are the model's output, not the input's."""
    if inpaint_area not in INPAINT_AREAS:
        raise ValueError(f"unknown inpaint area {inpaint_area!r}; choose one of: {', '.join(INPAINT_AREAS)}")
    only_masked = inpaint_area == "masked"
    if only_masked and mask is None and mask_box is None:
        raise ValueError("inpainting only the masked area needs a mask (--mask, --mask-box or --mask-shape)")
    init = load_init_images(image, model, native=only_masked)
    size = tuple(init.images.shape[-2:]) if only_masked else pixel_shape(model)[1:]
    inpainting = None
    if mask is not None or mask_box is not None:
        if mask is not None and mask_box is not None:
            raise ValueError("give one mask: a mask image or shape, or a mask box")
        if mask_box is not None:
            text = mask_box if isinstance(mask_box, str) else ",".join(map(str, mask_box))
            masks, source = box_mask(text, size)[None], f"box:{text}"
        elif isinstance(mask, str) and mask in MASK_SHAPES:
            masks, source = shape_mask(mask, size)[None], f"shape:{mask}"
        elif isinstance(mask, (str, Path)):
            masks, source = read_mask(mask, size), str(mask)
        else:
            masks, source = as_mask(mask, size), None
        inpaint = inpaint or ("model" if model.image_condition == "inpaint" else "blend")
        if only_masked:  # the crops become the edit; the area pastes them back
            area = MaskedArea.around(init.images, masks, inpaint_padding, pixel_shape(model)[1:], mask_blur)
            crops, crop_masks = area.crops(pixel_shape(model)[1:])
            inpainting = Inpainting(crop_masks, inpaint, repaint_jumps, repaint_resample, source=source,
                                    paste_back=paste_back)
            return Edit(InitImages(crops, init.paths), strength, strength_mode, inpainting, area)
        inpainting = Inpainting(masks, inpaint, repaint_jumps, repaint_resample, blur=mask_blur, source=source,
                                paste_back=paste_back)
    return Edit(init, strength, strength_mode, inpainting)
