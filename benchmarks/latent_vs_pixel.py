"""Ours (DDIM on the LR-sized latent, then implicit decode) against an IDM/SR3-style pixel-space
baseline (the same U-Net width, depth and attention, the same DDIM steps, but denoising the output
image itself, conditioned on the bicubic-upsampled LR), at scales 2-200 from 16² and 64² inputs.

    python benchmarks/latent_vs_pixel.py [--quick] [--full] [--steps 20] [--threads 2]

Every case runs in its own process (peak RSS = that process's ru_maxrss, under an address-space
limit of --mem-limit-gb so an out-of-memory case fails cleanly instead of swapping the machine).
Ours runs every step and decodes the whole output band by band (bands are discarded, as the
streaming PNG writer does). The pixel baseline uses random weights (cost does not depend on them);
it times one step, and runs the rest only while the projected total stays under --pixel-budget s,
otherwise its time is that step x steps ("projected"). A step slower than --case-timeout s or an
allocation failure is reported as such, and the ratio becomes a lower bound.
Default cases: 16² at all scales, 64² up to x100; --full adds 64² x200 (12,800², ~20 min for ours).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCALES = (2, 4, 8, 12, 30, 100, 200)
PAPER_RATIO = {8: 12.7, 12: 12.6, 30: 37.8, 100: 460.0}  # ours/IDM speed-up reported by Kim & Kim


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(spec: dict) -> dict:
    import torch

    from arbscale_core.checkpoint import load_model
    from arbscale_core.diffusion import alphas_cumprod
    from arbscale_core.imageops import resize
    from arbscale_core.pipeline import decode_uint8_bands, denoise, encode_condition, sr_guide
    from arbscale_core.sampler import sample_ddim
    from arbscale_core.unet import UNet

    torch.set_num_threads(spec["threads"])
    limit = int(spec["mem_limit_gb"] * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    model = load_model(spec["model"]).eval()
    side, scale, steps = spec["input"], spec["scale"], spec["steps"]
    out_side = round(side * scale)
    lr = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(side))
    res = {"input": side, "scale": scale, "output": out_side, "method": spec["method"]}
    base = _rss_mb()
    try:
        with torch.no_grad():
            if spec["method"] == "ours":
                t0 = time.perf_counter()
                cond = encode_condition(model, lr)
                latent = denoise(model, cond, steps=steps, seed=0)
                guide = sr_guide(model, lr, cond)
                t1 = time.perf_counter()
                for _ in decode_uint8_bands(model, latent, out_side, out_side, guide=guide):
                    pass
                t2 = time.perf_counter()
                res.update(seconds=t2 - t0, denoise_s=t1 - t0, decode_s=t2 - t1, steps_run=steps)
            else:
                # Same U-Net width/depth/attention as ours, on 3 image channels + 3 condition channels.
                cfg = model.config.replace(latent_channels=3)
                unet = UNet(cfg).eval()
                torch.nn.init.normal_(unet.conv_out.weight, std=0.02)
                cond = resize(lr * 2 - 1, out_side, out_side)
                x = torch.randn(1, 3, out_side, out_side, generator=torch.Generator().manual_seed(0))
                abar = alphas_cumprod(model.config)
                eps_fn = lambda xt, t: unet(xt, t, cond)  # noqa: E731
                t0 = time.perf_counter()
                sample_ddim(eps_fn, x, abar, steps=1)
                per_step = time.perf_counter() - t0
                if per_step * steps <= spec["pixel_budget"]:
                    t0 = time.perf_counter()
                    sample_ddim(eps_fn, x, abar, steps=steps)
                    res.update(seconds=time.perf_counter() - t0, steps_run=steps)
                else:
                    res.update(seconds=per_step * steps, steps_run=1, projected=True)
    except (RuntimeError, MemoryError) as exc:
        if "memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        res["oom"] = f"allocation failed under {spec['mem_limit_gb']:g} GB"
    res["peak_rss_mb"] = _rss_mb()
    res["base_rss_mb"] = base
    return res


def run_case(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**{k: spec[k] for k in ("input", "scale", "method")}, "output": round(spec["input"] * spec["scale"]),
                "timeout": timeout}
    if proc.returncode != 0:
        # a hard kill by the allocator (no Python exception) counts as out of memory too
        if proc.returncode < 0 or "memory" in proc.stderr.lower():
            return {**{k: spec[k] for k in ("input", "scale", "method")},
                    "output": round(spec["input"] * spec["scale"]), "oom": f"process died ({proc.returncode})"}
        raise SystemExit(f"case {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _time_cell(r: dict) -> str:
    if "timeout" in r:
        return f"> {r['timeout']:.0f} s/step"
    if "oom" in r:
        return "out of memory"
    return f"{r['seconds']:.2f}" + (" (proj.)" if r.get("projected") else "")


def _mem_cell(r: dict) -> str:
    return f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r and "oom" not in r else "-"


def ratio(ours: dict, pixel: dict, steps: int) -> tuple[str, float | None]:
    """(text, value) of pixel time / ours time; '>=' when the pixel case did not finish."""
    if "timeout" in pixel:
        return f">= {pixel['timeout'] * steps / ours['seconds']:.0f}", None
    if "oom" in pixel:
        return "pixel OOM", None
    v = pixel["seconds"] / ours["seconds"]
    return f"{v:.1f}", v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="16² at x2 and x4, 2 steps (a correctness check)")
    p.add_argument("--full", action="store_true", help="add 64² x200 (12,800²)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default=str(ROOT / "arbscale_core/weights/arbscale_sr_tiny.safetensors"))
    p.add_argument("--mem-limit-gb", type=float, default=16.0)
    p.add_argument("--case-timeout", type=float, default=180.0, help="seconds per case process")
    p.add_argument("--pixel-budget", type=float, default=60.0,
                   help="run all pixel-space steps only if the projected total is under this (s)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/latent_vs_pixel.json"))
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return 0

    if a.quick:
        cases, a.steps = [(16, 2), (16, 4)], min(a.steps, 2)
    else:
        cases = [(16, s) for s in SCALES] + [(64, s) for s in SCALES if s <= 100 or a.full]
    rows = []
    for side, scale in cases:
        spec = dict(input=side, scale=scale, steps=a.steps, threads=a.threads, model=a.model,
                    mem_limit_gb=a.mem_limit_gb, pixel_budget=a.pixel_budget)
        ours = run_case({**spec, "method": "ours"}, timeout=24 * 3600)
        pixel = run_case({**spec, "method": "pixel"}, timeout=a.case_timeout)
        text, value = ratio(ours, pixel, a.steps)
        rows.append({"ours": ours, "pixel": pixel, "time_ratio": value, "time_ratio_text": text})
        print(f"{side}² x{scale}: ours {_time_cell(ours)} s, pixel {_time_cell(pixel)}, ratio {text}",
              file=sys.stderr, flush=True)

    import torch

    print(f"\nLatent (ours) vs pixel-space (IDM-style) SR, {a.steps} DDIM steps, fp32, {a.threads} threads, "
          f"torch {torch.__version__}, {platform.machine()} ({platform.processor() or 'cpu'})\n")
    print("| input | scale | output | ours s | pixel s | time ratio | paper | ours MB | pixel MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, px = r["ours"], r["pixel"]
        paper = PAPER_RATIO.get(o["scale"])
        print(f"| {o['input']}² | x{o['scale']} | {o['output']}² | {_time_cell(o)} | {_time_cell(px)} | "
              f"{r['time_ratio_text']} | {paper if paper else ''} | {_mem_cell(o)} | {_mem_cell(px)} |")
    if not a.quick:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        info = {"steps": a.steps, "threads": a.threads, "torch": torch.__version__, "machine": platform.platform(),
                "cpu": platform.processor(), "mem_limit_gb": a.mem_limit_gb, "case_timeout_s": a.case_timeout,
                "model": Path(a.model).name}
        Path(a.out).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
        print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
