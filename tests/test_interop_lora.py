"""LoRA files made for diffusers' U-Net (PEFT / diffusers and kohya key layouts) on the difflab U-Net
imported from it: the fused q/k/v adapters (difflab.models.lora_files) give diffusers' outputs."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from safetensors.torch import save_file  # noqa: E402

from difflab.models.diffusers_unet import load_diffusers_unet  # noqa: E402
from difflab.models.lora_files import load_lora  # noqa: E402
from helpers import perturbed  # noqa: E402

SD = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
          cross_attention_dim=24, attention_head_dim=4, norm_num_groups=8)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2"]


@pytest.fixture(scope="module")
def unet_with_lora(tmp_path_factory):
    """A tiny SD-like U-Net saved without LoRA, and its LoRA (random A and B) as PEFT tensors."""
    folder = tmp_path_factory.mktemp("unet")
    torch.manual_seed(0)
    unet = perturbed(diffusers.UNet2DConditionModel(**SD))
    unet.save_pretrained(folder, safe_serialization=True)
    unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=6, target_modules=TARGETS, init_lora_weights=False))
    state = peft.get_peft_model_state_dict(unet)
    return folder, unet, state


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5.0, 700.0]), torch.randn(2, 5, 24, generator=g)


def _compare(folder, unet, path):
    ours = load_diffusers_unet(folder).eval()
    x, t, context = _inputs()
    with torch.no_grad():
        base = ours(x, t, context=context)
        lora = load_lora(path, ours)  # applied: hooks on the layers
        expected = unet(x, t, encoder_hidden_states=context).sample
        got = ours(x, t, context=context)
        lora.merge()
        merged = ours(x, t, context=context)
    assert (expected - base).abs().max() > 1e-2  # the LoRA changes the output, so the check can fail
    assert (got - expected).abs().max() < 1e-4
    assert (merged - expected).abs().max() < 1e-4


def test_diffusers_peft_layout_loads_onto_the_imported_unet(unet_with_lora, tmp_path):
    folder, unet, state = unet_with_lora
    path = tmp_path / "lora.safetensors"
    save_file({f"unet.{k}": v.contiguous() for k, v in state.items()}, str(path), metadata={"lora_alpha": "6"})
    _compare(folder, unet, path)


def test_kohya_layout_loads_onto_the_imported_unet(unet_with_lora, tmp_path):
    folder, unet, state = unet_with_lora
    tensors = {}
    for key, value in state.items():
        layer, _, part = key.partition(".lora_")
        stem = "lora_unet_" + layer.replace(".", "_")
        tensors[f"{stem}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value.contiguous()
        tensors[f"{stem}.alpha"] = torch.tensor(6.0)
    path = tmp_path / "kohya.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_dim": json.dumps(4)})
    _compare(folder, unet, path)
