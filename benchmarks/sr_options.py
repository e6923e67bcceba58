"""Cost of the SR inference options: the LR-consistency projection and the self-ensemble.

    python benchmarks/sr_options.py [--model arbscale_core/weights/arbscale_sr_tiny.safetensors] \
        [--side 128] [--scales 4,8] [--threads 2] [--repeats 1]

Times ``upscale_tensor`` on one LR image (a deterministic synthetic image: quality is measured by
``arbscale eval``) for each option, the best of --repeats runs after a warm-up, and prints seconds
and the ratio to the default (1 member, projection on).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from arbscale_core.checkpoint import load_model
from arbscale_core.cli import DEFAULT_MODELS

OPTIONS = [("no projection", False, 1), ("default (projection)", True, 1), ("ensemble 2", True, 2),
           ("ensemble 4", True, 4), ("ensemble 8", True, 8)]


def test_image(side: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    img = torch.stack([0.5 + 0.3 * torch.sin(9 * xx + 4 * yy), 0.5 + 0.2 * torch.cos(13 * yy),
                       0.4 + 0.3 * (xx > 0.6).float()])
    return img[None].clamp(0, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODELS["sr"]))
    p.add_argument("--side", type=int, default=128)
    p.add_argument("--scales", default="4,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from arbscale_core.pipeline import upscale_tensor

    model = load_model(args.model)
    lr = test_image(args.side)
    print(f"LR {args.side}², {args.threads} threads, torch {torch.__version__}\n")
    print("| scale | output | option | seconds | vs default |")
    print("|---|---|---|---|---|")
    for scale in [float(s) for s in args.scales.split(",")]:
        side = round(args.side * scale)
        upscale_tensor(model, lr, side, side)  # warm-up
        times = {}
        for name, consistency, ensemble in OPTIONS:
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                upscale_tensor(model, lr, side, side, consistency=consistency, ensemble=ensemble)
                best = min(best, time.perf_counter() - t0)
            times[name] = best
        for name, _, _ in OPTIONS:
            print(f"| ×{scale:g} | {side}² | {name} | {times[name]:.2f} | "
                  f"{times[name] / times['default (projection)']:.2f}× |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
