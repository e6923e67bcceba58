"""Decoder speed: a naive LIIF query (as in the LIIF code: unfold features, grid-sample the 4
neighbours, run the whole MLP per query, fp32) against ArbScale's decoder (first layer computed
once per latent cell, separable neighbour tables), fp32 and bf16, on the same weights.

    python benchmarks/decoder_speed.py [--quick] [--model PATH] [--threads N]

Prints output megapixels/s, the MLP FLOPs per pixel, this machine's measured matmul peak (same
run) and the share of it each path reaches, and the PSNR change of bf16 against fp32. The naive
path gets its best query batch out of a sweep (LIIF's own test script uses 30,000); ours runs at
the library's default query block, and a second table sweeps that block size.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from arbscale_core.checkpoint import load_model
from arbscale_core.config import preset
from arbscale_core.implicit_decoder import QUERY_BLOCK, decode_bands
from arbscale_core.model import ArbScaleModel

NAIVE_CHUNKS = (65536, 30000, 8192, 2048)
BLOCKS = (512, 1024, 2048, 4096, 16384, 65536)


def ours(model: ArbScaleModel, latent: torch.Tensor, side: int, chunk: int, block: int = QUERY_BLOCK,
         dtype: torch.dtype | None = None, lr: torch.Tensor | None = None) -> torch.Tensor:
    first = model.first_layer_map(latent, lr)
    return torch.cat([b for _, _, b in decode_bands(model.implicit, first, side, side, chunk, dtype, block=block)], 2)


def naive_liif(model: ArbScaleModel, latent: torch.Tensor, height: int, width: int, chunk: int,
               lr: torch.Tensor | None = None) -> torch.Tensor:
    """LIIF's query_rgb: per query, gather unfolded features of 4 neighbours, concat (rel, cell),
    full MLP with the first layer as one Linear; area-weighted ensemble. [B,3,H,W]. LR-reading
    models: the LR features are concatenated to the latent's (the first layer reads both)."""
    feat = model.feature_decoder(latent / model.config.latent_scale)
    conv = model.implicit.first_feat
    weight, bias = conv.weight, conv.bias
    if model.reads_lr:
        feat = torch.cat([feat, model.lr_features(lr, latent.shape[-2:])], 1)
        weight = torch.cat([weight, model.implicit.first_lr.weight], 1)
        bias = bias + model.implicit.first_lr.bias
    b, c, h, w = feat.shape
    k = conv.kernel_size[0]
    feat = F.unfold(feat, k, padding=k // 2).view(b, c * k * k, h, w)
    first = torch.cat([weight.reshape(conv.out_channels, -1), model.implicit.first_coord.weight], 1)
    ys = -1 + (2 * torch.arange(height) + 1) / height
    xs = -1 + (2 * torch.arange(width) + 1) / width
    coord = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).view(1, -1, 2).expand(b, -1, -1)
    cell = torch.tensor([h / height, w / width]).view(1, 1, 2)
    rx, ry = 1 / w, 1 / h
    outs = []
    for q0 in range(0, coord.shape[1], chunk):
        q = coord[:, q0:q0 + chunk]
        preds, areas = [], []
        for vy in (-1, 1):
            for vx in (-1, 1):
                qs = q.clone()
                qs[..., 0] += vy * ry + 1e-6
                qs[..., 1] += vx * rx + 1e-6
                qs.clamp_(-1 + 1e-6, 1 - 1e-6)
                f = F.grid_sample(feat, qs.flip(-1).unsqueeze(1), mode="nearest", align_corners=False)[:, :, 0]
                f = f.permute(0, 2, 1)
                cy = (((qs[..., 0] + 1) * h / 2).floor() + 0.5)
                cx = (((qs[..., 1] + 1) * w / 2).floor() + 0.5)
                rel = torch.stack([(q[..., 0] + 1) * h / 2 - cy, (q[..., 1] + 1) * w / 2 - cx], -1)
                inp = torch.cat([f, rel, cell.expand(b, q.shape[1], 2)], -1)
                hid = inp @ first.T + bias
                preds.append(model.implicit.mlp(hid))
                areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
        total = sum(areas)
        areas = [areas[3], areas[2], areas[1], areas[0]]
        outs.append(sum(p * (a / total).unsqueeze(-1) for p, a in zip(preds, areas)))
    return torch.cat(outs, 1).view(b, height, width, 3).permute(0, 3, 1, 2)


def timeit(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    sec = timeit(lambda: a @ b, 3)
    return 2 * n ** 3 / sec / 1e9


def mlp_flops_per_pixel(model: ArbScaleModel) -> int:
    """Per output pixel: 4 neighbours x the MLP after its first layer (+ the 4-wide coord term)."""
    hidden = list(model.config.mlp_hidden)
    per = 2 * 4 * hidden[0]
    for a, b in zip(hidden[:-1], hidden[1:]):
        per += 2 * a * b
    per += 2 * hidden[-1] * 3
    return 4 * per


def naive_flops_per_pixel(model: ArbScaleModel) -> int:
    k = model.implicit.first_feat.kernel_size[0]
    in_dim = (model.config.feature_channels + model.config.lr_features) * k * k + 4
    return mlp_flops_per_pixel(model) + 4 * 2 * in_dim * model.config.mlp_hidden[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model file (default: random tiny preset weights; speed does not depend on them)")
    p.add_argument("--latent", type=int, default=48, help="latent side (LR side for SR)")
    p.add_argument("--scale", type=float, default=8.0, help="output side = latent side x scale")
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--threads", type=int)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/results/decoder_speed.json")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick:
        a.latent, a.scale = 12, 4.0
    torch.manual_seed(0)
    model = load_model(a.model) if a.model else ArbScaleModel(preset("tiny")).eval()
    latent = torch.randn(1, model.config.latent_channels, a.latent, a.latent)
    lr = torch.rand(1, 3, a.latent, a.latent) * 2 - 1 if model.reads_lr else None  # LR-reading models
    side = round(a.latent * a.scale)
    mpix = side * side / 1e6
    repeat = 1 if a.quick else 3
    with torch.no_grad():
        ref = ours(model, latent, side, a.chunk, lr=lr)
        naive = naive_liif(model, latent, side, side, a.chunk, lr)
        bf16 = ours(model, latent, side, a.chunk, dtype=torch.bfloat16, lr=lr)
        naive_times = {c: timeit(lambda c=c: naive_liif(model, latent, side, side, c, lr), repeat)
                       for c in ((a.chunk,) if a.quick else NAIVE_CHUNKS)}
        naive_chunk = min(naive_times, key=naive_times.get)
        t_naive = naive_times[naive_chunk]
        t_fp32 = timeit(lambda: ours(model, latent, side, a.chunk, lr=lr), repeat)
        t_bf16 = timeit(lambda: ours(model, latent, side, a.chunk, dtype=torch.bfloat16, lr=lr), repeat)
        block_times = {} if a.quick else {
            b: timeit(lambda b=b: ours(model, latent, side, a.chunk, block=b, lr=lr), repeat) for b in BLOCKS}
    peak32 = matmul_peak(torch.float32, 1024 if a.quick else 2048)
    peak16 = matmul_peak(torch.bfloat16, 1024 if a.quick else 2048)

    def psnr(x, y):
        mse = ((x.clamp(-1, 1) - y.clamp(-1, 1)) / 2).pow(2).mean()
        return float(10 * torch.log10(1 / mse)) if mse > 0 else float("inf")

    flops = mlp_flops_per_pixel(model)
    rows = [(f"naive LIIF fp32 (best batch {naive_chunk})", t_naive, naive_flops_per_pixel(model), peak32),
            (f"ours fp32 (block {QUERY_BLOCK})", t_fp32, flops, peak32),
            (f"ours bf16 (block {QUERY_BLOCK})", t_bf16, flops, peak16)]
    print(f"decode {a.latent}x{a.latent} latent -> {side}x{side} ({mpix:.2f} MP), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"matmul peak measured here: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s\n")
    print("| path | s | MP/s | vs naive | MLP GFLOP/s | share of matmul peak |")
    print("|---|---|---|---|---|---|")
    result = {"latent": a.latent, "side": side, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.platform(), "peak_gflops": {"fp32": peak32, "bf16": peak16}, "rows": []}
    for name, t, fl, peak in rows:
        gflops = fl * side * side / t / 1e9
        print(f"| {name} | {t:.3f} | {mpix / t:.2f} | {t_naive / t:.2f}x | {gflops:.0f} | {100 * gflops / peak:.0f} % |")
        result["rows"].append({"path": name, "seconds": t, "mp_per_s": mpix / t, "speedup_vs_naive": t_naive / t,
                               "flops_per_pixel": fl, "gflops": gflops, "share_of_peak": gflops / peak})
    if block_times:
        print("\n| ours fp32 query block (pixels) | s | MP/s | share of matmul peak |")
        print("|---|---|---|---|")
        for b, t in block_times.items():
            print(f"| {b} | {t:.3f} | {mpix / t:.2f} | {100 * flops * side * side / t / 1e9 / peak32:.0f} % |")
    result["block_sweep_fp32_s"] = block_times
    result["naive_chunk_sweep_s"] = naive_times
    result["naive_vs_ours_max_abs"] = float((naive - ref).abs().max())
    result["bf16_psnr_vs_fp32_db"] = psnr(bf16, ref)
    print(f"\nnaive vs ours fp32: max |diff| {result['naive_vs_ours_max_abs']:.2e} (same function)")
    print(f"bf16 vs fp32 output: PSNR {result['bf16_psnr_vs_fp32_db']:.1f} dB")
    if not a.quick:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
