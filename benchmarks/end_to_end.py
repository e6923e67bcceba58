"""End to end at the sizes artists use: `arbscale upscale` of 256², 512² and 1024² inputs at ×2,
×2.5 and ×4, in fp32 and bf16, with the time of each stage, peak RSS and bicubic, in one run.

    python benchmarks/end_to_end.py [--sides 256,512,1024] [--scales 2,2.5,4] [--dtypes fp32,bf16]
                                    [--image PATH] [--quick] [--out benchmarks/results/end_to_end.json]

Each case runs twice: the console script in its own process (wall time and that process's peak RSS
from wait4, torch import included), then in this process stage by stage: read the PNG, encode the
condition, U-Net (DDIM, the fidelity mode's steps), the per-cell passes (feature decoder + LR
encoder: the MLP's first-layer map), the MLP decode (bands, without the projection), the
LR-consistency projection (the rest of a projected decode) and the PNG write. Bicubic (PIL) is the
floor. The input is a photo (default: the bundled example) resized to the side, so timings see real
content. --quick: 128² at ×2 only (the test suite runs that).

No fixed-scale peer (e.g. a spandrel architecture) is measured: spandrel needs torchvision, whose
wheels reachable here are CUDA builds that do not load against the CPU torch.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arbscale_core.checkpoint import load_model  # noqa: E402
from arbscale_core.imageops import read_image, save_image  # noqa: E402
from arbscale_core.pipeline import (decode_bands, default_steps, denoise, encode_condition,  # noqa: E402
                                    output_size, sr_guide)

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def console_case(src: Path, out: Path, scale: float, dtype: str, model: str | None) -> dict:
    """Wall seconds and peak RSS (MB) of one `arbscale upscale` process."""
    cmd = [sys.executable, "-m", "arbscale_core.cli", "upscale", str(src), "-o", str(out), "--scale", str(scale),
           "--dtype", dtype, "--overwrite"] + (["--model", model] if model else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return {"wall_s": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


@torch.no_grad()
def stage_case(model, src: Path, out: Path, scale: float, dtype: torch.dtype | None) -> dict:
    """Seconds per stage, in this process."""
    image, t_read = timed(lambda: read_image(src))
    x = image.rgb
    h, w = output_size(*x.shape[-2:], scale=scale)
    cond, t_enc = timed(lambda: encode_condition(model, x))
    latent, t_unet = timed(lambda: denoise(model, cond, steps=default_steps(model), dtype=dtype))
    lr = x * 2 - 1
    _, t_cells = timed(lambda: model.first_layer_map(latent, lr))
    plain = sr_guide(model, x, cond, consistency=False)
    _, t_plain = timed(lambda: [None for _ in decode_bands(model, latent, h, w, dtype=dtype, guide=plain)])
    guide = sr_guide(model, x, cond)
    bands, t_projected = timed(lambda: [band for _, _, band in decode_bands(model, latent, h, w, dtype=dtype,
                                                                             guide=guide)])
    pixels = (torch.cat(bands, dim=2)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    _, t_write = timed(lambda: save_image(pixels, out))
    return {"read_s": t_read, "encode_s": t_enc, "unet_s": t_unet, "per_cell_s": t_cells,
            "mlp_s": max(0.0, t_plain - t_cells), "projection_s": max(0.0, t_projected - t_plain),
            "write_s": t_write, "stages_total_s": t_read + t_enc + t_unet + t_projected + t_write,
            "out": f"{w}x{h}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", default="256,512,1024")
    p.add_argument("--scales", default="2,2.5,4")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--image", default=str(ROOT / "assets" / "building_lr.png"))
    p.add_argument("--model", help="model file (default: the bundled SR model)")
    p.add_argument("--threads", type=int)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sides = [128] if args.quick else [int(s) for s in args.sides.split(",")]
    scales = [2.0] if args.quick else [float(s) for s in args.scales.split(",")]
    dtypes = ["fp32"] if args.quick else args.dtypes.split(",")
    model = load_model(args.model or ROOT / "arbscale_core" / "weights" / "arbscale_sr_tiny.safetensors").eval()
    photo = Image.open(args.image).convert("RGB")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for side in sides:
            src = work / f"in{side}.png"
            small = photo.resize((side, side), Image.LANCZOS)
            small.save(src)
            for scale in scales:
                _, t_bicubic = timed(lambda: small.resize((round(side * scale), round(side * scale)), Image.BICUBIC))
                for dtype in dtypes:
                    row = {"side": side, "scale": scale, "dtype": dtype, "bicubic_s": t_bicubic,
                           **console_case(src, work / "cli.png", scale, dtype, args.model),
                           **stage_case(model, src, work / "stages.png", scale, DTYPES[dtype])}
                    rows.append(row)
                    print(f"{side}² x{scale:g} {dtype}: {row['wall_s']:.2f} s, {row['peak_rss_mb']:.0f} MB",
                          file=sys.stderr, flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(f"Machine: {machine}\n")
    cols = ["read_s", "encode_s", "unet_s", "per_cell_s", "mlp_s", "projection_s", "write_s"]
    print("| input | scale | output | dtype | CLI wall s | peak RSS MB | " + " | ".join(c[:-2] for c in cols)
          + " | bicubic s | CLI / bicubic |")
    print("|---|---|---|---|---|---|" + "---|" * len(cols) + "---|---|")
    for r in rows:
        print(f"| {r['side']}² | ×{r['scale']:g} | {r['out']} | {r['dtype']} | {r['wall_s']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | " + " | ".join(f"{r[c]:.2f}" for c in cols)
              + f" | {r['bicubic_s']:.3f} | {r['wall_s'] / max(r['bicubic_s'], 1e-6):.0f}× |")
    for side in sides:
        for scale in scales:
            pair = {r["dtype"]: r for r in rows if r["side"] == side and r["scale"] == scale}
            if "fp32" in pair and "bf16" in pair:
                print(f"{side}² x{scale:g}: bf16 / fp32 wall time {pair['bf16']['wall_s'] / pair['fp32']['wall_s']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
