"""SR evaluation: the LR protocol, classical baselines and metrics (used by the model card's
benchmark and by ``arbscale eval``). Images here are uint8 numpy [H,W,3]."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from PIL import Image, ImageFilter

# Unsharp mask for the Lanczos baseline, chosen by a sweep on training photos (see benchmarks/).
UNSHARP = dict(radius=1.5, percent=120, threshold=0)


def hr_crop_for_scale(hr: np.ndarray, scale: float, max_side: int | None = None) -> np.ndarray:
    """Centre-crop HR so both sides divide exactly by ``scale`` (non-integer scales too: 6.5 needs
    sides that are multiples of 13), optionally no larger than max_side."""
    frac = Fraction(scale).limit_denominator(100)
    step = frac.numerator  # HR side must be a multiple of p for p/q scales
    h, w = hr.shape[:2]
    ch = (min(h, max_side or h) // step) * step
    cw = (min(w, max_side or w) // step) * step
    if ch == 0 or cw == 0:
        raise ValueError(f"image {w}x{h} is too small for scale {scale}")
    y, x = (h - ch) // 2, (w - cw) // 2
    return hr[y:y + ch, x:x + cw]


def make_lr(hr: np.ndarray, scale: float) -> np.ndarray:
    """Antialiased bicubic downscale (PIL, MATLAB-like), the usual SR benchmark protocol."""
    h, w = hr.shape[:2]
    size = (round(w / scale), round(h / scale))
    return np.asarray(Image.fromarray(hr).resize(size, Image.BICUBIC, reducing_gap=None))


def baseline(lr: np.ndarray, width: int, height: int, method: str) -> np.ndarray:
    im = Image.fromarray(lr)
    if method == "bicubic":
        return np.asarray(im.resize((width, height), Image.BICUBIC))
    if method == "lanczos":
        return np.asarray(im.resize((width, height), Image.LANCZOS))
    if method == "lanczos+unsharp":
        return np.asarray(im.resize((width, height), Image.LANCZOS).filter(ImageFilter.UnsharpMask(**UNSHARP)))
    raise ValueError(f"unknown baseline {method!r}")


BASELINES = ("bicubic", "lanczos", "lanczos+unsharp")


def psnr(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """PSNR in dB of two uint8 images (RGB), ignoring ``shave`` pixels at each border."""
    if shave:
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma in 16..235 as float (the SR literature's Y channel)."""
    x = img.astype(np.float64)
    return 16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0


def y_pair(a: np.ndarray, b: np.ndarray, shave: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The Y channels of two uint8 images, ``shave`` pixels cut from each border."""
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    if shave:
        ya, yb = ya[shave:-shave, shave:-shave], yb[shave:-shave, shave:-shave]
    return ya, yb


def psnr_y(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    ya, yb = y_pair(a, b, shave)
    mse = np.mean((ya - yb) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """SSIM (scikit-image, Gaussian window as in Wang et al.) on the Y channel."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        raise RuntimeError("SSIM needs scikit-image: pip install 'arbscale[eval]'") from None
    ya, yb = y_pair(a, b, shave)
    return float(structural_similarity(ya, yb, data_range=255.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def _torchmetrics_image():
    try:
        import torchmetrics.functional.image as tm
    except ImportError:
        raise RuntimeError("perceptual metrics need torchmetrics: pip install 'arbscale[eval]'") from None
    return tm


# MS-SSIM's five scales (Wang et al. 2003); torchmetrics wants side // (scales - 1)**2 > 10 for its
# 11-px window (176 px for all five), so smaller images use the first scales that fit, their
# weights renormalised.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def perceptual_metrics(out: np.ndarray, reference: np.ndarray, shave: int = 0) -> dict[str, float]:
    """Full-reference metrics that need no downloaded network, on the Y channel (0..255), from
    torchmetrics: ``ms_ssim`` (multi-scale SSIM, 0..1, higher is better) and ``vif`` (pixel-domain
    visual information fidelity, Sheikh & Bovik 2006: 1 for the reference itself, below 1 as
    information is lost, above 1 for contrast-enhanced images; higher is better)."""
    import torch

    tm = _torchmetrics_image()
    ya, yb = y_pair(out, reference, shave)
    a = torch.from_numpy(np.ascontiguousarray(ya))[None, None]
    b = torch.from_numpy(np.ascontiguousarray(yb))[None, None]
    side = min(ya.shape)
    n_scales = max([n for n in range(1, len(MS_SSIM_BETAS) + 1) if side // max(1, n - 1) ** 2 > 10 and side >= 2 ** n], default=1)
    betas = MS_SSIM_BETAS[:n_scales]
    betas = tuple(x / sum(betas) for x in betas)
    kernel = 11 if side >= 11 else side - (1 - side % 2)
    ms_ssim = tm.multiscale_structural_similarity_index_measure(a, b, data_range=255.0, kernel_size=kernel,
                                                                betas=betas)
    vif = tm.visual_information_fidelity(a, b) if side >= 41 else torch.tensor(float("nan"))
    return {"ms_ssim": float(ms_ssim), "vif": float(vif)}


def high_frequency_ratio(out: np.ndarray, reference: np.ndarray) -> float:
    """Energy of the Laplacian of ``out`` over that of ``reference`` (Y channel): about 1 when the
    output is as detailed as the ground truth, well below 1 when it is over-smoothed."""
    def lap_energy(img: np.ndarray) -> float:
        y = rgb_to_y(img)
        lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
        return float(np.mean(lap ** 2))
    return lap_energy(out) / max(lap_energy(reference), 1e-12)
