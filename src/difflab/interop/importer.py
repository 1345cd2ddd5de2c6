"""``difflab import``: other projects' weights as a normal difflab run.

What can be imported (local folders and files only; nothing is fetched, no pickle is read):

* a diffusers **pipeline folder** (``model_index.json``): its ``unet/`` (``UNet2DModel`` or
  ``UNet2DConditionModel``) or ``transformer/`` (``DiTTransformer2DModel``), ``scheduler/``,
  ``vae/`` (``AutoencoderKL``: a latent model) and ``text_encoder/`` + ``tokenizer/`` (CLIP);
* a diffusers **model folder** (``config.json`` + ``diffusion_pytorch_model.safetensors``) of a
  pixel ``UNet2DModel`` or a ``DiTTransformer2DModel``, with a scheduler config beside it or given;
* an original-layout **single file** (``model.diffusion_model.*``, ``first_stage_model.*``,
  ``cond_stage_model.*``: what Stable Diffusion 1.x/2.x checkpoints ship as), ``.safetensors`` only.

The run written is what ``difflab train`` writes (``RUN/checkpoint/``: config.json, the network
as ``model`` and ``ema``, a latent model's autoencoder), plus, for a text model, the CLIP text
encoder and tokenizer in ``RUN/text/`` (diffusers' ``text_encoder/`` and ``tokenizer/`` layout),
which the run's config names by a path relative to the run. ``sample``, ``eval``, ``edit``,
ControlNet and LoRA take it as any other run. The mappings: docs/interop.md.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import DIFFUSION_KIND, save_checkpoint
from ..models import model_config_dict
from ..models.diffusers_unet import (
    UNET_2D,
    UNET_2D_CONDITION,
    load_diffusers_unet,
    read_diffusers_folder,
    unet_from_diffusers,
)
from ..models.diffusers_weights import autoencoder_kl_from_diffusers
from .scheduler import schedule_from_diffusers

DIT = "DiTTransformer2DModel"
TEXT_FOLDER = "text"  # RUN/text/{text_encoder,tokenizer}: a text model's CLIP
IGNORED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


@dataclass
class Imported:
    """What an import found, before it is written as a run.

    Attributes:
        network: the difflab U-Net or DiT.
        scheduler: the diffusers scheduler config (``{}``: diffusers' DDPMScheduler defaults).
        autoencoder: a latent model's difflab autoencoder and its latent scale, else None.
        write_text: for a text model, writes the CLIP text encoder and tokenizer into a folder.
        class_names: a class-conditional model's class names.
        source: where it came from.
    """

    network: nn.Module
    scheduler: dict
    autoencoder: tuple[nn.Module, float] | None = None
    write_text: object = None  # Callable[[Path], None]
    class_names: list[str] = field(default_factory=list)
    source: str = ""
    clip_skip: int = 1


def _network(folder: Path, learned_sigma: bool, image_size: int | None) -> nn.Module:
    """The U-Net or DiT of a diffusers model folder, by its config's ``_class_name``."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a diffusers model folder")
    class_name = json.loads(config_file.read_text()).get("_class_name")
    if class_name in (UNET_2D, UNET_2D_CONDITION):
        return load_diffusers_unet(folder, learned_sigma, image_size)
    if class_name == DIT:
        from ..models.diffusers_dit import load_diffusers_dit

        return load_diffusers_dit(folder)
    raise ValueError(f"{folder} holds a diffusers {class_name!r}; difflab imports {UNET_2D}, {UNET_2D_CONDITION} "
                     f"and {DIT} networks (an AutoencoderKL alone: difflab import-autoencoder)")


def _scheduler(folder: Path | None) -> dict:
    if folder is None:
        return {}
    file = folder if folder.is_file() else folder / "scheduler_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: give the scheduler's scheduler_config.json")
    return json.loads(file.read_text())


def _learned_sigma(scheduler: dict) -> bool:
    return scheduler.get("variance_type") == "learned_range"


def _copy_text(folder: Path):
    """A writer that copies a pipeline's ``text_encoder/`` and ``tokenizer/`` (checked now)."""
    from ..text.clip import ClipTextEncoder

    encoder = ClipTextEncoder.load(folder)  # fails now, with its message, if the files do not load

    def write(target: Path) -> None:
        for part in ("text_encoder", "tokenizer"):
            source = folder / part
            if source.is_dir():
                shutil.copytree(source, target / part, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.bin", "*.msgpack", "*.h5", "*.onnx"))
        if not (target / "tokenizer" / "vocab.json").is_file():
            encoder.tokenizer.save(target / "tokenizer")

    return write


def from_pipeline_folder(folder: Path, image_size: int | None = None) -> Imported:
    """A diffusers pipeline folder (``model_index.json``)."""
    index = json.loads((folder / "model_index.json").read_text())
    listed = {name for name, value in index.items()
              if not name.startswith("_") and isinstance(value, list) and value[0] is not None}
    missing = sorted(name for name in listed - set(IGNORED_COMPONENTS) if not (folder / name).is_dir())
    if missing:
        raise FileNotFoundError(f"{folder}/model_index.json lists {', '.join(missing)}, but the folder lacks "
                                f"{'it' if len(missing) == 1 else 'them'}: copy the whole pipeline folder")
    net_name = "unet" if "unet" in listed else "transformer" if "transformer" in listed else None
    if net_name is None:
        raise ValueError(f"{folder}/model_index.json lists no unet or transformer; difflab imports pipelines "
                         f"built on a U-Net or DiT")
    scheduler = _scheduler(folder / "scheduler") if "scheduler" in listed else {}
    autoencoder = None
    if "vae" in listed:
        vae_config, vae_state = read_diffusers_folder(folder / "vae", "AutoencoderKL")
        if vae_config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise ValueError(f"{folder}/vae holds a {vae_config['_class_name']}; difflab imports AutoencoderKL")
        autoencoder = (autoencoder_kl_from_diffusers(vae_config, vae_state, image_size),
                       float(vae_config.get("scaling_factor", 0.18215)))
    factor = 2 ** (len(autoencoder[0].config.channel_mult) - 1) if autoencoder else 1
    network = _network(folder / net_name, _learned_sigma(scheduler), image_size // factor if image_size else None)
    write_text = _copy_text(folder) if "text_encoder" in listed else None
    if write_text is None and getattr(network.config, "context_dim", 0):
        raise FileNotFoundError(f"{folder} has a text-conditioned network but no text_encoder/: copy the whole "
                                f"pipeline folder")
    labels = index.get("id2label") or {}
    names = [str(labels.get(str(i), i)) for i in range(getattr(network.config, "num_classes", 0))]
    return Imported(network, scheduler, autoencoder, write_text, names, str(folder.resolve()))


def from_model_folder(folder: Path, scheduler: Path | None, image_size: int | None = None) -> Imported:
    """A lone diffusers U-Net / DiT folder, its scheduler beside it (``../scheduler``) or given."""
    if scheduler is None and (folder.parent / "scheduler" / "scheduler_config.json").is_file():
        scheduler = folder.parent / "scheduler"
    if scheduler is None and (folder.parent / "model_index.json").is_file():
        return from_pipeline_folder(folder.parent, image_size)
    config = _scheduler(scheduler)
    network = _network(folder, _learned_sigma(config), image_size)
    if getattr(network.config, "context_dim", 0):
        raise ValueError(f"{folder} is a text-conditioned {UNET_2D_CONDITION}: import the pipeline folder that holds "
                         f"it with its text encoder (the folder with model_index.json)")
    names = [str(i) for i in range(getattr(network.config, "num_classes", 0))]
    return Imported(network, config, None, None, names, str(folder.resolve()))


def _component_config(config_dir: Path | None, name: str) -> dict | None:
    """``config_dir/name/config.json`` (a diffusers folder whose configs describe the file), or None."""
    if config_dir is None:
        return None
    file = config_dir / name / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: --config takes a diffusers pipeline folder (its configs)")
    return json.loads(file.read_text())


def from_single_file(path: Path, image_size: int | None = None, prediction: str | None = None,
                     heads: int | None = None, config_dir: Path | None = None) -> Imported:
    """An original-layout Stable Diffusion / LDM single file (docs/interop.md, "Single files").

    Its architecture is read from the tensors' shapes; what shapes do not tell (heads, group-norm
    groups) follows Stable Diffusion's conventions, or ``heads``, or the configs of a diffusers
    folder of the same architecture (``config_dir``, diffusers' ``from_single_file(config=...)``).
    """
    from ..text.bpe import ClipTokenizer
    from ..text.clip import ClipTextConfig, ClipTextTransformer
    from . import ldm_single_file as ldm

    parts = ldm.split_components(ldm.read_single_file(path))
    if not parts.unet:
        raise ValueError(f"{path} has no model.diffusion_model.* keys: not a Stable Diffusion / LDM checkpoint")
    autoencoder, factor = None, 1
    if parts.vae:
        vae_config = _component_config(config_dir, "vae") or ldm.vae_config_from_ldm(parts.vae)
        factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
        autoencoder = (autoencoder_kl_from_diffusers(vae_config, ldm.ldm_vae_to_diffusers(parts.vae), image_size),
                       float(vae_config.get("scaling_factor", 0.18215)))
    latent_size = image_size // factor if image_size else None
    unet_config = (_component_config(config_dir, "unet")
                   or ldm.unet_config_from_ldm(parts.unet, heads=heads, image_size=latent_size))
    network = unet_from_diffusers({"_class_name": UNET_2D_CONDITION, **unet_config},
                                  ldm.ldm_unet_to_diffusers(parts.unet), image_size=latent_size,
                                  source=f"the U-Net in {path}")
    write_text, skip = None, 1
    if parts.text:
        text_state, layout = ldm.ldm_clip_to_transformers(parts.text)
        text_config = _component_config(config_dir, "text_encoder") or ldm.clip_config_from_state(text_state, layout)
        clip = ClipTextTransformer.from_state_dict(text_state, ClipTextConfig.from_transformers(text_config))
        skip = 2 if layout == "sd2" else 1  # SD 2.x reads the penultimate layer
        folder_tokenizer = config_dir / "tokenizer" if config_dir is not None else None

        def write_text(target: Path) -> None:
            clip.save_diffusers(target / "text_encoder")
            if folder_tokenizer is not None and (folder_tokenizer / "vocab.json").is_file():
                shutil.copytree(folder_tokenizer, target / "tokenizer", dirs_exist_ok=True)
            else:
                ClipTokenizer.from_open_clip(pad="end" if layout == "sd1" else "zero").save(target / "tokenizer")
    elif network.config.context_dim:
        raise ValueError(f"{path} has a text-conditioned U-Net but no cond_stage_model.* keys (its text encoder)")
    scheduler = ldm.ldm_scheduler_config(parts.other, prediction)
    return Imported(network, scheduler, autoencoder, write_text, [], str(path.resolve()), clip_skip=skip)


def import_source(source: str | Path, *, scheduler: str | Path | None = None, image_size: int | None = None,
                  prediction: str | None = None, heads: int | None = None,
                  config: str | Path | None = None) -> Imported:
    """Read any importable source (see the module docstring).

    Raises:
        FileNotFoundError, ValueError: one clear message naming what is wrong and the fix.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        from .ldm_single_file import PICKLE_SUFFIXES

        if path.suffix.lower() not in (".safetensors", *PICKLE_SUFFIXES):
            raise ValueError(f"{path}: difflab imports a folder (diffusers) or a .safetensors single file")
        # a pickle is refused by name (with how to convert it) where single files are read
        return from_single_file(path, image_size, prediction, heads, Path(config) if config else None)
    if (path / "model_index.json").is_file():
        return from_pipeline_folder(path, image_size)
    return from_model_folder(path, Path(scheduler) if scheduler else None, image_size)


def write_run(imported: Imported, out: str | Path, *, steps: int | None = None,
              guidance_scale: float | None = None) -> Path:
    """Write an :class:`Imported` as a difflab run folder; returns its checkpoint folder."""
    from ..latent import LatentSpace

    out = Path(out)
    view = schedule_from_diffusers(imported.scheduler)
    cfg = imported.network.config
    text = bool(getattr(cfg, "context_dim", 0))
    conditional = text or bool(imported.class_names)
    latent = None
    tensors = {"model": imported.network.state_dict()}
    side = cfg.image_size
    if imported.autoencoder is not None:
        autoencoder, scale = imported.autoencoder
        factor = 2 ** (len(autoencoder.config.channel_mult) - 1)
        ae = autoencoder.config
        latent = LatentSpace(autoencoder, scale, (ae.in_channels, side * factor, side * factor),
                             (ae.z_channels, side, side), model_config_dict(autoencoder), imported.source)
        tensors["autoencoder"] = autoencoder.state_dict()
    tensors["ema"] = tensors["model"]
    text_encoder = None
    if text:
        (out / TEXT_FOLDER).mkdir(parents=True, exist_ok=True)
        imported.write_text(out / TEXT_FOLDER)
        text_encoder = {"name": "clip", "folder": TEXT_FOLDER, "max_length": 77, "skip": imported.clip_skip}
    default_guidance = 7.5 if text else 4.0 if conditional else 1.0
    sample = {**view["sample"], "steps": steps or 50,
              "guidance_scale": default_guidance if guidance_scale is None else guidance_scale}
    config = {
        "kind": DIFFUSION_KIND, "step": 0, "model": model_config_dict(imported.network),
        "schedule": view["schedule"], "image_shape": [cfg.in_channels, side, side],
        "prediction": view["prediction"],
        "learned_variance": view["learned_variance"] or bool(getattr(cfg, "learned_sigma", False)),
        "class_names": imported.class_names, "text_encoder": text_encoder, "image_condition": None,
        "latent": latent.to_config() if latent is not None else None,
        "train_config": {"sample": sample, "diffusion": {"cond_drop_prob": 0.1 if conditional else 0.0,
                                                         "prediction": view["prediction"]}},
        "imported_from": imported.source,
    }
    with torch.no_grad():
        return save_checkpoint(out / "checkpoint", config, tensors)
