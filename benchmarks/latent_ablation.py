"""What the diffusion latent adds: one SR model's decoder reading the condition latent itself
(the LR resized and encoded, no diffusion) against the U-Net's estimate after 1, 2, 5 and 20 DDIM
steps, with and without the LR-consistency projection, on centre crops of a photo folder.

    python benchmarks/latent_ablation.py --data ~/.cache/arbscale/data/val \
        [--model arbscale_core/weights/arbscale_sr_tiny.safetensors] [--side 192] [--scale 4] [--quick]

LR crops by antialiased bicubic (torch) at side / scale; PSNR (RGB, 8-bit, whole image) averaged
over images, as the trainer's validation reports it. Prints one table with differences from the
default (the model file's own step count, projection on).
"""
from __future__ import annotations

import argparse
import sys

import torch

from arbscale_core.checkpoint import load_model
from arbscale_core.imageops import resize
from arbscale_core.pipeline import decode, default_steps, denoise, encode_condition, sr_guide
from arbscale_core.train.data import ImageSet
from arbscale_core.train.stages import psnr


def steps_label(steps: int) -> str:
    return f"{steps} DDIM step{'s' if steps > 1 else ''}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of HR photos")
    p.add_argument("--model", default="arbscale_core/weights/arbscale_sr_tiny.safetensors")
    p.add_argument("--side", type=int, default=192, help="HR centre-crop side")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--steps", default="1,2,5,20")
    p.add_argument("--quick", action="store_true", help="4 images, steps 1 and 2")
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model(a.model).eval()
    if model.config.task != "sr":
        print("error: the model is not an SR model", file=sys.stderr)
        return 2
    hr = ImageSet([a.data], a.side).center_crops(a.side)
    steps = [1, 2] if a.quick else [int(s) for s in a.steps.split(",")]
    if a.quick:
        hr = hr[:4]
    lr = resize(hr, a.side // a.scale, a.side // a.scale).clamp(-1, 1)
    x = (lr + 1) / 2
    scores: dict[tuple[str, bool], list[float]] = {}
    with torch.no_grad():
        for i in range(len(hr)):
            xi, hi = x[i:i + 1], hr[i:i + 1]
            cond = encode_condition(model, xi)
            latents = [("condition latent (no diffusion)", cond)]
            latents += [(steps_label(s), denoise(model, cond, steps=s)) for s in steps]
            for name, latent in latents:
                for projection in (False, True):
                    out = decode(model, latent, a.side, a.side, guide=sr_guide(model, xi, cond, projection))
                    scores.setdefault((name, projection), []).append(psnr(out * 2 - 1, hi))
    mean = {k: sum(v) / len(v) for k, v in scores.items()}
    ref = mean.get((steps_label(default_steps(model)), True))
    print(f"{a.model}: {len(hr)} crops of {a.side}² at x{a.scale}, PSNR dB; bicubic "
          f"{sum(psnr(resize(lr[i:i + 1], a.side, a.side), hr[i:i + 1]) for i in range(len(hr))) / len(hr):.2f}\n")
    print("| latent decoded | no projection | projection |")
    print("|---|---|---|")
    for name in dict.fromkeys(n for n, _ in mean):
        cells = []
        for projection in (False, True):
            v = mean[(name, projection)]
            cells.append(f"{v:.2f}" + (f" ({v - ref:+.2f})" if ref is not None else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
