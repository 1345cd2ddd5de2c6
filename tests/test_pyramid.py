"""The channel-pyramid check (difflab.models.pyramid) that the U-Net, the noisy classifier and the
autoencoders' configs share: one clear ValueError naming the config and the field."""

from dataclasses import dataclass

import pytest

from difflab.models import AutoencoderConfig, AutoencoderVQConfig, NoisyClassifier, UNetConfig
from difflab.models.pyramid import check_pyramid, downsampling_factor, level_resolutions

# The smallest valid pyramid of each config: 8x8 images, two levels of 8 and 16 channels.
TINY = dict(in_channels=1, image_size=8, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(4,), num_heads=2, norm_groups=4)
CONFIGS = [UNetConfig, AutoencoderConfig, AutoencoderVQConfig]

# (overrides, field, a few words of the fix) for the checks every pyramid config shares.
BAD = [
    ({"model_channels": 0}, "model_channels", "must be >= 1"),
    ({"num_res_blocks": 0}, "num_res_blocks", "must be >= 1"),
    ({"channel_mult": ()}, "channel_mult", "non-empty tuple of positive ints"),
    ({"channel_mult": (1, 0)}, "channel_mult", "non-empty tuple of positive ints"),
    ({"dropout": 1.0}, "dropout", "[0, 1)"),
    ({"image_size": 10, "channel_mult": (1, 1, 1)}, "image_size", "multiple of 4"),
    ({"attention_resolutions": (2,)}, "attention_resolutions", "pick attention resolutions among those"),
    ({"model_channels": 6}, "norm_groups", "pick norm_groups dividing every level width"),
    ({"num_heads": 3}, "num_heads", "choose num_heads among the divisors of"),
]


@pytest.mark.parametrize("config_class", CONFIGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("overrides, field, fix", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_every_pyramid_config_names_the_field_and_the_fix(config_class, overrides, field, fix):
    config_class(**TINY)  # valid as it stands
    with pytest.raises(ValueError) as err:
        config_class(**{**TINY, **overrides})
    message = str(err.value)
    assert message.startswith(f"{config_class.__name__}.{field}") and fix in message


def test_the_noisy_classifier_gets_the_unet_check():
    with pytest.raises(ValueError, match=r"^UNetConfig\.norm_groups=4 does not divide the 6 channels"):
        NoisyClassifier(UNetConfig(**{**TINY, "model_channels": 6, "num_classes": 3}))


def test_heads_are_checked_only_where_attention_is():
    # 8 and 24 channels, attention in the middle block only: 3 heads split 24 channels evenly
    for config_class in CONFIGS:
        config_class(**{**TINY, "channel_mult": (1, 3), "attention_resolutions": (), "num_heads": 3, "norm_groups": 8})
    with pytest.raises(ValueError, match=r"^UNetConfig\.num_head_channels=5 does not divide the 16 channels"):
        UNetConfig(**{**TINY, "num_head_channels": 5})


def test_the_check_takes_any_config_with_the_fields():
    @dataclass
    class Pyramid:
        image_size: int = 16
        model_channels: int = 4
        channel_mult: tuple = (1, 2, 2)
        num_res_blocks: int = 1
        attention_resolutions: tuple = (16,)
        norm_groups: int = 2
        num_heads: int = 2
        dropout: float = 0.0

    check_pyramid(Pyramid(), "test network")
    assert downsampling_factor((1, 2, 2)) == 4 and level_resolutions(16, (1, 2, 2)) == (16, 8, 4)
    with pytest.raises(ValueError, match=r"^Pyramid\.attention_resolutions contains \[32\], which the test network "
                                         r"never reaches; its feature maps are \[16, 8, 4\] pixels wide"):
        check_pyramid(Pyramid(attention_resolutions=(32,)), "test network")
