"""``difflab export RUN --format diffusers --out DIR``: a difflab run as a diffusers folder.

The folder is what diffusers' ``from_pretrained`` loads: the network as ``unet/``
(``UNet2DModel`` or ``UNet2DConditionModel``) or ``transformer/`` (``DiTTransformer2DModel``), the
noise schedule as a ``DDIMScheduler`` config in ``scheduler/``, a latent model's autoencoder as
``vae/`` (``AutoencoderKL``), an imported CLIP text encoder as ``text_encoder/`` + ``tokenizer/``,
and a ``model_index.json`` naming the pipeline class where one fits (``DDPMPipeline``,
``StableDiffusionPipeline``, ``DiTPipeline``). The EMA weights are exported (what ``sample`` uses).

What has no diffusers equivalent is refused with its name (the converters in
:mod:`difflab.models.diffusers_unet`, :mod:`difflab.models.diffusers_dit`,
:mod:`difflab.models.diffusers_weights` say which settings), and so is a text model whose encoder
is not CLIP (diffusers' pipelines take CLIP; ``network_only=True`` exports the network and
scheduler without a pipeline).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..models.dit import DiT
from ..models.unet import UNet
from .scheduler import schedule_to_diffusers


def _save_json(path: Path, config: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))


def export_diffusers(run: str | Path, out: str | Path, network_only: bool = False) -> Path:
    """Write ``run`` (a difflab diffusion run) as a diffusers folder at ``out``; returns ``out``.

    Raises:
        ValueError: naming the feature diffusers has no equivalent of.
    """
    from safetensors.torch import save_file

    from ..models.diffusers_dit import save_diffusers_dit
    from ..models.diffusers_unet import UNET_2D, UNET_2D_CONDITION, save_diffusers_unet
    from ..models.diffusers_weights import WEIGHTS_FILE, autoencoder_kl_to_diffusers
    from ..pipelines.loading import DiffusionModel

    model = DiffusionModel.load(run)
    record, network = model.record, model.network
    if record.image_condition is not None and not network_only:
        raise ValueError(f"diffusers' pipelines have no equivalent of difflab's image_condition="
                         f"{record.image_condition!r}; export the network alone with --network-only")
    encoder = record.text_encoder
    if encoder and encoder.get("name") != "clip" and not network_only:
        raise ValueError(f"diffusers' text-to-image pipelines take a CLIP text encoder; this model's is "
                         f"{encoder.get('name')!r}: export the network alone with --network-only")
    # check everything before writing anything
    if isinstance(network, UNet):
        write_network = lambda folder: save_diffusers_unet(network, folder / "unet")  # noqa: E731
    elif isinstance(network, DiT):
        write_network = lambda folder: save_diffusers_dit(network, folder / "transformer")  # noqa: E731
    else:
        raise ValueError(f"difflab exports U-Net and DiT networks; this run's is {type(network).__name__}")
    spacing = record.sample_defaults.get("spacing", "trailing")
    scheduler = schedule_to_diffusers(record.schedule, record.prediction, record.learned_variance, spacing,
                                      clip_sample=model.latent is None)  # difflab clips a pixel model's x̂₀
    vae = None
    if model.latent is not None and not network_only:
        vae = autoencoder_kl_to_diffusers(model.latent.autoencoder, model.latent.scale)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_network(out)
    _save_json(out / "scheduler" / "scheduler_config.json", scheduler)
    if network_only:
        return out
    components = {"scheduler": ["diffusers", "DDIMScheduler"]}
    if vae is not None:
        config, state = vae
        _save_json(out / "vae" / "config.json", config)
        save_file(state, str(out / "vae" / WEIGHTS_FILE))
        components["vae"] = ["diffusers", "AutoencoderKL"]
    if encoder:
        folder = Path(encoder["folder"])
        for part in ("text_encoder", "tokenizer"):
            shutil.copytree(folder / part, out / part, dirs_exist_ok=True)
        components.update(text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"])
    if isinstance(network, DiT):
        pipeline = "DiTPipeline" if vae is not None else None
        components["transformer"] = ["diffusers", "DiTTransformer2DModel"]
        if record.class_names:
            components["id2label"] = {str(i): name for i, name in enumerate(record.class_names)}
    else:
        pipeline = ("StableDiffusionPipeline" if encoder and vae is not None else
                    "DDPMPipeline" if not encoder and vae is None and not record.class_names else None)
        components["unet"] = ["diffusers", UNET_2D_CONDITION if network.config.context_dim else UNET_2D]
        if pipeline == "StableDiffusionPipeline":
            components.update(safety_checker=[None, None], feature_extractor=[None, None],
                              requires_safety_checker=False)
    if pipeline is not None:
        _save_json(out / "model_index.json", {"_class_name": pipeline, "_diffusers_version": "0.42.1",
                                              **components})
    return out
