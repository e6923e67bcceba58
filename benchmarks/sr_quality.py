"""SR quality table for the model card: ours vs bicubic, Lanczos and Lanczos + unsharp mask.

    python benchmarks/sr_quality.py --model arbscale_core/weights/arbscale_sr_tiny.safetensors \
        --data ~/.cache/arbscale/data/val --scales 2,3,4,6.5,8 [--steps 20 --eta 0] [--quick]

Protocol: each HR image is centre-cropped (at most --max-side pixels, sides divisible by the
scale), downscaled with antialiased bicubic (PIL), and upscaled back to the HR size by each method.
PSNR on RGB and on Y (BT.601, border shave = ceil(scale)), SSIM on Y. Prints a markdown table and
writes JSON to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arbscale_core.checkpoint import load_model
from arbscale_core.evaluate import (BASELINES, baseline, high_frequency_ratio, hr_crop_for_scale, make_lr, psnr,
                                   psnr_y, ssim)
from arbscale_core.eval_sr import ours_latent
from arbscale_core.pipeline import decode_uint8
from arbscale_core.train.data import list_images


def ours(model, lr: np.ndarray, height: int, width: int, steps: int, eta: float, seed: int) -> np.ndarray:
    latent, guide = ours_latent(model, lr, steps, eta, seed)
    return decode_uint8(model, latent, height, width, guide=guide)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--scales", default="2,3,4,6.5,8")
    p.add_argument("--max-side", type=int, default=384)
    p.add_argument("--steps", type=int, nargs="+", default=[20])
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--extra-model", action="append", default=[], metavar="NAME=PATH",
                   help="another model to compare (e.g. before alignment), 20 steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int)
    p.add_argument("--quick", action="store_true", help="3 images, scales 2 and 4, max side 96")
    p.add_argument("--out", help="JSON result file (default benchmarks/results/sr_quality_<model>.json)")
    a = p.parse_args(argv)
    scales = [float(s) for s in a.scales.split(",")]
    if a.quick:
        scales, a.limit, a.max_side = [2.0, 4.0], 3, 96
    model = load_model(a.model)
    extra = {}
    for item in a.extra_model:
        name, _, path = item.partition("=")
        extra[f"{name} (20 steps)"] = load_model(path)
    paths = list_images(a.data)[: a.limit]
    methods = list(BASELINES) + list(extra) + [f"ours ({s} steps)" for s in a.steps]
    rows: dict[tuple[str, float], list[tuple[float, float, float]]] = {}
    t0 = time.time()
    for path in paths:
        hr_full = np.asarray(Image.open(path).convert("RGB"))
        for s in scales:
            hr = hr_crop_for_scale(hr_full, s, a.max_side)
            lr = make_lr(hr, s)
            h, w = hr.shape[:2]
            shave = math.ceil(s)
            outs = {m: baseline(lr, w, h, m) for m in BASELINES}
            for label, other in extra.items():
                outs[label] = ours(other, lr, h, w, 20, a.eta, a.seed)
            for steps in a.steps:
                outs[f"ours ({steps} steps)"] = ours(model, lr, h, w, steps, a.eta, a.seed)
            for m, out in outs.items():
                rows.setdefault((m, s), []).append((psnr(out, hr, shave), psnr_y(out, hr, shave), ssim(out, hr, shave),
                                                    high_frequency_ratio(out, hr)))
        print(f"{path.name} done ({time.time() - t0:.0f} s)", file=sys.stderr)
    table = {f"{m}|x{s:g}": dict(zip(("psnr_rgb", "psnr_y", "ssim_y", "hf_ratio"), np.mean(rows[(m, s)], axis=0).round(4).tolist()))
             for m in methods for s in scales}
    print(f"\n{len(paths)} images from {a.data}, eta={a.eta}, seed={a.seed}, max side {a.max_side}\n")
    print("| method | " + " | ".join(f"x{s:g} PSNR / Y / SSIM / HF" for s in scales) + " |")
    print("|---|" + "---|" * len(scales))
    for m in methods:
        cells = [table[f"{m}|x{s:g}"] for s in scales]
        print(f"| {m} | " + " | ".join(f"{c['psnr_rgb']:.2f} / {c['psnr_y']:.2f} / {c['ssim_y']:.4f} / {c['hf_ratio']:.2f}" for c in cells) + " |")
    best = {s: table[f"bicubic|x{s:g}"]["psnr_rgb"] for s in scales}
    print("\nours - bicubic (RGB PSNR, dB): " + ", ".join(
        f"x{s:g}: {table[f'{methods[-1]}|x{s:g}']['psnr_rgb'] - best[s]:+.2f}" for s in scales))
    result = {"model": Path(a.model).name, "data": str(a.data), "images": len(paths), "scales": scales,
              "steps": a.steps, "eta": a.eta, "seed": a.seed, "max_side": a.max_side, "table": table,
              "seconds": round(time.time() - t0, 1), "machine": platform.platform(),
              "processor": platform.processor(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    out = Path(a.out or f"benchmarks/results/sr_quality_{Path(a.model).stem}.json")
    if not a.quick:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
