"""Programmatic editing pairs: exact edits, seeded draws, the edits-* sets, splits and errors."""

import hashlib

import pytest
import torch

from difflab.data import FAMILIES, ImageDataset, load_dataset, paired_edits
from difflab.data.emoji import DEFAULT_FONT, FONT_ENV
from difflab.data.paired_edits import luma

pytestmark = pytest.mark.usefixtures("one_thread")

GREY_FAMILIES = ["hflip", "vflip", "rotate", "invert", "darker", "brighter"]
RGB_FAMILIES = GREY_FAMILIES + ["grayscale", "red"]


def rgb_pair():
    """Two 2×2 RGB images with hand-picked values, including odd ones (ties when halved)."""
    return torch.tensor([[[[0, 1], [2, 3]], [[255, 254], [128, 127]], [[10, 20], [30, 41]]],
                         [[[255, 0], [0, 255]], [[0, 255], [0, 0]], [[0, 0], [255, 7]]]], dtype=torch.uint8)


def test_families_are_the_documented_ones_with_their_paraphrases():
    assert list(FAMILIES) == RGB_FAMILIES
    assert FAMILIES["hflip"].paraphrases == ("flip it horizontally", "mirror it", "flip it left to right")
    assert FAMILIES["vflip"].paraphrases == ("turn it upside down", "flip it vertically")
    assert FAMILIES["rotate"].paraphrases == ("rotate it a quarter turn", "turn it ninety degrees")
    assert FAMILIES["invert"].paraphrases == ("invert the colours", "invert the colors", "make a negative of it")
    assert FAMILIES["darker"].paraphrases == ("make it darker", "darken it")
    assert FAMILIES["brighter"].paraphrases == ("make it brighter", "brighten it")
    assert FAMILIES["grayscale"].paraphrases == ("make it grayscale", "make it black and white", "remove the colour")
    assert FAMILIES["red"].paraphrases == ("make it red", "tint it red")
    assert [name for name, family in FAMILIES.items() if family.rgb_only] == ["grayscale", "red"]


def test_geometric_edits_are_exact():
    x = torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8).view(1, 1, 2, 2)
    assert FAMILIES["hflip"].edit(x).view(2, 2).tolist() == [[2, 1], [4, 3]]
    assert FAMILIES["vflip"].edit(x).view(2, 2).tolist() == [[3, 4], [1, 2]]
    assert FAMILIES["rotate"].edit(x).view(2, 2).tolist() == [[2, 4], [1, 3]]  # counter-clockwise
    with pytest.raises(ValueError, match="square"):
        FAMILIES["rotate"].edit(torch.zeros(1, 1, 2, 3, dtype=torch.uint8))


def test_tone_edits_are_exact_on_every_uint8_value():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    values = list(range(256))
    assert FAMILIES["invert"].edit(x).flatten().tolist() == [255 - v for v in values]
    assert FAMILIES["darker"].edit(x).flatten().tolist() == [round(v * 0.5) for v in values]
    assert FAMILIES["brighter"].edit(x).flatten().tolist() == [255 - round((255 - v) * 0.5) for v in values]
    for name in RGB_FAMILIES:
        assert FAMILIES[name].edit(x.expand(1, 3, 16, 16)).dtype == torch.uint8


def test_colour_edits_are_exact():
    x = rgb_pair()
    r, g, b = x.to(torch.int64).unbind(1)
    expected_luma = [[round((299 * ri + 587 * gi + 114 * bi) / 1000) for ri, gi, bi in zip(rr, gg, bb)]
                     for rr, gg, bb in zip(r.flatten(1).tolist(), g.flatten(1).tolist(), b.flatten(1).tolist())]
    y = torch.tensor(expected_luma, dtype=torch.uint8).view(2, 1, 2, 2)
    assert torch.equal(luma(x), y)
    assert torch.equal(FAMILIES["grayscale"].edit(x), y.expand(2, 3, 2, 2))
    red = FAMILIES["red"].edit(x)
    dim = torch.tensor([[round(0.3 * v) for v in row] for row in expected_luma], dtype=torch.uint8).view(2, 1, 2, 2)
    assert torch.equal(red[:, :1], y) and torch.equal(red[:, 1:2], dim) and torch.equal(red[:, 2:], dim)
    assert luma(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).item() == 255


def test_the_same_seed_gives_the_same_dataset_and_another_seed_another():
    base = ImageDataset(images=torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8), name="random")
    a, b, c = paired_edits(base, seed=3), paired_edits(base, seed=3), paired_edits(base, seed=4)
    assert a.captions == b.captions and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.captions != c.captions
    assert a.name == "edits-random" and a.class_names == RGB_FAMILIES and torch.equal(a.sources, base.images)


def test_a_families_subset_is_respected_and_unknown_names_are_refused():
    base = ImageDataset(images=torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8))
    data = paired_edits(base, families=["invert", "hflip"])
    assert data.class_names == ["hflip", "invert"] and set(data.labels.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="unknown edit family 'blur'.*hflip, vflip"):
        paired_edits(base, families=["hflip", "blur"])
    with pytest.raises(ValueError, match="applies to 1-channel images"):
        paired_edits(base, families=["grayscale", "red"])


@pytest.fixture(scope="module")
def digits_edits():
    return load_dataset("edits-digits", "train")


def check_aligned(data, families):
    """Targets are each source edited by its caption's family; labels name that family."""
    assert data.sources.shape == data.images.shape and data.sources.dtype == torch.uint8
    assert len(data.captions) == len(data) and data.labels.dtype == torch.int64
    assert data.class_names == families and set(data.labels.tolist()) == set(range(len(families)))
    for i, (label, caption) in enumerate(zip(data.labels.tolist(), data.captions)):
        family = FAMILIES[data.class_names[label]]
        assert caption in family.paraphrases
        assert torch.equal(data.images[i:i + 1], family.edit(data.sources[i:i + 1]))


def test_edits_digits_are_aligned_and_use_every_grey_family(digits_edits):
    base = load_dataset("digits", "train")
    assert torch.equal(digits_edits.sources, base.images) and digits_edits.name == "edits-digits:train"
    check_aligned(digits_edits, GREY_FAMILIES)
    assert set(digits_edits.captions) == {p for f in GREY_FAMILIES for p in FAMILIES[f].paraphrases}
    assert digits_edits.labels.bincount().min() > len(digits_edits) / len(GREY_FAMILIES) / 2  # roughly uniform


def test_edits_digits_follow_resolution_and_channels_and_are_deterministic(digits_edits):
    assert torch.equal(load_dataset("edits-digits", "train").images, digits_edits.images)
    data = load_dataset("edits-digits", "test", resolution=16, channels=3)
    assert data.images.shape == data.sources.shape == (355, 3, 16, 16)
    assert torch.equal(data.sources, load_dataset("digits", "test", resolution=16, channels=3).images)
    check_aligned(data, RGB_FAMILIES)


def test_the_test_split_starts_from_held_out_images(digits_edits):
    test = load_dataset("edits-digits", "test")
    train_hashes = {hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in digits_edits.sources}
    assert not any(hashlib.sha1(image.numpy().tobytes()).hexdigest() in train_hashes for image in test.sources)
    assert test.name == "edits-digits:test" and test.captions != digits_edits.captions[:len(test)]


def test_subset_keeps_sources_aligned(digits_edits):
    index = torch.tensor([5, 0, 17])
    part = digits_edits.subset(index)
    assert torch.equal(part.sources, digits_edits.sources[index])
    assert torch.equal(part.images, digits_edits.images[index])
    assert part.captions == [digits_edits.captions[i] for i in index.tolist()]
    assert torch.equal(digits_edits.subset(slice(2, 4)).sources, digits_edits.sources[2:4])
    mask = digits_edits.labels == 0
    assert torch.equal(digits_edits.subset(mask).sources, digits_edits.sources[mask])
    check_aligned(digits_edits.subset(slice(0, 300)), GREY_FAMILIES)


def test_unknown_instruction_dataset_names_the_valid_ones():
    message = "unknown instruction dataset 'edits-xyz'; choose one of: edits-digits, edits-emoji, edits-fashion-mnist"
    with pytest.raises(ValueError) as info:
        load_dataset("edits-xyz")
    assert str(info.value) == message


def test_image_dataset_rejects_mismatched_sources():
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="sources must be a uint8 tensor shaped like the images"):
        ImageDataset(images=images, sources=torch.zeros(3, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="sources must be a uint8"):
        ImageDataset(images=images, sources=torch.zeros(4, 1, 8, 8))
    assert ImageDataset(images=images).sources is None


@pytest.mark.skipif(not DEFAULT_FONT.is_file(),
                    reason="Noto Color Emoji missing: apt-get install fonts-noto-color-emoji")
def test_edits_emoji_use_the_colour_families(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path))
    monkeypatch.delenv(FONT_ENV, raising=False)
    data = load_dataset("edits-emoji", "test", resolution=16)
    assert data.images.shape[1:] == (3, 16, 16) and data.name == "edits-emoji:test"
    check_aligned(data, RGB_FAMILIES)
    grey = data.subset(data.labels == RGB_FAMILIES.index("grayscale"))
    assert torch.equal(grey.images[:, 0], grey.images[:, 2])
    assert bool((grey.sources[:, 0] != grey.sources[:, 2]).any())  # the sources were in colour
