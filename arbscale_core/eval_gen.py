"""``arbscale eval-gen``: samples of a generation model decoded at several sizes.

Self-SSIM across scales (as in the paper): each sample decoded at every size, brought to the
smallest size, compared by SSIM with its smallest-size decode. Diversity: mean pairwise pixel
distance between samples. FID and LPIPS need pretrained Inception / AlexNet weights fetched from
the internet, which this offline tool cannot do.
"""
from __future__ import annotations

import itertools

import numpy as np
from PIL import Image

from .evaluate import ssim
from .model import ArbScaleModel
from .pipeline import decode_uint8, denoise, generation_latent_size

OFFLINE_NOTE = ("FID and LPIPS (used in the paper) are not computed: both need pretrained networks "
                "(Inception-v3, AlexNet/VGG) whose weights are downloaded at run time, and this tool runs "
                "offline; FID also needs thousands of samples to be meaningful.")


def run(model: ArbScaleModel, sizes: list[tuple[int, int]], samples: int, steps: int, eta: float,
        progress=None) -> tuple[list[dict], dict]:
    """sizes: (width, height) list, the first is the base size for the latent."""
    base_w, base_h = sizes[0]
    lh, lw = generation_latent_size(model, base_h, base_w)
    smallest = min(sizes, key=lambda s: s[0] * s[1])
    rows, images = [], {}
    for seed in range(samples):
        latent = denoise(model, latent_shape=(1, model.config.latent_channels, lh, lw), steps=steps, eta=eta, seed=seed)
        decoded = {size: decode_uint8(model, latent, size[1], size[0])[0] for size in sizes}
        ref = decoded[smallest]
        for size, img in decoded.items():
            small = np.asarray(Image.fromarray(img).resize(smallest, Image.BICUBIC, reducing_gap=None))
            rows.append({"seed": seed, "width": size[0], "height": size[1], "self_ssim": ssim(small, ref)})
        images[seed] = decoded
        progress and progress()
    base = [images[s][sizes[0]].astype(np.float64) for s in images]
    div = [np.abs(a - b).mean() for a, b in itertools.combinations(base, 2)]
    return rows, {"diversity": float(np.mean(div)) if div else 0.0, "images": images}
