"""Writes the Templates-browser thumbnails beside the templates, example_workflows/<name>.jpg, from
what each template makes with the bundled models (the same settings as the template):

- arbscale_upscale: a crop of the x3.7 output, the input (nearest-neighbour) on the left half;
- arbscale_one_latent_many_scales: the x2, x4.5 and 1000x400 decodes of one latent, side by side;
- arbscale_generate_texture: the 256 px and 768 px decodes of one generated latent;
- arbscale_after_stable_diffusion: no Stable Diffusion checkpoint here, so the template's graph, from
  the frontend test's screenshot (ARBSCALE_SCREENSHOTS=DIR pytest tests/test_frontend.py).

    python scripts/make_thumbnails.py [--screenshots DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arbscale_core.checkpoint import load_model
from arbscale_core.cli import DEFAULT_MODELS
from arbscale_core.imageops import load_image
from arbscale_core.pipeline import (decode, denoise, encode_condition, generation_latent_size, output_size,
                                    sr_guide, upscale_tensor)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "example_workflows"
SIZE = 384


def to_pil(x: torch.Tensor) -> Image.Image:
    """[1,3,H,W] in 0..1 -> PIL RGB."""
    return Image.fromarray((x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy())


def centre(im: Image.Image, width: int, height: int) -> Image.Image:
    """The centre width x height of im (smaller where im is)."""
    cw, ch = min(width, im.width), min(height, im.height)
    left, top = (im.width - cw) // 2, (im.height - ch) // 2
    return im.crop((left, top, left + cw, top + ch))


def save(im: Image.Image, name: str) -> None:
    im.convert("RGB").save(OUT / f"{name}.jpg", quality=88)
    print(f"wrote example_workflows/{name}.jpg")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--screenshots", type=Path, help="folder with the frontend test's template screenshots")
    args = p.parse_args()
    torch.manual_seed(0)
    sr = load_model(DEFAULT_MODELS["sr"])
    lr = load_image(ROOT / "assets" / "building_lr.png")
    with torch.no_grad():
        h, w = output_size(*lr.shape[-2:], scale=3.7)
        big = to_pil(upscale_tensor(sr, lr, h, w))
        crop = (w // 2 - SIZE // 2, h // 2 - SIZE // 2, w // 2 + SIZE // 2, h // 2 + SIZE // 2)
        sharp = big.crop(crop)
        near = to_pil(lr).resize((w, h), Image.NEAREST).crop(crop)
        thumb = sharp.copy()
        thumb.paste(near.crop((0, 0, SIZE // 2, SIZE)), (0, 0))
        thumb.paste((255, 255, 255), (SIZE // 2 - 1, 0, SIZE // 2 + 1, SIZE))
        save(thumb, "arbscale_upscale")

        cond = encode_condition(sr, lr)
        latent = denoise(sr, cond)
        guide = sr_guide(sr, lr, cond)
        # native pixels (a centre strip of each), so the three scales show as three magnifications
        tiles = [centre(to_pil(decode(sr, latent, th, tw, guide=guide)), SIZE // 3 - 4, SIZE)
                 for th, tw in [output_size(*lr.shape[-2:], scale=2.0), output_size(*lr.shape[-2:], scale=4.5),
                                (400, 1000)]]
        thumb = Image.new("RGB", (SIZE, SIZE), (24, 24, 24))
        for i, tile in enumerate(tiles):
            thumb.paste(tile, (i * SIZE // 3 + 2, (SIZE - tile.height) // 2))
        save(thumb, "arbscale_one_latent_many_scales")

        gen = load_model(DEFAULT_MODELS["gen"])
        z = denoise(gen, latent_shape=(1, gen.config.latent_channels, *generation_latent_size(gen, 256, 256)), steps=20, eta=0.0, seed=7)
        small, large = to_pil(decode(gen, z, 256, 256)), to_pil(decode(gen, z, 768, 768))
        thumb = large.resize((SIZE, SIZE), Image.LANCZOS)
        thumb.paste(small.resize((SIZE // 3, SIZE // 3), Image.LANCZOS), (8, 8))
        save(thumb, "arbscale_generate_texture")

    if args.screenshots:
        shot = Image.open(args.screenshots / "template_arbscale_after_stable_diffusion.png")
        # the graph part of the 1600x1000 window: past the side and top bars, above the minimap
        graph = shot.crop((64, 78, 1560, 730))
        thumb = Image.new("RGB", (SIZE, SIZE), (32, 32, 32))
        graph.thumbnail((SIZE, SIZE), Image.LANCZOS)
        thumb.paste(graph, (0, (SIZE - graph.height) // 2))
        save(thumb, "arbscale_after_stable_diffusion")


if __name__ == "__main__":
    main()
