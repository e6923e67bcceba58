import math

import numpy as np
import pytest

from arbscale_core.evaluate import baseline, hr_crop_for_scale, make_lr, psnr, psnr_y, ssim


def test_psnr_known_noise_level():
    rng = np.random.default_rng(0)
    a = np.full((200, 200, 3), 128, np.uint8)
    b = (a + rng.choice([-5, 5], size=a.shape)).astype(np.uint8)  # every pixel off by exactly 5
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 25), abs=1e-9)
    assert psnr(a, a) == float("inf")
    assert psnr_y(a, b) < 60


def test_ssim_bounds():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 255 - a) < 0.1


@pytest.mark.parametrize("scale,hr_side", [(4, 100), (6.5, 91), (3, 99), (2.5, 100)])
def test_crop_divides_by_scale(scale, hr_side):
    hr = np.zeros((101, 103, 3), np.uint8)
    crop = hr_crop_for_scale(hr, scale)
    for side in crop.shape[:2]:
        assert (side / scale).is_integer()
    lr = make_lr(crop, scale)
    assert lr.shape[:2] == (round(crop.shape[0] / scale), round(crop.shape[1] / scale))


def test_baselines_shapes_and_sharpening():
    rng = np.random.default_rng(2)
    lr = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    outs = {m: baseline(lr, 37, 29, m) for m in ("bicubic", "lanczos", "lanczos+unsharp")}
    assert all(o.shape == (29, 37, 3) for o in outs.values())
    grad = lambda x: np.abs(np.diff(x.astype(float), axis=1)).mean()  # noqa: E731
    assert grad(outs["lanczos+unsharp"]) > grad(outs["lanczos"])
    with pytest.raises(ValueError):
        baseline(lr, 5, 5, "nearest-ish")


def test_high_frequency_ratio_exposes_blur():
    from PIL import Image, ImageFilter

    from arbscale_core.evaluate import high_frequency_ratio

    rng = np.random.default_rng(3)
    sharp = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(2)))
    assert high_frequency_ratio(sharp, sharp) == pytest.approx(1.0)
    assert high_frequency_ratio(blurred, sharp) < 0.2
