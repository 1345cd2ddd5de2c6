"""LoRA (issue 22, item 1): the math against PEFT, identity at scale 0, exact merge and unmerge,
several adapters, the three file layouts and bad files."""

import copy

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from safetensors.torch import save_file
from torch import nn

from difflab.models import UNet, UNetConfig
from difflab.models.lora import LoraConfig, LoraNetwork, target_layers
from difflab.models.lora_files import load_lora, read_lora, save_kohya, save_lora
from helpers import perturb_head

pytestmark = pytest.mark.usefixtures("one_thread")


class Layers(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 5)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)

    def forward(self, x, image):
        return self.lin(x), self.conv(image)


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_math_matches_peft(rslora):
    torch.manual_seed(0)
    net = Layers()
    reference = get_peft_model(copy.deepcopy(net), PeftLoraConfig(r=2, lora_alpha=6, target_modules=["lin", "conv"],
                                                                  use_rslora=rslora))
    for name, p in reference.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p)
    ours = LoraNetwork(net, LoraConfig(rank=2, alpha=6, targets=("lin", "conv"), rslora=rslora))
    weights = {}
    for name, p in reference.named_parameters():
        if "lora_" in name:
            layer, part = name.removeprefix("base_model.model.").split(".lora_")
            weights[f"{layer}.lora_{part[0]}.weight"] = p.detach()
    ours.load_lora_state_dict(weights)
    x, image = torch.randn(3, 6), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for a, b in zip(reference(x, image), ours(x, image)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        reference.merge_adapter()
        ours.merge()
        torch.testing.assert_close(net.lin.weight, reference.base_model.model.lin.base_layer.weight, rtol=0, atol=1e-6)
        torch.testing.assert_close(net.conv.weight, reference.base_model.model.conv.base_layer.weight, rtol=0,
                                   atol=1e-6)


def unet():
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=3, image_size=8, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(8, 4), num_heads=2, norm_groups=8, context_dim=8)).eval()
    perturb_head(net)
    return net


def trained_lora(net, seed=1, **kw):
    lora = LoraNetwork(net, LoraConfig(**{"rank": 2, "alpha": 4, **kw}))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return lora


INPUTS = (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([3.0, 40.0]))
CONTEXT = {"context": torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(6))}


def test_default_targets_are_the_attention_projections_and_few_parameters():
    net = unet()
    layers = target_layers(net, LoraConfig().targets)
    assert layers and all(name.rsplit(".", 2)[-2] in ("attn", "cross") for name in layers)
    lora = LoraNetwork(net, LoraConfig(rank=4))
    assert lora.num_parameters() < 0.1 * sum(p.numel() for p in net.parameters())
    with torch.no_grad():  # a fresh adapter is the identity
        assert torch.equal(lora(*INPUTS, **CONTEXT), net.__class__.forward(net, *INPUTS, **CONTEXT))


def test_scale_zero_is_no_lora_and_merge_unmerge_are_exact():
    net = unet()
    with torch.no_grad():
        plain = net(*INPUTS, **CONTEXT)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        lora = trained_lora(net)
        hooked = net(*INPUTS, **CONTEXT)
        assert not torch.equal(hooked, plain)
        lora.scale = 0.0
        assert torch.equal(net(*INPUTS, **CONTEXT), plain)
        lora.scale = 0.7
        hooked = net(*INPUTS, **CONTEXT)
        lora.merge()
        torch.testing.assert_close(net(*INPUTS, **CONTEXT), hooked, rtol=1e-5, atol=1e-5)
        lora.unmerge()
        assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
        assert torch.equal(net(*INPUTS, **CONTEXT), hooked)
        lora.remove()
        assert torch.equal(net(*INPUTS, **CONTEXT), plain)


def test_two_adapters_at_their_scales_equal_their_merged_sum():
    net = unet()
    with torch.no_grad():
        a, b = trained_lora(net, seed=1), trained_lora(net, seed=2, rank=3, targets=("*.cross.*",))
        a.scale, b.scale = 0.8, -0.5
        hooked = net(*INPUTS, **CONTEXT)
        a.merge()
        b.merge()
        torch.testing.assert_close(net(*INPUTS, **CONTEXT), hooked, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="unmerge that one first"):
            a.unmerge()
        b.unmerge()
        a.unmerge()
        torch.testing.assert_close(net(*INPUTS, **CONTEXT), hooked, rtol=0, atol=0)


def test_difflab_peft_and_kohya_files_give_the_same_output(tmp_path):
    net = unet()
    lora = trained_lora(net)
    with torch.no_grad():
        expected = net(*INPUTS, **CONTEXT)
    save_lora(tmp_path / "ours.safetensors", lora, base={"path": "runs/x"})
    save_kohya(tmp_path / "kohya.safetensors", lora)
    peft_tensors = {f"base_model.model.{k}": v for k, v in lora.lora_state_dict().items()}
    save_file(peft_tensors, str(tmp_path / "peft.safetensors"), metadata={"lora_alpha": "4"})
    lora.remove()
    for name, layout in (("ours", "difflab"), ("kohya", "kohya"), ("peft", "peft")):
        file = read_lora(tmp_path / f"{name}.safetensors", net)
        assert file.layout == layout and file.layers == lora.layer_names
        loaded = load_lora(tmp_path / f"{name}.safetensors", net)
        with torch.no_grad():
            torch.testing.assert_close(net(*INPUTS, **CONTEXT), expected, rtol=0, atol=1e-6)
        loaded.remove()
    # kohya without alpha means alpha = rank: scale 1 instead of alpha / r = 2
    tensors = {k: v for k, v in read_lora_raw(tmp_path / "kohya.safetensors").items() if not k.endswith(".alpha")}
    save_file(tensors, str(tmp_path / "no-alpha.safetensors"))
    assert set(read_lora(tmp_path / "no-alpha.safetensors", net).alphas.values()) == {2.0}


def read_lora_raw(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_bad_lora_files_are_one_clear_error(tmp_path):
    net = unet()
    lora = trained_lora(net)
    tensors = lora.lora_state_dict()
    other = {k.replace("encoder.", "downs."): v for k, v in tensors.items()}
    save_file(other, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="does not have: 'downs.*another architecture.*--force"):
        read_lora(tmp_path / "other.safetensors", net)
    partial = load_lora(tmp_path / "other.safetensors", net, force=True)  # the decoder's layers match
    assert partial.layer_names and all(not n.startswith("downs.") for n in partial.layer_names)
    partial.remove()
    first = lora.layer_names[0]
    broken = {**tensors, f"{first}.lora_B.weight": torch.zeros(tensors[f"{first}.lora_B.weight"].shape[0], 5)}
    save_file(broken, str(tmp_path / "rank.safetensors"))
    with pytest.raises(ValueError, match="rank 2 and an up weight of rank 5"):
        read_lora(tmp_path / "rank.safetensors", net)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable"):
        read_lora(tmp_path / "junk.safetensors", net)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(ValueError, match="holds no LoRA weights"):
        read_lora(tmp_path / "empty.safetensors", net)
