import math

import numpy as np
import pytest
from PIL import Image

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


def _vifp_reference(ref: np.ndarray, dist: np.ndarray) -> float:
    """A line-by-line numpy port of the authors' reference MATLAB code, vifp_mscale.m (Sheikh &
    Bovik, LIVE), with scipy's 'valid' correlation for filter2(..., 'valid')."""
    from scipy.signal import correlate2d

    def gaussian(n: int, sigma: float) -> np.ndarray:  # fspecial('gaussian', n, sigma)
        ax = np.arange(n) - (n - 1) / 2
        g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma ** 2))
        return g / g.sum()

    sigma_nsq, num, den = 2.0, 0.0, 0.0
    ref, dist = ref.astype(np.float64), dist.astype(np.float64)
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        win = gaussian(n, n / 5)
        filt = lambda x: correlate2d(x, win, mode="valid")  # noqa: E731
        if scale > 1:
            ref, dist = filt(ref)[::2, ::2], filt(dist)[::2, ::2]
        mu1, mu2 = filt(ref), filt(dist)
        sigma1_sq = filt(ref * ref) - mu1 * mu1
        sigma2_sq = filt(dist * dist) - mu2 * mu2
        sigma12 = filt(ref * dist) - mu1 * mu2
        sigma1_sq, sigma2_sq = np.maximum(sigma1_sq, 0), np.maximum(sigma2_sq, 0)
        g = sigma12 / (sigma1_sq + 1e-10)
        sv_sq = sigma2_sq - g * sigma12
        low1 = sigma1_sq < 1e-10
        g[low1], sv_sq[low1], sigma1_sq[low1] = 0, sigma2_sq[low1], 0
        low2 = sigma2_sq < 1e-10
        g[low2], sv_sq[low2] = 0, 0
        neg = g < 0
        sv_sq[neg], g[neg] = sigma2_sq[neg], 0
        sv_sq[sv_sq <= 1e-10] = 1e-10
        num += np.log10(1 + g ** 2 * sigma1_sq / (sv_sq + sigma_nsq)).sum()
        den += np.log10(1 + sigma1_sq / sigma_nsq).sum()
    return float(num / den)


def test_vif_matches_the_reference_implementation():
    """The VIF we report (torchmetrics) against the authors' algorithm, on a photo-like image and
    three distortions: blur and noise lose information (VIF < 1), a contrast stretch gains it."""
    from PIL import ImageFilter

    from arbscale_core.evaluate import perceptual_metrics, rgb_to_y

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:96, 0:96]
    base = 128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + rng.normal(0, 12, (96, 96))
    ref = np.clip(np.stack([base, base * 0.9 + 10, base * 0.8 + 20], -1), 0, 255).astype(np.uint8)
    blurred = np.asarray(Image.fromarray(ref).filter(ImageFilter.GaussianBlur(1.5)))
    noisy = np.clip(ref + rng.normal(0, 20, ref.shape), 0, 255).astype(np.uint8)
    stretched = np.clip((ref.astype(float) - 128) * 1.3 + 128, 0, 255).astype(np.uint8)
    got = {name: perceptual_metrics(img, ref)["vif"] for name, img in
           (("same", ref), ("blur", blurred), ("noise", noisy), ("stretch", stretched))}
    for name, img in (("same", ref), ("blur", blurred), ("noise", noisy), ("stretch", stretched)):
        assert got[name] == pytest.approx(_vifp_reference(rgb_to_y(ref), rgb_to_y(img)), rel=1e-4, abs=1e-6)
    assert got["same"] == pytest.approx(1.0, abs=1e-6)
    assert got["blur"] < 0.5 and got["noise"] < 0.7 and got["stretch"] > 1.0


def test_ms_ssim_orders_distortions_and_fits_small_images():
    from arbscale_core.evaluate import perceptual_metrics

    rng = np.random.default_rng(4)
    ref = rng.integers(0, 256, (200, 170, 3), dtype=np.uint8)
    slight = np.clip(ref + rng.normal(0, 3, ref.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(ref + rng.normal(0, 30, ref.shape), 0, 255).astype(np.uint8)
    assert perceptual_metrics(ref, ref)["ms_ssim"] == pytest.approx(1.0)
    assert perceptual_metrics(slight, ref)["ms_ssim"] > perceptual_metrics(heavy, ref)["ms_ssim"]
    small = perceptual_metrics(heavy[:30, :30], ref[:30, :30])  # fewer scales; VIF needs >= 41 px
    assert 0 < small["ms_ssim"] < 1 and math.isnan(small["vif"])
