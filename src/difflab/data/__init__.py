"""Datasets: built-in sets and image folders, decoded once into uint8 tensors.

:func:`load_dataset` resolves a built-in name (``digits``, ``fashion-mnist``, ``emoji``), an
editing set made from one (``edits-digits``, ...; :func:`paired_edits`), a folder of IDX files
or an image folder; :func:`to_float` / :func:`to_uint8` convert between
the stored pixels and the [-1, 1] range networks see.
"""

from difflab.data.arrays import images_from_array, load_npz_images
from difflab.data.cache import cache_dir
from difflab.data.captions import templated_captions
from difflab.data.convert import (
    random_crop,
    random_hflip,
    random_placement,
    resize_square,
    to_channels,
    to_float,
    to_uint8,
)
from difflab.data.dataset import ImageDataset
from difflab.data.emoji import load_emoji
from difflab.data.image_folder import load_image_folder
from difflab.data.load import BUILTIN, load_dataset, parse_spec
from difflab.data.paired_edits import FAMILIES, paired_edits

__all__ = [
    "BUILTIN", "FAMILIES", "ImageDataset", "cache_dir", "images_from_array", "load_dataset", "load_emoji",
    "load_image_folder", "load_npz_images", "paired_edits", "parse_spec", "random_crop", "random_hflip",
    "random_placement", "resize_square", "templated_captions", "to_channels", "to_float", "to_uint8",
]
