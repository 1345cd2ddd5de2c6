"""LoRA: low-rank adapters on a frozen network's layers (Hu et al. 2021, "LoRA: Low-Rank Adaptation
of Large Language Models"; Ryu's port to diffusion models).

A layer y = W x (a linear map, or a convolution) gets a trainable low-rank delta::

    y = W x + s · B A x,    A: r × in (down), B: out × r (up),   s = α / r   (rsLoRA: α / √r)

``A`` starts Kaiming-uniform (a = √5, PEFT's default), ``B`` at zero, so a fresh adapter is the
identity. For a convolution, A is a convolution with the layer's kernel, stride and padding to r
channels and B a 1×1 convolution back (PEFT's and kohya's layout); ΔW = s · B ∘ A is a kernel of
the layer's shape.

:class:`LoraNetwork` holds the adapters of one LoRA for the chosen layers of a network (by module
name patterns, :data:`DEFAULT_TARGETS`: the attention and cross-attention projections) and runs
them through forward hooks, so the network's own modules and state dict are untouched: its
parameters are the adapters alone (what a trainer trains and a checkpoint stores), calling it
calls the network, and several LoRAs load onto one network at once, each with its scale. Merging
adds s·scale·ΔW into the weights (the hooks then stay silent); unmerging restores the weights
saved before the first merge, bit for bit.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

# the attention projections: self-attention's fused qkv and output, cross-attention's q, kv, output
DEFAULT_TARGETS = ("*.attn.qkv", "*.attn.proj", "*.cross.q", "*.cross.kv", "*.cross.proj")
RESIDUAL_CONV_TARGETS = ("*.conv1", "*.conv2")  # the residual blocks' convolutions (optional)


@dataclass
class LoraConfig:
    """What a LoRA adapts and how.

    Attributes:
        rank: r, the rank of each delta.
        alpha: α; the delta is scaled by α / r (None: α = r, scale 1).
        targets: module-name patterns (``fnmatch``, e.g. ``*.attn.qkv``) of the layers adapted.
        dropout: dropout on the adapter's input while training.
        rslora: scale by α / √r (Kalajdzievski 2023) instead of α / r.
    """

    rank: int = 4
    alpha: float | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    dropout: float = 0.0
    rslora: bool = False

    def __post_init__(self):
        self.targets = tuple(self.targets)
        if self.rank < 1:
            raise ValueError(f"the LoRA rank must be at least 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"the LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("a LoRA needs target layers (module-name patterns such as '*.attn.qkv')")

    @property
    def scaling(self) -> float:
        alpha = self.rank if self.alpha is None else self.alpha
        return alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}


class LoraAdapter(nn.Module):
    """One layer's delta: ``down`` (A) and ``up`` (B), with the LoRA's scaling."""

    def __init__(self, layer: nn.Module, rank: int, scaling: float, dropout: float = 0.0):
        super().__init__()
        if isinstance(layer, nn.Linear):
            self.down = nn.Linear(layer.in_features, rank, bias=False)
            self.up = nn.Linear(rank, layer.out_features, bias=False)
        elif isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise ValueError("LoRA adapts ungrouped convolutions only")
            self.down = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                                  layer.dilation, bias=False)
            self.up = nn.Conv2d(rank, layer.out_channels, 1, bias=False)
        else:
            raise ValueError(f"LoRA adapts nn.Linear and nn.Conv2d layers, not {type(layer).__name__}")
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.to(device=layer.weight.device, dtype=layer.weight.dtype)

    @property
    def rank(self) -> int:
        return self.down.weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(self.dropout(x))) * self.scaling

    def delta_weight(self) -> Tensor:
        """s · B A in the layer's weight shape."""
        down, up = self.down.weight, self.up.weight
        if down.ndim == 2:
            return (up @ down) * self.scaling
        out = up.flatten(1) @ down.flatten(1)  # (out, in·k·k)
        return out.view(up.shape[0], *down.shape[1:]) * self.scaling


def module_key(name: str) -> str:
    """A module name as a ``ModuleDict`` key (dots are not allowed there)."""
    return name.replace(".", "__")


def target_layers(network: nn.Module, patterns: Iterable[str]) -> dict[str, nn.Module]:
    """The linear and convolution layers of ``network`` whose names match a pattern, in order."""
    patterns = tuple(patterns)
    return {name: module for name, module in network.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d)) and any(fnmatch.fnmatchcase(name, p) for p in patterns)}


class LoraNetwork(nn.Module):
    """A LoRA's adapters on ``network`` (see the module docstring); ``scale`` multiplies them all.

    Args:
        network: the network adapted (not a submodule: its weights are not this module's).
        config: the LoRA's rank, α, targets, dropout.
        layers: the layer names to adapt (default: those ``config.targets`` match); a file's own.
    """

    def __init__(self, network: nn.Module, config: LoraConfig, layers: Iterable[str] | None = None,
                 scale: float = 1.0, ranks: dict[str, int] | None = None, alphas: dict[str, float] | None = None):
        super().__init__()
        self.config, self.scale = config, float(scale)
        modules = dict(network.named_modules())
        names = list(target_layers(network, config.targets)) if layers is None else list(layers)
        missing = [name for name in names if not isinstance(modules.get(name), (nn.Linear, nn.Conv2d))]
        if missing:
            raise ValueError(f"the network has no linear or convolution layer {missing[0]!r} to adapt")
        if not names:
            raise ValueError(f"no layer of the {type(network).__name__} matches the LoRA targets "
                             f"{list(config.targets)}")
        self.layer_names = names
        self.adapters = nn.ModuleDict()
        for name in names:  # a file may give each layer its own rank and α (kohya's)
            rank = (ranks or {}).get(name, config.rank)
            alpha = (alphas or {}).get(name, config.alpha if config.alpha is not None else rank)
            scaling = alpha / (math.sqrt(rank) if config.rslora else rank)
            self.adapters[module_key(name)] = LoraAdapter(modules[name], rank, scaling, config.dropout)
        self._network = [network]  # a plain reference: the network's parameters are not this module's
        self.merged = False
        self._hooks = []
        self.bind(network)

    def __deepcopy__(self, memo):
        """A copy of the adapters beside the same network, not hooked into it (an EMA's shadow:
        :meth:`bind` it to run it)."""
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = value if key == "_network" else [] if key == "_hooks" else copy.deepcopy(value, memo)
        clone._network = [self.network]
        return clone

    def unbind(self) -> None:
        """Take the hooks off the network (the adapters stay; :meth:`bind` puts them back)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def bind(self, network: nn.Module) -> None:
        """Run the adapters on ``network`` (the same architecture) from now on: e.g. the trained
        base's weights in place of the network the adapters were built beside."""
        if self.merged:
            raise ValueError("unmerge the LoRA before moving it to another network")
        self.unbind()
        modules = dict(network.named_modules())
        missing = [name for name in self.layer_names if name not in modules]
        if missing:
            raise ValueError(f"the network has no layer {missing[0]!r} for this LoRA")
        self._network = [network]
        self._hooks = [modules[name].register_forward_hook(self._hook(module_key(name))) for name in self.layer_names]

    @property
    def network(self) -> nn.Module:
        return self._network[0]

    def _hook(self, key: str):
        def add_delta(module, inputs, output):
            if self.merged or self.scale == 0:
                return output
            return output + self.adapters[key](inputs[0]).to(output.dtype) * self.scale

        return add_delta

    def forward(self, *args, **kwargs):
        """The adapted network's output (what a trainer calls; DDP wraps this module)."""
        return self.network(*args, **kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        share = self.num_parameters() / max(1, sum(p.numel() for p in self.network.parameters()))
        return (f"LoRA r={self.config.rank}, alpha={self.config.alpha or self.config.rank} on {len(self.layer_names)} "
                f"layers: {self.num_parameters() / 1e3:.1f}k parameters ({100 * share:.2f}% of the network's)")

    @torch.no_grad()
    def merge(self) -> None:
        """Add scale · ΔW into the adapted layers' weights (the hooks fall silent)."""
        if self.merged:
            return
        modules = dict(self.network.named_modules())
        for name in self.layer_names:
            weight = modules[name].weight
            _originals(modules[name]).append((id(self), weight.detach().clone()))
            weight.add_((self.adapters[module_key(name)].delta_weight() * self.scale).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the weights from before the merge, bit for bit. LoRAs merged one after another
        unmerge in reverse order (the last merged first)."""
        if not self.merged:
            return
        modules = dict(self.network.named_modules())
        for name in self.layer_names:
            saved = _originals(modules[name])
            if not saved or saved[-1][0] != id(self):
                raise ValueError(f"layer {name} was merged with another LoRA after this one: unmerge that one first "
                                 "(LoRAs unmerge in the reverse order of merging)")
        for name in self.layer_names:
            modules[name].weight.copy_(_originals(modules[name]).pop()[1])
        self.merged = False

    def remove(self) -> None:
        """Unmerge and take the adapters off the network (unload)."""
        self.unmerge()
        self.unbind()

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The adapters' weights in PEFT's key layout: ``{layer}.lora_A.weight`` (down), ``.lora_B.weight`` (up)."""
        out = {}
        for name in self.layer_names:
            adapter = self.adapters[module_key(name)]
            out[f"{name}.lora_A.weight"] = adapter.down.weight.detach().cpu().contiguous()
            out[f"{name}.lora_B.weight"] = adapter.up.weight.detach().cpu().contiguous()
        return out

    @torch.no_grad()
    def load_lora_state_dict(self, tensors: dict[str, Tensor]) -> None:
        """Load ``{layer}.lora_A.weight`` / ``.lora_B.weight`` for every adapted layer.

        Raises:
            ValueError: a layer's tensors missing, or of another shape (another rank or layer size).
        """
        for name in self.layer_names:
            adapter = self.adapters[module_key(name)]
            for part, param in (("lora_A", adapter.down.weight), ("lora_B", adapter.up.weight)):
                key = f"{name}.{part}.weight"
                if key not in tensors:
                    raise ValueError(f"the LoRA lacks {key}")
                if tuple(tensors[key].shape) != tuple(param.shape):
                    raise ValueError(f"{key} has shape {tuple(tensors[key].shape)}, the layer's adapter of rank "
                                     f"{adapter.rank} needs {tuple(param.shape)}: a rank mismatch, or a LoRA for "
                                     "another network")
                param.copy_(tensors[key].to(param.dtype))


def _originals(module: nn.Module) -> list[tuple[int, Tensor]]:
    """The stack of (LoRA, the layer's weight before its merge), for exact unmerging."""
    if not hasattr(module, "_lora_originals"):
        module._lora_originals = []
    return module._lora_originals


@dataclass
class LoraSpec(LoraConfig):
    """A trainable LoRA as a registered model (``{"name": "lora", "base": {...}, "rank": 4, ...}``):
    the :class:`LoraConfig` fields and the base network's complete config. Built, it is a
    :class:`LoraNetwork` beside a freshly built base network, which the trainer then rebinds to the
    real base (:meth:`LoraNetwork.bind`)."""

    base: dict = field(default_factory=dict)

    @property
    def lora(self) -> LoraConfig:
        return LoraConfig(self.rank, self.alpha, self.targets, self.dropout, self.rslora)


class TrainableLora(LoraNetwork):
    """A :class:`LoraNetwork` built from a :class:`LoraSpec` (the model registry's ``lora``)."""

    def __init__(self, spec: LoraSpec):
        from . import build_model

        super().__init__(build_model(spec.base), spec.lora)
        self.spec = spec

    @property
    def config_dict(self) -> dict:
        return asdict(self.spec)
