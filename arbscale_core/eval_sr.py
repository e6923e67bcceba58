"""``arbscale eval``: SR metrics over a folder of HR images, for ours and classical baselines.

Each HR image is centre-cropped so its sides divide by the scale (and to at most ``max_side``),
downscaled with antialiased bicubic (PIL), and upscaled back by every method. Images are uint8
numpy [H,W,3] here.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .evaluate import (BASELINES, baseline, high_frequency_ratio, hr_crop_for_scale, make_lr, perceptual_metrics,
                       psnr, psnr_y, ssim)
from .imageops import from_uint8, to_uint8
from .model import ArbScaleModel
from .pipeline import SRGuide, decode_uint8, denoise, encode_condition, mode_sampling, sr_guide, upscale_tensor

MIN_LR_SIDE = 8
METRICS = ("psnr_rgb", "psnr_y", "ssim_y", "ms_ssim", "vif", "lr_consistency_db", "scale_consistency_db",
           "hf_ratio", "diversity")
REGRESSION = "regression"  # the method name of the LIIF-style regression baseline (--baseline)


@dataclass(frozen=True)
class SREvalOptions:
    """modes: ours in each named mode (pipeline.MODES), as method "ours <mode>"; steps / eta, when
    given, override every mode's."""
    scales: tuple[float, ...] = (2, 3, 4, 6.5, 8)
    modes: tuple[str, ...] = ("fidelity",)
    steps: int | None = None
    eta: float | None = None
    seeds: int = 1
    max_side: int = 384
    limit: int | None = None
    consistency: bool = True
    ensemble: int = 1


def ours_method(mode: str) -> str:
    return f"ours {mode}"


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((width, height), Image.BICUBIC, reducing_gap=None))


def lr_consistency(out: np.ndarray, lr: np.ndarray) -> float:
    """PSNR (dB) between the output brought back to the LR size and the LR input."""
    return psnr(_resize(out, lr.shape[1], lr.shape[0]), lr)


def diversity(samples: list[np.ndarray]) -> float:
    """Mean pairwise mean-absolute pixel distance (0..255) between samples; 0 for one sample."""
    pairs = list(itertools.combinations(samples, 2))
    if not pairs:
        return 0.0
    return float(np.mean([np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() for a, b in pairs]))


def ours_latent(model: ArbScaleModel, lr: np.ndarray, steps: int, eta: float, seed: int, consistency: bool = True,
                detail: bool = False) -> tuple[torch.Tensor, SRGuide | None]:
    """(denoised latent, guide or None) for an LR uint8 [h,w,3]: decode both with decode_uint8."""
    x = from_uint8(lr)
    cond = encode_condition(model, x)
    return denoise(model, cond, steps=steps, eta=eta, seed=seed), sr_guide(model, x, cond, consistency, detail)


def ours_ensemble(model: ArbScaleModel, lr: np.ndarray, height: int, width: int, opts: SREvalOptions,
                  steps: int, eta: float, seed: int, detail: bool = False) -> np.ndarray:
    """uint8 [height,width,3] from ``upscale_tensor`` with opts.ensemble members."""
    out = upscale_tensor(model, from_uint8(lr), height, width, steps=steps, eta=eta, seed=seed,
                         consistency=opts.consistency, ensemble=opts.ensemble, detail=detail)
    return to_uint8(out * 2 - 1)[0]


def evaluate_image(model: ArbScaleModel, hr_full: np.ndarray, scale: float, opts: SREvalOptions,
                   regression=None):
    """Rows (dicts) for one image at one scale, plus the outputs kept for the comparison grid.
    ``regression``: a ``regression.LIIFBaseline`` to measure as method REGRESSION, or None.
    Scale consistency (a second decode at twice the size) is measured for the first seed only."""
    hr = hr_crop_for_scale(hr_full, scale, opts.max_side)
    lr = make_lr(hr, scale)
    h, w = hr.shape[:2]
    shave = math.ceil(scale)
    rows, outputs = [], {"LR": lr, "GT": hr}

    def metrics(out: np.ndarray, out2x: np.ndarray | None) -> dict:
        return {"psnr_rgb": psnr(out, hr, shave), "psnr_y": psnr_y(out, hr, shave), "ssim_y": ssim(out, hr, shave),
                **perceptual_metrics(out, hr, shave), "lr_consistency_db": lr_consistency(out, lr),
                "scale_consistency_db": psnr(_resize(out2x, w, h), out) if out2x is not None else float("nan"),
                "hf_ratio": high_frequency_ratio(out, hr)}

    for method in BASELINES:
        out = baseline(lr, w, h, method)
        rows.append({"method": method, "seed": "", **metrics(out, baseline(lr, 2 * w, 2 * h, method)),
                     "diversity": float("nan")})
        outputs[method] = out
    if regression is not None:
        x = from_uint8(lr) * 2 - 1
        out, out2x = (to_uint8(regression.upscale(x, oh, ow))[0] for oh, ow in ((h, w), (2 * h, 2 * w)))
        rows.append({"method": REGRESSION, "seed": "", **metrics(out, out2x), "diversity": float("nan")})
        outputs[REGRESSION] = out
    for mode in opts.modes:
        steps, eta = mode_sampling(model, mode, opts.steps, opts.eta)
        method, samples, first, detail = ours_method(mode), [], len(rows), mode == "detail"
        for seed in range(opts.seeds):
            if opts.ensemble == 1:
                latent, guide = ours_latent(model, lr, steps, eta, seed, opts.consistency, detail)
                out = decode_uint8(model, latent, h, w, guide=guide)[0]
                out2x = decode_uint8(model, latent, 2 * h, 2 * w, guide=guide)[0] if seed == 0 else None
            else:
                out = ours_ensemble(model, lr, h, w, opts, steps, eta, seed, detail)
                out2x = ours_ensemble(model, lr, 2 * h, 2 * w, opts, steps, eta, seed, detail) if seed == 0 else None
            rows.append({"method": method, "seed": seed, **metrics(out, out2x)})
            samples.append(out)
            if seed == 0:
                outputs[method] = out
        div = diversity(samples)
        for row in rows[first:]:
            row["diversity"] = div
    return rows, outputs


def run(model: ArbScaleModel, paths: list[Path], opts: SREvalOptions,
        progress: Callable[[], None] | None = None, regression=None):
    """Evaluate every readable, large-enough image at every scale (``regression``: see
    ``evaluate_image``).

    Returns (rows, skipped [(path, reason)], grid samples {path: {scale: outputs}})."""
    rows, skipped, grid = [], [], {}
    need = MIN_LR_SIDE * max(opts.scales)
    for path in paths[: opts.limit]:
        try:
            with Image.open(path) as im:
                hr_full = np.asarray(im.convert("RGB"))
        except Exception as exc:  # unreadable files are listed in the report, not fatal
            skipped.append((path, f"unreadable ({exc.__class__.__name__})"))
            for _ in opts.scales:
                progress and progress()
            continue
        if min(hr_full.shape[:2]) < need:
            skipped.append((path, f"smaller than {math.ceil(need)}px (LR side >= {MIN_LR_SIDE} at x{max(opts.scales):g})"))
            for _ in opts.scales:
                progress and progress()
            continue
        for scale in opts.scales:
            image_rows, outputs = evaluate_image(model, hr_full, scale, opts, regression)
            for row in image_rows:
                rows.append({"image": path.name, "scale": scale, **row})
            if len(grid) < 3 or path in grid:
                grid.setdefault(path, {})[scale] = outputs
            progress and progress()
    return rows, skipped, grid


def summarize(rows: list[dict]) -> dict:
    """{(scale, method): {metric: (mean, ci95, n)}}, seeds averaged per image first."""
    per_image: dict[tuple, list[dict]] = {}
    for r in rows:
        per_image.setdefault((r["scale"], r["method"], r["image"]), []).append(r)
    grouped: dict[tuple, dict[str, list[float]]] = {}
    for (scale, method, _), rs in per_image.items():
        g = grouped.setdefault((scale, method), {m: [] for m in METRICS})
        for m in METRICS:
            vals = [r[m] for r in rs if m in r and r[m] == r[m] and math.isfinite(r[m])]
            if vals:
                g[m].append(float(np.mean(vals)))
    out = {}
    for key, g in grouped.items():
        out[key] = {}
        for m, vals in g.items():
            if not vals:
                continue
            n = len(vals)
            ci = 1.96 * float(np.std(vals, ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
            out[key][m] = (float(np.mean(vals)), ci, n)
    return out
