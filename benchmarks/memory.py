"""Peak memory (RSS) of `arbscale upscale` from a 16² input at growing scales, in one run.

    python benchmarks/memory.py [--quick] [--full] [--dtype bf16]

Each case runs in its own process under /usr/bin/time (peak RSS of that process). Default:
16² at ×25 (400²) and ×200 (3,200²); --full adds 64² at ×200 (12,800², tens of minutes here);
--quick runs 16² at ×2 and ×8 only. Prints a table and the growth between the first two cases.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_case(side: int, scale: float, dtype: str, model: str | None, work: Path) -> dict:
    src = work / f"in{side}.png"
    rng = np.random.default_rng(side)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(src)
    out = work / f"out_{side}_{scale:g}.png"
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB %M", sys.executable, "-m", "arbscale_core.cli", "upscale", str(src),
           "-o", str(out), "--scale", str(scale), "--dtype", dtype]
    if model:
        cmd += ["--model", model]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"case {side}² x{scale:g} failed: {res.stderr[-2000:]}")
    rss_kb = int(re.search(r"MAXRSS_KB (\d+)", res.stderr).group(1))
    Image.MAX_IMAGE_PIXELS = None  # our own output; only its header is read
    width, height = Image.open(out).size
    out.unlink()
    return {"input": side, "scale": scale, "output": f"{width}x{height}", "peak_rss_mb": rss_kb / 1024,
            "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--full", action="store_true")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--model")
    p.add_argument("--out", default="benchmarks/results/memory.json")
    a = p.parse_args(argv)
    cases = [(16, 2.0), (16, 8.0)] if a.quick else [(16, 25.0), (16, 200.0)]
    if a.full:
        cases.append((64, 200.0))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_case(side, scale, a.dtype, a.model, Path(tmp)) for side, scale in cases]
    print(f"arbscale upscale peak RSS, dtype {a.dtype}, {platform.processor() or platform.machine()}\n")
    print("| input | scale | output | peak RSS MB | s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input']}² | x{r['scale']:g} | {r['output']} | {r['peak_rss_mb']:.0f} | {r['seconds']:.1f} |")
    growth = rows[1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    print(f"\ngrowth from {rows[0]['output']} to {rows[1]['output']}: {growth:.0f} MB")
    if not a.quick:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        import os

        import torch

        Path(a.out).write_text(json.dumps({"dtype": a.dtype, "rows": rows, "growth_mb": growth,
                                           "machine": platform.platform(), "torch": torch.__version__,
                                           "model": Path(a.model).name if a.model else "bundled SR model",
                                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}, indent=1))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
