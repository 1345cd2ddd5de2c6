"""Built-in datasets, pixel conversions, .npz images and the load_dataset entry point."""

import gzip

import numpy as np
import pytest
import torch

from difflab.data import (
    ImageDataset,
    images_from_array,
    load_dataset,
    load_npz_images,
    parse_spec,
    random_crop,
    random_hflip,
    random_placement,
    resize_square,
    to_channels,
    to_float,
    to_uint8,
)
from difflab.data.captions import templated_captions
from difflab.data.fashion_mnist import CLASS_NAMES, DEFAULT_DIR, load_fashion_mnist, read_idx


def test_digits_splits_cover_the_set_stratified_as_uint8():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.images.shape == (1442, 1, 8, 8) and test.images.shape == (355, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert test.labels.bincount().min() >= 34 and train.class_names == [str(d) for d in range(10)]
    assert len(train) + len(test) == 1797


def test_load_dataset_resizes_and_converts_channels():
    data = load_dataset("digits", "test", resolution=16, channels=3)
    assert data.images.shape == (355, 3, 16, 16)
    assert torch.equal(data.images[:, 0], data.images[:, 2])


def _write_idx(path, array, gz):
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(payload)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_any_folder_of_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n), gz)
    test = load_dataset(str(tmp_path), "test")
    assert test.images.shape == (4, 1, 28, 28) and test.labels.shape == (4,)
    assert test.class_names[9] == "Ankle boot"
    assert len(load_fashion_mnist("train", tmp_path)) == 6


def test_fashion_mnist_captions_name_each_image_class(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((6, 28, 28)), gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 9, 3, 1, 8, 9]), gz=False)
    data = load_fashion_mnist("test", tmp_path)
    assert data.captions == ["a photo of a t-shirt/top", "a black and white photo of an ankle boot",
                             "a low-resolution photo of a dress", "a product photo of a trouser",
                             "a photo of a bag", "a black and white photo of an ankle boot"]
    assert data.subset(torch.tensor([5, 2])).captions == [data.captions[5], data.captions[2]]


def test_templated_captions_check_the_labels():
    assert templated_captions(torch.tensor([1, 0]), ["Cat", "Owl"], ["{}!"]) == ["an owl!", "a cat!"]
    with pytest.raises(ValueError, match="2 class names"):
        templated_captions(torch.tensor([2]), ["cat", "owl"])


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", tmp_path)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes((0x0801).to_bytes(4, "big") + (10).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path, ndim=1)


@pytest.mark.skipif(not DEFAULT_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package():
    test = load_dataset("fashion-mnist", "test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert test.labels.bincount().tolist() == [1000] * 10
    names = [CLASS_NAMES[label].lower() for label in test.labels.tolist()]
    assert all(caption.endswith(f" {name}") for caption, name in zip(test.captions, names))


def test_unknown_dataset_names_the_builtins():
    with pytest.raises(FileNotFoundError, match="digits, fashion-mnist"):
        load_dataset("no-such-set")


def test_parse_spec():
    assert parse_spec("digits:test") == ("digits", "test")
    assert parse_spec("fashion-mnist", "test") == ("fashion-mnist", "test")


def test_float_uint8_round_trip_and_range():
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = to_float(images)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(to_uint8(x), images)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))


def test_channel_conversion_uses_luma_and_is_reversible_for_grey():
    grey = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    assert torch.equal(to_channels(to_channels(grey, 3), 1), grey)
    red = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    red[:, 0] = 255
    assert to_channels(red, 1).item() == 76  # round(0.299 * 255)
    with pytest.raises(ValueError, match="1 or 3"):
        to_channels(grey, 2)


def test_resize_square_and_flip():
    images = torch.full((3, 1, 8, 8), 200, dtype=torch.uint8)
    assert torch.equal(resize_square(images, 4), torch.full((3, 1, 4, 4), 200, dtype=torch.uint8))
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 1, 2).contiguous()
    flipped = random_hflip(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x))


def test_random_crop_takes_a_window_of_each_image():
    x = torch.randn(6, 3, 10, 12)
    crops = random_crop(x, 4, torch.Generator().manual_seed(0))
    assert crops.shape == (6, 3, 4, 4)
    windows = [(top, left) for top in range(7) for left in range(9)]
    found = [[(top, left) for top, left in windows if torch.equal(c, o[:, top : top + 4, left : left + 4])]
             for c, o in zip(crops, x)]
    assert all(len(f) == 1 for f in found) and len({f[0] for f in found}) > 1  # independent offsets
    assert torch.equal(random_crop(x, 4, torch.Generator().manual_seed(0)), crops)
    full_height = random_crop(x, 10)  # the whole height: only the column offset is random
    assert all(any(torch.equal(c, o[..., left : left + 10]) for left in range(3)) for c, o in zip(full_height, x))
    with pytest.raises(ValueError, match="between 1 and 10"):
        random_crop(x, 11)


def test_random_placement_shrinks_each_image_onto_its_background():
    x = torch.full((5, 3, 12, 12), 255, dtype=torch.uint8)  # a white ground (emoji) with a grey square
    x[:, :, 2:10, 2:10] = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1) * 40
    placed = random_placement(x, (0.5, 0.5), torch.Generator().manual_seed(0))
    assert placed.shape == x.shape and placed.dtype == torch.uint8
    small = torch.nn.functional.interpolate(x.float(), size=(6, 6), mode="area").round().to(torch.uint8)
    for p, s in zip(placed, small):  # the 6x6 area-resized image somewhere, the ground everywhere else
        spots = [(top, left) for top in range(7) for left in range(7)
                 if torch.equal(p[:, top : top + 6, left : left + 6], s)]
        assert spots
        top, left = spots[0]
        outside = torch.ones(12, 12, dtype=torch.bool)
        outside[top : top + 6, left : left + 6] = False
        assert (p[:, outside] == 255).all()
    assert torch.equal(random_placement(x, (0.5, 0.5), torch.Generator().manual_seed(0)), placed)  # seeded
    assert torch.equal(random_placement(x, (1.0, 1.0)), x)  # scale 1: nowhere to move
    floats = to_float(x)  # [-1, 1] batches as the trainer has them: the same placement
    assert torch.equal(to_uint8(random_placement(floats, (0.5, 0.5), torch.Generator().manual_seed(0))), placed)
    with pytest.raises(ValueError, match="0 < min <= max <= 1"):
        random_placement(x, (0.8, 0.5))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW"])
def test_npz_images_in_every_layout(tmp_path, layout):
    nchw = np.random.default_rng(0).integers(0, 256, (5, 3 if layout != "NHW" else 1, 6, 6), dtype=np.uint8)
    array = {"NHWC": nchw.transpose(0, 2, 3, 1), "NCHW": nchw, "NHW": nchw[:, 0]}[layout]
    np.savez(tmp_path / "s.npz", samples=array, labels=np.arange(5))
    data = load_npz_images(tmp_path / "s.npz")
    assert torch.equal(data.images, torch.from_numpy(nchw)) and data.labels.tolist() == [0, 1, 2, 3, 4]


def test_npz_float_images_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="to_uint8"):
        images_from_array(np.zeros((2, 8, 8, 3), np.float32))


def test_dataset_validates_and_subsets():
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(images, labels=torch.zeros(3, dtype=torch.int64))
    data = ImageDataset(images, labels=torch.arange(4), captions=list("abcd"), class_names=list("wxyz"))
    part = data.subset(torch.tensor([False, True, False, True]))
    assert part.labels.tolist() == [1, 3] and part.captions == ["b", "d"]
    assert data.subset(slice(0, 2)).captions == ["a", "b"]
