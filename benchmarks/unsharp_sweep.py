"""Pick the unsharp-mask setting of the Lanczos baseline on *training* photos (never validation).

    python benchmarks/unsharp_sweep.py --data ~/.cache/arbscale/data/train --scale 4 --limit 40
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np
from PIL import Image, ImageFilter

from arbscale_core.evaluate import baseline, hr_crop_for_scale, make_lr, psnr
from arbscale_core.train.data import list_images


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--scale", type=float, default=4)
    p.add_argument("--limit", type=int, default=40)
    a = p.parse_args()
    pairs = []
    for path in list_images(a.data)[: a.limit]:
        hr = hr_crop_for_scale(np.asarray(Image.open(path).convert("RGB")), a.scale, 384)
        pairs.append((hr, make_lr(hr, a.scale)))
    bic = np.mean([psnr(baseline(lr, hr.shape[1], hr.shape[0], "bicubic"), hr) for hr, lr in pairs])
    results = []
    for radius, percent in itertools.product([0.5, 1.0, 1.5, 2.0, 2.5], [20, 40, 60, 80, 120, 160, 200]):
        scores = []
        for hr, lr in pairs:
            up = Image.fromarray(lr).resize((hr.shape[1], hr.shape[0]), Image.LANCZOS)
            scores.append(psnr(np.asarray(up.filter(ImageFilter.UnsharpMask(radius, percent, 0))), hr))
        results.append((np.mean(scores) - bic, radius, percent))
    for gain, radius, percent in sorted(results, reverse=True)[:5]:
        print(f"radius {radius} percent {percent}: {gain:+.3f} dB over bicubic")


if __name__ == "__main__":
    main()
