"""End to end at the sizes artists use: `arbscale upscale` of 256², 512² and 1024² inputs at ×2,
×2.5 and ×4, with the time and peak memory of each stage, fixed-scale peers and bicubic, in one run.

    python benchmarks/end_to_end.py [--sides 256,512,1024] [--scales 2,2.5,4] [--dtypes fp32,bf16]
        [--peer-python PYTHON --peers compact,span,esrgan] [--image PATH] [--quick]
        [--out benchmarks/results/end_to_end.json]

Each case runs twice: the console script in its own process (wall time and that process's peak RSS
from wait4, torch import and model load included), then in this process stage by stage with the
peak RSS of each stage (Linux: /proc/self/clear_refs resets the high-water mark): read the PNG,
encode the condition, U-Net (DDIM, the fidelity mode's steps), the per-cell passes (feature decoder
+ LR encoder: the MLP's first-layer map), the MLP decode (bands, without the projection; its
GFLOP/s and share of this machine's fp32 matmul peak), the LR-consistency projection (the rest of a
projected decode) and the PNG write; fp32 (the default) and bf16 autocast (U-Net and MLP).

Peers: a fixed-scale x4 network a user would pick instead, loaded by spandrel from a .safetensors
file and run by benchmarks/peer_spandrel.py in its own process (random weights: speed and memory,
not quality; x4 then Lanczos to the asked scale, as ComfyUI's Upscale-with-model + Upscale-by).
spandrel needs torchvision, which does not install beside the CPU torch this project uses, so the
peer runs under another Python given by --peer-python (e.g. a venv with `pip install torch==2.14.1
torchvision==0.29.1 spandrel`, the CUDA build of torch, run on the CPU here); without it peers are
skipped. Bicubic (PIL) is the floor. The input is a photo (default: the bundled example) resized to
the side, so timings see real content. --quick: 128² at ×2 only (the test suite runs that).
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

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from arbscale_core.checkpoint import load_model  # noqa: E402
from arbscale_core.device import resolve_dtype  # noqa: E402
from arbscale_core.imageops import read_image, save_image  # noqa: E402
from arbscale_core.pipeline import (decode_bands, default_steps, denoise, encode_condition,  # noqa: E402
                                    output_size, sr_guide)
from decoder_speed import matmul_peak, mlp_flops_per_pixel  # noqa: E402

STAGES = ("read", "encode", "unet", "per_cell", "mlp", "projection", "write")


def measured(cmd: list[str], what: str) -> tuple[float, float, str]:
    """(wall s, that process's own peak RSS MB, stdout): the command runs under a small wrapper
    process that reports its one child's peak RSS, so earlier (larger) cases do not mask it."""
    wrapper = ("import json, subprocess, sys, time, resource\n"
               "t0 = time.perf_counter()\n"
               "p = subprocess.run(sys.argv[1:], capture_output=True)\n"
               "t = time.perf_counter() - t0\n"
               "sys.stderr.buffer.write(p.stderr)\n"
               "print(json.dumps({'rc': p.returncode, 'wall_s': t, "
               "'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
               "'stdout': p.stdout.decode()}))\n")
    res = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=ROOT, capture_output=True, text=True)
    try:
        report = json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise SystemExit(f"{what} failed: {res.stderr[-2000:]}") from None
    if report["rc"] != 0:
        raise SystemExit(f"{what} failed: {res.stderr[-2000:]}")
    return report["wall_s"], report["peak_rss_mb"], report["stdout"]


def console_case(src: Path, out: Path, scale: float, dtype: str, model: str | None) -> dict:
    """Wall seconds and peak RSS (MB) of one `arbscale upscale` process."""
    cmd = [sys.executable, "-m", "arbscale_core.cli", "upscale", str(src), "-o", str(out), "--scale", str(scale),
           "--dtype", dtype, "--overwrite"] + (["--model", model] if model else [])
    wall, peak, _ = measured(cmd, " ".join(cmd))
    return {"wall_s": wall, "peak_rss_mb": peak}


def peer_case(python: str, arch: str, src: Path, out: Path, scale: float) -> dict:
    cmd = [python, str(ROOT / "benchmarks" / "peer_spandrel.py"), arch, str(src), str(out), "--scale", str(scale)]
    wall, peak, stdout = measured(cmd, f"peer {arch}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "wall_s": wall, "peak_rss_mb": peak}


def _peak_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            return int(fh.read().split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return None


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def timed(fn):
    """(result, seconds, peak RSS MB of this process while fn ran, or None off Linux)."""
    _reset_peak()
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0, _peak_mb()


@torch.no_grad()
def stage_case(model, src: Path, out: Path, scale: float, dtype: torch.dtype | None) -> dict:
    """Seconds and peak RSS per stage, in this process."""
    row = {}

    def stage(name, fn):
        result, row[f"{name}_s"], row[f"{name}_peak_mb"] = timed(fn)
        return result

    image = stage("read", lambda: read_image(src))
    x = image.rgb
    h, w = output_size(*x.shape[-2:], scale=scale)
    cond = stage("encode", lambda: encode_condition(model, x))
    latent = stage("unet", lambda: denoise(model, cond, steps=default_steps(model), dtype=dtype))
    lr = x * 2 - 1
    stage("per_cell", lambda: model.first_layer_map(latent, lr))
    plain = sr_guide(model, x, cond, consistency=False)
    stage("mlp", lambda: [None for _ in decode_bands(model, latent, h, w, dtype=dtype, guide=plain)])
    row["mlp_s"] = max(0.0, row["mlp_s"] - row["per_cell_s"])  # the decode ran the per-cell passes too
    guide = sr_guide(model, x, cond)
    bands = stage("projection", lambda: [band for _, _, band in decode_bands(model, latent, h, w, dtype=dtype,
                                                                              guide=guide)])
    row["projection_s"] = max(0.0, row["projection_s"] - row["mlp_s"] - row["per_cell_s"])
    pixels = (torch.cat(bands, dim=2)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    stage("write", lambda: save_image(pixels, out))
    row["stages_total_s"] = sum(row[f"{s}_s"] for s in STAGES)
    row["out"] = f"{w}x{h}"
    row["out_pixels"] = w * h
    return row


def cpu_info() -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; off Linux, platform's name and no flags."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields.get("model name") or platform.processor() or platform.machine(), set(fields.get("flags", "").split())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", default="256,512,1024")
    p.add_argument("--scales", default="2,2.5,4")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--image", default=str(ROOT / "assets" / "building_lr.png"))
    p.add_argument("--model", help="model file (default: the bundled SR model)")
    p.add_argument("--peer-python", help="a Python with spandrel (see above); peers are skipped without it")
    p.add_argument("--peers", default="compact,span,esrgan")
    p.add_argument("--peer-max-side", type=int, default=512, help="peers only up to this input side (ESRGAN "
                                                                   "on a 1024² input takes minutes on 2 cores)")
    p.add_argument("--threads", type=int)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sides = [128] if args.quick else [int(s) for s in args.sides.split(",")]
    scales = [2.0] if args.quick else [float(s) for s in args.scales.split(",")]
    dtypes = ["fp32"] if args.quick else args.dtypes.split(",")
    peers = args.peers.split(",") if args.peer_python and not args.quick else []
    model_path = args.model or ROOT / "arbscale_core" / "weights" / "arbscale_sr_tiny.safetensors"
    model = load_model(model_path).eval()
    flops_per_pixel = mlp_flops_per_pixel(model)
    peak32 = matmul_peak(torch.float32, 1024 if args.quick else 2048)
    photo = Image.open(args.image).convert("RGB")
    rows, peer_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for side in sides:
            src = work / f"in{side}.png"
            small = photo.resize((side, side), Image.LANCZOS)
            small.save(src)
            for scale in scales:
                _, t_bicubic, _ = timed(lambda: small.resize((round(side * scale), round(side * scale)), Image.BICUBIC))
                for dtype in dtypes:
                    row = {"side": side, "scale": scale, "dtype": dtype, "bicubic_s": t_bicubic,
                           **console_case(src, work / "cli.png", scale, dtype, args.model),
                           **stage_case(model, src, work / "stages.png", scale,
                                       resolve_dtype(dtype, torch.device("cpu")))}
                    row["mlp_gflops"] = flops_per_pixel * row["out_pixels"] / max(row["mlp_s"], 1e-9) / 1e9
                    row["mlp_share_of_fp32_peak"] = row["mlp_gflops"] / peak32
                    rows.append(row)
                    print(f"{side}² x{scale:g} {dtype}: {row['wall_s']:.2f} s, {row['peak_rss_mb']:.0f} MB",
                          file=sys.stderr, flush=True)
                for arch in peers if side <= args.peer_max_side else []:
                    peer = {"side": side, "scale": scale, **peer_case(args.peer_python, arch, src, work / "peer.png", scale)}
                    peer_rows.append(peer)
                    print(f"{side}² x{scale:g} peer {arch}: {peer['wall_s']:.2f} s, {peer['peak_rss_mb']:.0f} MB",
                          file=sys.stderr, flush=True)
    cpu, flags = cpu_info()
    machine = {"cpu": cpu, "cores": os.cpu_count(), "native_bf16": "avx512_bf16" in flags,
               "torch": torch.__version__,
               "threads": torch.get_num_threads(), "fp32_matmul_peak_gflops": peak32,
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(f"Machine: {machine}\n")
    print("| input | scale | output | dtype | CLI wall s | CLI peak RSS MB | " + " | ".join(STAGES)
          + " | MLP % of fp32 peak | bicubic s |")
    print("|---|---|---|---|---|---|" + "---|" * len(STAGES) + "---|---|")
    for r in rows:
        print(f"| {r['side']}² | ×{r['scale']:g} | {r['out']} | {r['dtype']} | {r['wall_s']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | " + " | ".join(f"{r[s + '_s']:.2f}" for s in STAGES)
              + f" | {100 * r['mlp_share_of_fp32_peak']:.0f} | {r['bicubic_s']:.3f} |")
    print("\nPeak RSS per stage in the benchmark's own process (MB; the model and torch included):\n")
    print("| input | scale | dtype | " + " | ".join(STAGES) + " |")
    print("|---|---|---|" + "---|" * len(STAGES))
    for r in rows:
        print(f"| {r['side']}² | ×{r['scale']:g} | {r['dtype']} | "
              + " | ".join(f"{r[s + '_peak_mb']:.0f}" if r[s + "_peak_mb"] else "–" for s in STAGES) + " |")
    if peer_rows:
        print("\nFixed-scale peers (spandrel, x4 then Lanczos; random weights; their own process, torch "
              f"{peer_rows[0]['torch']}):\n")
        print("| input | scale | peer | params | wall s | upscale s | peak RSS MB | ArbScale fp32 wall s | ArbScale / peer |")
        print("|---|---|---|---|---|---|---|---|---|")
        for q in peer_rows:
            ours = next((r for r in rows if (r["side"], r["scale"], r["dtype"]) == (q["side"], q["scale"], "fp32")),
                        None)
            ours_s = f"{ours['wall_s']:.2f} | {ours['wall_s'] / q['wall_s']:.2f}" if ours else "– | –"
            print(f"| {q['side']}² | ×{q['scale']:g} | {q['spandrel_arch']} | {q['params'] / 1e6:.1f} M | "
                  f"{q['wall_s']:.2f} | {q['upscale_s']:.2f} | {q['peak_rss_mb']:.0f} | {ours_s} |")
    for side in sides:
        for scale in scales:
            pair = {r["dtype"]: r for r in rows if r["side"] == side and r["scale"] == scale}
            if "fp32" in pair and "bf16" in pair:
                print(f"{side}² x{scale:g}: bf16 / fp32 wall time {pair['bf16']['wall_s'] / pair['fp32']['wall_s']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "rows": rows, "peers": peer_rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
