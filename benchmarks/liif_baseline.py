"""The strong regression baseline: a ~0.3 M-parameter LIIF-style SR network (residual over bicubic),
trained here on a wall-clock budget, against ours on the validation photos in the same run.

    python benchmarks/liif_baseline.py train --data ~/.cache/arbscale/data/train --out /tmp/liif --minutes 25 [--steps 1700]
    python benchmarks/liif_baseline.py eval --weights /tmp/liif/liif.safetensors \
        --data ~/.cache/arbscale/data/val [--model arbscale_core/weights/arbscale_sr_tiny.safetensors] [--quick]

Network: a conv encoder on the LR image (EDSR-style ResBlocks without normalisation, at LR
resolution) and our LIIF implicit decoder (3x3-unfolded features, relative coordinate, cell,
local ensemble) whose output is added to the bicubic upscale. Training: random crops, LR side 32,
scale drawn from U(1.5, 4.5) per batch, L1 loss on a random 48 x 48 grid of the output's pixels
(LIIF's sampled queries), Adam, cosine learning rate over the time budget.
Evaluation uses ``arbscale eval``'s protocol (centre crops of at most --max-side px, sides divisible
by the scale, LR by antialiased bicubic in PIL, PSNR on RGB with a border of ceil(scale)) and
prints one table with bicubic, Lanczos + unsharp, this baseline and ours, with differences.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from arbscale_core.evaluate import baseline, hr_crop_for_scale, make_lr, psnr
from arbscale_core.imageops import from_uint8, resize, to_uint8
from arbscale_core.regression import LIIFBaseline, load_baseline

LR_SIDE = 32


def train(args) -> None:
    from arbscale_core.train.data import ImageSet

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    data = ImageSet([args.data], math.ceil(LR_SIDE * 4.5))
    net = LIIFBaseline()
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.minutes * 60
    t0 = time.time()
    step, log = 0, []
    # the run ends at --minutes or --steps, whichever comes first; --steps makes it independent of
    # what else shares the CPU (25 minutes alone here: 1,699 steps)
    while (done := max((time.time() - t0) / budget, step / args.steps if args.steps else 0.0)) < 1:
        elapsed = time.time() - t0
        for group in opt.param_groups:  # cosine over the run, to a tenth
            group["lr"] = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))
        scale = 1.5 + 3.0 * float(torch.rand(1, generator=gen))
        side = round(LR_SIDE * scale)
        hr = data.random_crops(args.batch, side, gen)
        lr = resize(hr, LR_SIDE, LR_SIDE).clamp(-1, 1)
        # LIIF's training: a sample of the output's pixels (here a random grid of rows x columns)
        rows = torch.randperm(side, generator=gen)[:args.queries].sort().values
        cols = torch.randperm(side, generator=gen)[:args.queries].sort().values
        loss = F.l1_loss(net(lr, side, side, rows, cols), hr[:, :, rows][:, :, :, cols])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            log.append({"step": step, "seconds": round(elapsed, 1), "l1": float(loss.detach())})
            print(json.dumps(log[-1]), flush=True)
    meta = {"shape": json.dumps(net.shape), "steps": str(step), "seconds": f"{time.time() - t0:.0f}",
            "parameters": str(params), "batch": str(args.batch), "lr": str(args.lr), "queries": str(args.queries)}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "liif.safetensors"), metadata=meta)
    print(f"{params} parameters, {step} steps in {time.time() - t0:.0f} s -> {out / 'liif.safetensors'}")


def evaluate(args) -> None:
    from arbscale_core.checkpoint import load_model
    from arbscale_core.pipeline import upscale_tensor
    from arbscale_core.train.data import list_images

    net, meta = load_baseline(args.weights)
    ours = load_model(args.model) if args.model else None
    scales = [float(s) for s in args.scales.split(",")]
    paths = list_images(args.data)[: 4 if args.quick else None]
    rows: dict[tuple[float, str], list[float]] = {}
    for path in paths:
        with Image.open(path) as im:
            full = np.asarray(im.convert("RGB"))
        for scale in scales:
            hr = hr_crop_for_scale(full, scale, args.max_side)
            lr = make_lr(hr, scale)
            h, w = hr.shape[:2]
            shave = math.ceil(scale)
            outs = {"bicubic": baseline(lr, w, h, "bicubic"),
                    "lanczos+unsharp": baseline(lr, w, h, "lanczos+unsharp"),
                    "liif baseline": to_uint8(net.upscale(from_uint8(lr) * 2 - 1, h, w))[0]}
            if ours is not None:
                x = from_uint8(lr)
                for name, ens in (("ours", 1),) + ((("ours, ensemble 8", 8),) if args.ensemble else ()):
                    out = upscale_tensor(ours, x, h, w, ensemble=ens)
                    outs[name] = to_uint8(out * 2 - 1)[0]
            for name, out in outs.items():
                rows.setdefault((scale, name), []).append(psnr(out, hr, shave))
        print(f"{path.name} done", file=sys.stderr, flush=True)
    methods = list(dict.fromkeys(name for _, name in rows))
    print(f"Baseline: {meta['parameters']} parameters, {meta['steps']} steps of batch {meta['batch']} in "
          f"{meta['seconds']} s. {len(paths)} images, PSNR (RGB, dB); in brackets: minus bicubic.\n")
    print("| method | " + " | ".join(f"×{s:g}" for s in scales) + " |")
    print("|---|" + "---|" * len(scales))
    for name in methods:
        cells = []
        for s in scales:
            v, b = float(np.mean(rows[(s, name)])), float(np.mean(rows[(s, "bicubic")]))
            cells.append(f"{v:.2f}" + ("" if name == "bicubic" else f" ({v - b:+.2f})"))
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=25.0)
    t.add_argument("--steps", type=int, help="also end after this many steps (the learning rate follows "
                                             "whichever limit is nearer)")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=4e-4)
    t.add_argument("--queries", type=int, default=48, help="output rows and columns sampled per crop")
    t.add_argument("--threads", type=int)
    e = sub.add_parser("eval")
    e.add_argument("--weights", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--model", help="also evaluate ours (default options: 1 step, consistency on)")
    e.add_argument("--ensemble", action="store_true", help="also ours with a self-ensemble of 8")
    e.add_argument("--scales", default="2,3,4,6.5,8")
    e.add_argument("--max-side", type=int, default=192)
    e.add_argument("--quick", action="store_true", help="4 images")
    e.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train(args) if args.command == "train" else evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
