"""Bad files in an image folder or an .npz: each unusable file is skipped with its reason and
counted, every usable one loads (converted where it must be), and a folder with nothing usable
or a file that is no .npz is one clear error. The corpus is written by bad_images.py."""

import logging
import os
import time
from collections import Counter

import numpy as np
import pytest
import torch
from bad_images import UNREADABLE, encode, write_corpus, write_only_bad
from PIL import Image, ImageFile

from difflab.data import image_folder, load_image_folder, load_npz_images
from difflab.data.image_folder import CONVERSIONS, REASONS, folder_key, walk

LOGGER = "difflab.data.image_folder"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def unreadable(monkeypatch):
    """Make files named like UNREADABLE raise PermissionError on open, as chmod 000 would for a
    user other than root (the tests run as root, who reads anything). Clear the returned set
    to make them readable again."""
    real_open, active = Image.open, {True}

    def open_(path, *args, **kwargs):
        if active and str(path).endswith(UNREADABLE):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_)
    return active


def summary_line(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_loader_keeps_every_usable_file_and_skips_each_bad_one_with_its_reason(tmp_path, unreadable, caplog):
    start = time.monotonic()
    corpus = write_corpus(tmp_path / "corpus")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        data = load_image_folder(corpus.root, use_cache=False)

    # Exactly the usable files, in path order, at the most common size (8: the 1×1 sorts first).
    assert data.images.shape == (len(corpus.loads), 3, 8, 8)
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == corpus.labels
    for (path, (rgb, _)), image in zip(sorted(corpus.loads.items()), data.images):
        centre = image[:, 4, 4].tolist()
        assert all(abs(a - b) <= 4 for a, b in zip(centre, rgb)), (path, centre, rgb)
    order = sorted(corpus.loads)
    assert data.captions == [corpus.captions.get(path, "") for path in order]

    # Each bad file: one line with its path and reason.
    messages = [r.getMessage() for r in caplog.records]
    for path, reason in corpus.skips.items():
        assert any(m.startswith(f"skipping {corpus.root / path}: {reason}") for m in messages), (path, reason)
    # One summary: the count, each reason's count, the first names.
    summary = summary_line(caplog)
    total = len(corpus.loads) + len(corpus.skips)
    assert summary.startswith(f"skipped {len(corpus.skips)} of {total} image files in {corpus.root}: ")
    for reason, n in Counter(corpus.skips.values()).items():
        assert f"{n} {REASONS[reason] if n > 1 else reason}" in summary
    assert "cat/empty.png (zero bytes)" in summary and "more" in summary
    # Conversions are counted too (at INFO).
    converted = [m for m in messages if m.startswith("converted ")]
    for kind in {conversion for _, conversion in corpus.loads.values() if conversion}:
        assert f"1 {CONVERSIONS[kind]}" in converted[0]
    assert time.monotonic() - start < 20


def test_nothing_is_allocated_for_a_decompression_bomb(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus")
    loads = []
    real_load = ImageFile.ImageFile.load

    def load(image):
        loads.append(image.size)
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    load_image_folder(corpus.root, use_cache=False)
    assert loads and max(w * h for w, h in loads) <= 32 * 32  # the corpus holds 32×32 at most, bar the bombs


def test_a_folder_of_only_bad_files_is_one_clear_error(tmp_path):
    reasons = write_only_bad(tmp_path / "hopeless")
    with pytest.raises(ValueError) as caught:
        load_image_folder(tmp_path / "hopeless")
    message = str(caught.value)
    assert str(tmp_path / "hopeless") in message and f"none of its {len(reasons)} image files" in message
    for name, reason in reasons.items():
        assert f"{name} ({reason})" in message


def test_the_cache_is_read_back_with_its_summary_and_decodes_again_when_a_skipped_file_is_fixed(
        tmp_path, monkeypatch, caplog):
    corpus = write_corpus(tmp_path / "corpus")
    (corpus.root / UNREADABLE).unlink()  # readable by root: it would load here and be skipped elsewhere
    first = load_image_folder(corpus.root)
    calls, decode = [], image_folder._decode
    monkeypatch.setattr(image_folder, "_decode", lambda *args: calls.append(args) or decode(*args))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = load_image_folder(corpus.root)
    assert calls == [] and torch.equal(first.images, again.images)
    assert summary_line(caplog).startswith(f"skipped {len(corpus.skips) - 1} of ")

    # Fix a truncated file: decoded again, one image more.
    (corpus.root / "cat/truncated.png").write_bytes(encode(Image.new("RGB", (8, 8), (5, 5, 5)), "PNG"))
    assert len(load_image_folder(corpus.root)) == len(first) + 1 and len(calls) == 1
    # Fix the symlink loop: loop_b becomes a real image, and loop_a reaches it.
    (corpus.root / "cat/loop_b.png").unlink()
    (corpus.root / "cat/loop_b.png").write_bytes(encode(Image.new("RGB", (8, 8), (6, 6, 6)), "PNG"))
    assert len(load_image_folder(corpus.root)) == len(first) + 3 and len(calls) == 2


def test_the_key_changes_when_a_link_target_appears_or_a_mode_changes(tmp_path):
    root, outside = tmp_path / "set", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "a.png").write_bytes(encode(Image.new("RGB", (4, 4)), "PNG"))
    os.symlink(outside / "b.png", root / "b.png")
    dangling = folder_key(root, None, None)
    (outside / "b.png").write_bytes(encode(Image.new("RGB", (4, 4)), "PNG"))  # nothing in root changed
    fixed = folder_key(root, None, None)
    assert fixed != dangling
    os.chmod(root / "a.png", 0)
    assert folder_key(root, None, None) != fixed


def test_a_set_with_an_unreadable_file_is_not_cached(tmp_path, unreadable):
    corpus = write_corpus(tmp_path / "corpus")
    first = load_image_folder(corpus.root)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
    unreadable.clear()  # readable again (as root): the next load decodes and includes it
    assert len(load_image_folder(corpus.root)) == len(first) + 1


def test_a_corrupt_cache_entry_is_decoded_again(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "corpus")
    first = load_image_folder(corpus.root)
    (entry,) = (tmp_path / "cache").rglob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="difflab.data.cache"):
        again = load_image_folder(corpus.root)
    assert torch.equal(first.images, again.images) and "unreadable cache entry" in caplog.text


def test_symlinked_folders_are_followed_once_and_any_tree_of_links_ends(tmp_path):
    root, elsewhere = tmp_path / "set", tmp_path / "elsewhere"
    pixels = encode(Image.new("L", (4, 4), 7), "PNG")
    for name in ("cat", "dog"):
        (elsewhere / name).mkdir(parents=True)
        (elsewhere / name / "x.png").write_bytes(pixels)
    root.mkdir()
    os.symlink(elsewhere / "cat", root / "cat")  # followed: a class kept elsewhere
    (root / "dog").mkdir()
    (root / "dog" / "y.png").write_bytes(pixels)
    os.symlink(root / "dog", root / "dogs")  # the same folder twice: read once
    # 2**18 paths through links, 19 real folders: each real folder is read once.
    chain = [tmp_path / "chain" / f"d{i}" for i in range(19)]
    for folder in chain:
        folder.mkdir(parents=True)
    for upper, lower in zip(chain, chain[1:]):
        os.symlink(lower, upper / "l1")
        os.symlink(lower, upper / "l2")
    (chain[-1] / "deep.png").write_bytes(pixels)
    os.symlink(chain[0], root / "dog" / "chain")
    start = time.monotonic()
    files, skipped = walk(root)
    assert time.monotonic() - start < 5
    assert [p.relative_to(root).as_posix() for p in files] == ["cat/x.png", "dog/" + "/".join(["chain"] + ["l1"] * 18)
                                                               + "/deep.png", "dog/y.png"]
    assert {s.reason for s in skipped} == {"repeated folder"} and len(skipped) == 19
    data = load_image_folder(root, use_cache=False)
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 1, 1]


# ---- .npz files --------------------------------------------------------------------------------

class _Payload:
    """Unpickling this would write a file: proof that the loader never unpickles."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_file_that_is_no_npz_is_one_error_naming_it(tmp_path):
    samples = np.zeros((2, 4, 4, 3), np.uint8)
    text, lone, empty, cut = (tmp_path / n for n in ("text.npz", "lone.npz", "empty.npz", "cut.npz"))
    text.write_text("samples: not an archive\n")
    with open(lone, "wb") as f:
        np.save(f, samples)
    empty.write_bytes(b"")
    np.savez(cut, samples=samples)
    cut.write_bytes(cut.read_bytes()[:-40])
    for path, says in ((text, "starting b'sample"), (lone, "single .npy"), (empty, "empty file"), (cut, "truncated")):
        with pytest.raises(ValueError, match="not an .npz|not a readable .npz") as caught:
            load_npz_images(path)
        assert str(path) in str(caught.value) and says in str(caught.value)
        assert "allow_pickle" not in str(caught.value) and "pickle.load" not in str(caught.value)


def test_an_object_array_in_an_npz_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    _Payload.marker = marker
    path = tmp_path / "objects.npz"
    np.savez(path, samples=np.array([_Payload()], dtype=object), allow_pickle=True)
    assert b"unpickled" in path.read_bytes()  # the payload is really in the file
    with pytest.raises(ValueError, match=r"objects.npz\['samples'\] is an object array") as caught:
        load_npz_images(path)
    assert "allow_pickle" not in str(caught.value) and caught.value.__cause__ is None
    assert not marker.exists()
