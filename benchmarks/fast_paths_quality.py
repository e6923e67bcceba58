"""What the fast paths cost in quality: PSNR-Y of the bundled SR model's default (fidelity) mode on
held-out photos at LR sizes where U-Net tiling applies, for each variant against the fp32 reference
and against the truth, in one run.

    python benchmarks/fast_paths_quality.py DATA/val [--scale 2] [--max-side 1024]
        [--variants fp32:4096,fp32:256,bf16:256] [--out benchmarks/results/fast_paths_quality.json]

A variant is DTYPE:TILE (dtype fp32 or bf16: the autocast dtype of the U-Net and MLP; tile: the
U-Net's largest tile in latent cells, 4096 = one tile for these sizes). HR = the photo centre-cropped
to max-side; LR = its antialiased bicubic downscale (the usual protocol). The first variant is the
reference: "vs ref" is the PSNR of each variant's output against it (how far the fast path moves the
output), "dB" the mean PSNR-Y against the truth (what it costs).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arbscale_core.checkpoint import load_model  # noqa: E402
from arbscale_core.device import resolve_dtype  # noqa: E402
from arbscale_core.evaluate import hr_crop_for_scale, make_lr, psnr, psnr_y  # noqa: E402
from arbscale_core.imageops import from_uint8, to_uint8  # noqa: E402
from arbscale_core.pipeline import upscale  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="folder of held-out photos")
    p.add_argument("--scale", type=float, default=2.0)
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--variants", default="fp32:4096,fp32:256,bf16:256")
    p.add_argument("--limit", type=int, help="only the first N photos")
    p.add_argument("--model", help="model file (default: the bundled SR model)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    variants = [(v.split(":")[0], int(v.split(":")[1])) for v in args.variants.split(",")]
    model = load_model(args.model or ROOT / "arbscale_core" / "weights" / "arbscale_sr_tiny.safetensors").eval()
    paths = sorted(q for q in Path(args.data).iterdir() if q.suffix.lower() in (".png", ".jpg", ".jpeg"))
    paths = paths[:args.limit] if args.limit else paths
    shave = int(np.ceil(args.scale))
    scores = {v: {"dB": [], "vs_ref": [], "s": []} for v in variants}
    for path in paths:
        hr = hr_crop_for_scale(np.asarray(Image.open(path).convert("RGB")), args.scale, args.max_side)
        lr = make_lr(hr, args.scale)
        reference = None
        for dtype, tile in variants:
            t0 = time.perf_counter()
            with torch.no_grad():
                out = to_uint8(2 * upscale(model, from_uint8(lr), size=(hr.shape[1], hr.shape[0]),
                                       dtype=resolve_dtype(dtype, torch.device("cpu")), tile=tile) - 1)[0]
            s = scores[(dtype, tile)]
            s["s"].append(time.perf_counter() - t0)
            s["dB"].append(psnr_y(out, hr, shave))
            reference = out if reference is None else reference
            s["vs_ref"].append(psnr(out, reference))
        print(f"{path.name} LR {lr.shape[1]}x{lr.shape[0]}: "
              + ", ".join(f"{d}:{t} {scores[(d, t)]['dB'][-1]:.3f}" for d, t in variants), file=sys.stderr, flush=True)
    print(f"{len(paths)} photos, x{args.scale:g}, HR at most {args.max_side} px a side; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| variant | PSNR-Y dB | Δ vs first | PSNR vs first's output | seconds / photo |")
    print("|---|---|---|---|---|")
    ref_db = np.mean(scores[variants[0]]["dB"])
    rows = []
    for d, t in variants:
        s = scores[(d, t)]
        finite = [x for x in s["vs_ref"] if np.isfinite(x)]
        vs = f"{np.mean(finite):.1f}" if finite else "identical"
        rows.append({"dtype": d, "tile": t, "psnr_y": float(np.mean(s["dB"])), "delta_db": float(np.mean(s["dB"]) - ref_db),
                     "psnr_vs_reference": float(np.mean(finite)) if finite else None, "seconds": float(np.mean(s["s"]))})
        print(f"| {d}, tile {t} | {np.mean(s['dB']):.3f} | {np.mean(s['dB']) - ref_db:+.3f} | {vs} | {np.mean(s['s']):.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"scale": args.scale, "max_side": args.max_side, "photos": len(paths),
                                              "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
