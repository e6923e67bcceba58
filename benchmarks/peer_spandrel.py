"""A fixed-scale peer through its real library: spandrel (what ComfyUI's "Load Upscale Model" uses)
loads a x4 architecture from a .safetensors file and upscales one image, as a user would do instead
of ArbScale; the x4 result is resized (Lanczos) to the asked scale, as ComfyUI's "Upscale Image By"
would. The weights are random (no trained file may be downloaded here): the figures are speed and
memory, not quality. Run by benchmarks/end_to_end.py in its own process, with a Python that has
spandrel (its wheel needs torchvision).

    python benchmarks/peer_spandrel.py ARCH INPUT.png OUTPUT.png --scale 2.5

ARCH: esrgan (RRDBNet, 23 blocks, 64 features: 4x-UltraSharp, RealESRGAN_x4plus), compact
(SRVGGNetCompact, 32 convs: realesr-general-x4v3) or span (SPAN, 48 features: 4xNomos8kSC-SPAN
style). Prints one JSON line: load, upscale (after a warm-up call on 32² pixels) and write
seconds, and parameters.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ARCHS = {
    "esrgan": ("spandrel.architectures.ESRGAN.__arch.RRDB", "RRDBNet", {}),
    "compact": ("spandrel.architectures.Compact.__arch.SRVGG", "SRVGGNetCompact", {"num_conv": 32}),
    "span": ("spandrel.architectures.SPAN.__arch.span", "SPAN", {"num_in_ch": 3, "num_out_ch": 3}),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arch", choices=sorted(ARCHS))
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--scale", type=float, required=True)
    args = p.parse_args(argv)
    from spandrel import ModelLoader

    module, name, kwargs = ARCHS[args.arch]
    torch.manual_seed(0)
    net = getattr(importlib.import_module(module), name)(**kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / f"{args.arch}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
        t0 = time.perf_counter()
        model = ModelLoader().load_from_file(weights).eval()  # detected from the state dict, as in ComfyUI
        t_load = time.perf_counter() - t0
    lr = Image.open(args.input).convert("RGB")
    with torch.inference_mode():  # warm (oneDNN sets up its kernels on the first call): the steady state
        model(torch.rand(1, 3, 32, 32))
    t0 = time.perf_counter()
    x = torch.from_numpy(np.asarray(lr).copy()).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        y = model(x)
    x4 = Image.fromarray((y[0].clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    size = (round(lr.width * args.scale), round(lr.height * args.scale))
    out = x4 if x4.size == size else x4.resize(size, Image.LANCZOS)
    t_upscale = time.perf_counter() - t0
    t0 = time.perf_counter()
    out.save(args.output)
    print(json.dumps({"arch": args.arch, "spandrel_arch": model.architecture.name, "model_scale": model.scale,
                      "params": sum(q.numel() for q in net.parameters()), "load_s": t_load,
                      "upscale_s": t_upscale, "write_s": time.perf_counter() - t0, "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
