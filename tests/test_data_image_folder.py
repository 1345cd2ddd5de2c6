"""Image folders: classes, captions, modes, resizing, corrupt files and the decode cache."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import image_folder, load_dataset, load_image_folder
from difflab.data.image_folder import resize_center_crop


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))


def _save(path, mode, color, size=(8, 8), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def test_classes_from_first_subfolder_and_recursive_search(tmp_path):
    root = tmp_path / "set"
    _save(root / "cat" / "a.png", "RGB", (255, 0, 0))
    _save(root / "cat" / "deep" / "b.jpg", "RGB", (250, 0, 0))
    _save(root / "dog" / "c.webp", "RGB", (0, 0, 255))
    (root / "dog" / "notes.md").write_text("not an image")
    data = load_image_folder(root, resolution=8)
    assert data.images.shape == (3, 3, 8, 8)
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 0, 1]
    assert data.captions is None


def test_top_level_images_mean_no_labels(tmp_path):
    _save(tmp_path / "a.png", "L", 10)
    _save(tmp_path / "sub" / "b.png", "L", 20)
    assert load_image_folder(tmp_path, use_cache=False).labels is None


def test_mixed_modes_all_grey_gives_one_channel_and_rgba_is_composited_on_white(tmp_path):
    _save(tmp_path / "grey.png", "L", 100)
    _save(tmp_path / "grey_alpha.png", "LA", (0, 0))           # fully transparent black
    _save(tmp_path / "sixteen.png", "I;16", 257 * 50)
    data = load_image_folder(tmp_path, use_cache=False)
    assert data.channels == 1
    assert data.images[:, 0, 0, 0].tolist() == [100, 255, 50]

    _save(tmp_path / "rgba.png", "RGBA", (255, 0, 0, 128))      # half-transparent red
    _save(tmp_path / "palette.png", "P", 3)
    rgb = load_image_folder(tmp_path, use_cache=False)
    assert rgb.channels == 3
    red_on_white = rgb.images[[p.name for p in sorted(tmp_path.glob("*.png"))].index("rgba.png")]
    assert red_on_white[:, 0, 0].tolist() == [255, 127, 127]


def test_resize_shorter_side_then_center_crop():
    image = Image.new("RGB", (40, 20))
    image.paste((255, 255, 255), (15, 0, 25, 20))               # white band in the middle
    out = resize_center_crop(image, 10)
    assert out.size == (10, 10)
    pixels = np.asarray(out)[..., 0]
    assert pixels[:, 5].min() > 200 and pixels[:, 0].max() < 50


def test_captions_from_metadata_jsonl_and_txt(tmp_path):
    _save(tmp_path / "a.png", "RGB", (0, 0, 0))
    _save(tmp_path / "b.png", "RGB", (0, 0, 0))
    _save(tmp_path / "sub" / "c.png", "RGB", (0, 0, 0))
    _save(tmp_path / "d.png", "RGB", (0, 0, 0))
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.png", "text": "a black square"}) + "\n\n"
        + json.dumps({"file_name": "sub/c.png", "caption": "from the caption field"}) + "\n")
    (tmp_path / "b.txt").write_text("from a text file\n")
    data = load_image_folder(tmp_path, use_cache=False)
    assert data.captions == ["a black square", "from a text file", "", "from the caption field"]


def test_bad_metadata_line_names_file_and_line(tmp_path):
    _save(tmp_path / "a.png", "RGB", (0, 0, 0))
    (tmp_path / "metadata.jsonl").write_text('{"text": "no file name"}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:1"):
        load_image_folder(tmp_path, use_cache=False)


def test_corrupt_images_are_reported_skipped_and_counted(tmp_path, caplog):
    _save(tmp_path / "good.png", "RGB", (1, 2, 3))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    png = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    with caplog.at_level(logging.WARNING, logger="difflab.data.image_folder"):
        data = load_image_folder(tmp_path, use_cache=False)
    assert len(data) == 1
    messages = caplog.text
    assert "broken.png" in messages and "truncated.png" in messages
    assert "skipped 2 of 3 image files" in messages


def test_empty_and_all_corrupt_folders_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image in .*empty"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="none of its 1 image files"):
        load_image_folder(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")


def test_decoded_once_then_read_from_cache_until_the_folder_changes(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    _save(root / "a.png", "RGB", (9, 9, 9))
    first = load_image_folder(root, resolution=4)
    calls, decode = [], image_folder._decode
    monkeypatch.setattr(image_folder, "_decode", lambda *args: calls.append(args) or decode(*args))
    again = load_image_folder(root, resolution=4)
    assert calls == [] and torch.equal(first.images, again.images)
    _save(root / "b.png", "RGB", (7, 7, 7))
    assert len(load_image_folder(root, resolution=4)) == 2 and len(calls) == 1


def test_folder_splits_via_subfolders(tmp_path):
    _save(tmp_path / "train" / "x" / "a.png", "L", 0)
    _save(tmp_path / "test" / "x" / "b.png", "L", 0)
    _save(tmp_path / "test" / "y" / "c.png", "L", 0)
    assert len(load_dataset(tmp_path, "test", use_cache=False)) == 2
    flat = tmp_path / "flat"
    _save(flat / "a.png", "L", 0)
    assert len(load_dataset(flat, "train", use_cache=False)) == 1
    with pytest.raises(FileNotFoundError, match="no 'test' sub-folder"):
        load_dataset(flat, "test")


def test_a_cache_that_cannot_be_written_costs_only_the_cache(tmp_path, monkeypatch, caplog):
    from safetensors import SafetensorError

    _save(tmp_path / "imgs" / "a.png", "RGB", (9, 9, 9))

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("difflab.data.cache.save_file", full_disk)
    with caplog.at_level(logging.WARNING, logger="difflab.data.cache"):
        data = load_image_folder(tmp_path / "imgs", resolution=4)
    assert len(data) == 1 and "not cached" in caplog.text
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no partial file left
