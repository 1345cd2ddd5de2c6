"""The dataset classifier: accuracy on digits, checkpoint round trip, `difflab train-classifier`."""


import pytest
import torch
from PIL import Image

from difflab.checkpoint import save_checkpoint
from difflab.data import ImageDataset, load_dataset
from difflab.metrics import load_classifier, train_classifier
from difflab.metrics.classifier import matched_labels


def test_trains_on_digits_above_90_percent_and_round_trips(tmp_path):
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    classifier, accuracy = train_classifier(train, test, epochs=3)
    assert accuracy > 0.90
    classifier.save(tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf")
    assert loaded.config["test_accuracy"] == accuracy and loaded.class_names == train.class_names
    assert torch.allclose(loaded.probabilities(test.images[:20]), classifier.probabilities(test.images[:20]))
    # Any size and channel count is resized and converted to what the network expects.
    rgb_large = test.images[:20].repeat(1, 3, 1, 1).repeat_interleave(4, -1).repeat_interleave(4, -2)
    assert loaded.probabilities(rgb_large).shape == (20, 10)


def test_load_errors_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="difflab train-classifier --dataset digits"):
        load_classifier("digits")
    save_checkpoint(tmp_path / "model", {"kind": "unet"}, {"model": {"w": torch.zeros(1)}})
    with pytest.raises(ValueError, match="expected a 'classifier'"):
        load_classifier(tmp_path / "model")


def test_unlabeled_data_is_refused():
    with pytest.raises(ValueError, match="no labels"):
        train_classifier(ImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8)))


def test_labels_are_matched_to_the_classifier_by_class_name():
    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    folder = ImageDataset(images, labels=torch.tensor([0, 1, 1]), class_names=["7", "3"])
    assert matched_labels(folder, [str(d) for d in range(10)]).tolist() == [7, 3, 3]
    assert matched_labels(folder, ["cat", "dog"]) is None
    npz = ImageDataset(images, labels=torch.tensor([2, 0, 9]))
    assert matched_labels(npz, [str(d) for d in range(10)]).tolist() == [2, 0, 9]


def test_train_classifier_cli_on_an_image_folder(tmp_path, monkeypatch, capsys):
    import difflab.cli as cli

    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "COMMANDS", ["difflab.commands.train_classifier"])
    for name, shade in (("dark", 20), ("light", 230)):
        (tmp_path / "set" / name).mkdir(parents=True)
        for i in range(10):
            Image.new("L", (8, 8), shade + i).save(tmp_path / "set" / name / f"{i}.png")
    assert cli.main(["train-classifier", "--dataset", str(tmp_path / "set"), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "training on 18 images" in out and "(held out)" in out
    assert load_classifier(str(tmp_path / "set")).class_names == ["dark", "light"]
    assert cli.main(["train-classifier", "--dataset", str(tmp_path / "set"), "--width", "12"]) == 2
