"""Emoji drawn from Noto Color Emoji: count, captions, pixels, splits, the cache and errors."""

import unicodedata

import pytest
import torch

from difflab.data import cache_dir, emoji, load_dataset, parse_spec
from difflab.data.emoji import DEFAULT_FONT, FONT_ENV, load_emoji

needs_font = pytest.mark.skipif(not DEFAULT_FONT.is_file(),
                                reason="Noto Color Emoji missing: apt-get install fonts-noto-color-emoji")

COMPONENTS = ["zero width joiner", "variation selector-16", "combining enclosing keycap",
              "emoji modifier fitzpatrick type-4", "regional indicator symbol letter a",
              "tag latin small letter a", "emoji component red hair", "digit zero", "number sign"]


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIFFLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.delenv(FONT_ENV, raising=False)
        yield


@pytest.fixture(scope="module")
def everything():
    return load_dataset("emoji", "all", resolution=64)  # rendered once (a few seconds), then cached


@needs_font
def test_about_1350_rgb_images_of_the_requested_size(everything):
    assert 1300 <= len(everything) <= 1400
    assert everything.images.dtype == torch.uint8 and everything.images.shape[1:] == (3, 64, 64)
    assert everything.labels is None and everything.name == "emoji:all"


@needs_font
def test_captions_are_the_lower_case_unicode_names_of_single_code_points(everything):
    captions = everything.captions
    assert len(set(captions)) == len(captions) == len(everything)
    assert {"grinning face", "red apple", "copyright sign"} <= set(captions)
    assert all(unicodedata.name(unicodedata.lookup(c)).lower() == c for c in captions)
    assert not set(COMPONENTS) & set(captions)


@needs_font
def test_emoji_sit_on_a_white_background(everything):
    images = everything.images
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert bool((corners == 255).all())
    assert bool((images < 250).flatten(1).any(1).all())  # and every image shows something


@needs_font
def test_splits_are_disjoint_deterministic_and_keyed_by_code_point(everything):
    train, test = load_dataset("emoji", "train", resolution=64), load_dataset("emoji", "test", resolution=64)
    assert len(train) + len(test) == len(everything) and 100 < len(test) < 170
    assert not set(train.captions) & set(test.captions)
    assert all(ord(unicodedata.lookup(c)) % 10 == 0 for c in test.captions)
    again = load_emoji("test", 64)
    assert again.captions == test.captions and torch.equal(again.images, test.images)
    assert (train.name, test.name) == ("emoji:train", "emoji:test")
    assert parse_spec("emoji:test") == ("emoji", "test")


@needs_font
def test_rendered_once_then_read_from_the_cache(everything, monkeypatch):
    assert len(list((cache_dir() / "emoji").glob("emoji-64px-*.safetensors"))) == 1
    monkeypatch.setattr(emoji, "render_emoji", lambda *args: pytest.fail("rendered again"))
    cached = load_emoji("all", 64)
    assert torch.equal(cached.images, everything.images) and cached.captions == everything.captions


@needs_font
def test_any_resolution_is_drawn_directly(monkeypatch):
    monkeypatch.setattr(emoji, "emoji_code_points", lambda font: [0x1F600, 0x1F34E])
    data = load_dataset("emoji", "all", resolution=24, channels=1, use_cache=False)
    assert data.images.shape == (2, 1, 24, 24) and data.captions == ["grinning face", "red apple"]


def test_missing_font_says_how_to_install_it(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-color-emoji"):
        load_emoji("train", font=tmp_path / "missing.ttf")
    monkeypatch.setenv(FONT_ENV, str(tmp_path / "elsewhere.ttf"))
    with pytest.raises(FileNotFoundError, match=rf"elsewhere.ttf \(from \${FONT_ENV}\)"):
        load_dataset("emoji", "test")


def test_a_file_that_is_not_a_font_or_a_bad_split_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.ttf"
    junk.write_bytes(b"not a font")
    with pytest.raises(ValueError, match="cannot open .*junk.ttf as a font"):
        load_emoji("all", font=junk, use_cache=False)
    with pytest.raises(ValueError, match="'train', 'test', 'all'"):
        load_emoji("validation", font=junk)
