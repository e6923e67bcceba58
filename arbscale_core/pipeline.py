"""The SR and generation pipelines: encode the condition, DDIM in latent space, implicit decode.

Public images are [B,3,H,W] float in 0..1; the model works in -1..1. Diffusion runs on a latent of
LR size x cond_scale / f, so its cost does not depend on the output size; only decoding does, and it
runs in bands of ``chunk`` pixels so memory stays flat.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import numpy as np
import torch

from .diffusion import alphas_cumprod
from .imageops import resize, resize_matrix
from .model import ArbScaleModel
from .sampler import Callback, sample_ddim
from .tiling import tiled_eps

log = logging.getLogger("arbscale")

# Default DDIM steps per task, for model files that do not name their own ("default_steps" in
# their training info: the bundled SR model says 1, see its model card).
DEFAULT_STEPS = {"sr": 20, "gen": 20}
DEFAULT_ETA = 0.0
DEFAULT_CHUNK = 65536
# Latents with a side over DEFAULT_TILE cells (LR inputs over 256 px: the latent has the LR's
# pixel grid) are denoised in overlapping tiles so U-Net memory stays bounded.
DEFAULT_TILE = 256
DEFAULT_TILE_OVERLAP = 32
MIN_TILE = 16      # out-of-memory halving stops here (latent cells)
MIN_CHUNK = 1024   # ... and here (pixels per decode chunk)
MAX_OUTPUT_PIXELS = 2 ** 31  # beyond this even a uint8 canvas is impractical on one machine


def check_scale(scale: float) -> float:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a number, got {scale!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    return value


def scaled_side(side: int, scale: float) -> int:
    """side x scale rounded half up (22.5 -> 23, not Python's banker's 22), at least 1."""
    return max(1, math.floor(side * scale + 0.5))


def output_size(lr_height: int, lr_width: int, scale: float | None = None,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) for a scale or an explicit (width, height); exactly one must be given."""
    if (scale is None) == (size is None):
        raise ValueError("give either a scale or a size (width x height), not both or neither")
    if size is not None:
        width, height = size
        if int(width) != width or int(height) != height or width <= 0 or height <= 0:
            raise ValueError(f"size must be positive whole pixels, got {width}x{height}")
        height, width = int(height), int(width)
    else:
        s = check_scale(scale)
        height, width = scaled_side(lr_height, s), scaled_side(lr_width, s)
    if height * width > MAX_OUTPUT_PIXELS:
        raise ValueError(f"output {width}x{height} is too large (over {MAX_OUTPUT_PIXELS} pixels)")
    return height, width


def default_steps(model: ArbScaleModel) -> int:
    """The model file's own default ("default_steps" in its training info), else the task's."""
    own = getattr(model, "training_info", {}).get("default_steps")
    return int(own) if own else DEFAULT_STEPS[model.config.task]


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def _generator(seed: int) -> torch.Generator:
    # CPU generator for the noise so a seed gives the same latent on every device.
    return torch.Generator("cpu").manual_seed(int(seed))


def _condition_image(model: ArbScaleModel, image: torch.Tensor) -> torch.Tensor:
    """LR image [B,3,h,w] in 0..1 -> the condition image [B,3,ch,cw] in -1..1 (resized)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be [B,3,H,W], got {tuple(image.shape)}")
    device = next(model.parameters()).device
    ch, cw = model.condition_size(*image.shape[-2:])
    return resize(image.to(device, torch.float32) * 2 - 1, ch, cw).clamp(-1, 1)


@torch.no_grad()
def encode_condition(model: ArbScaleModel, image: torch.Tensor) -> torch.Tensor:
    """LR image [B,3,h,w] in 0..1 -> condition latent (resized to the condition size, encoded)."""
    return model.encode(_condition_image(model, image))


@torch.no_grad()
def condition_anchor(model: ArbScaleModel, image: torch.Tensor, cond: torch.Tensor) -> torch.Tensor | None:
    """For SR models with ``config.anchor``: the autoencoder's error on the condition image,
    cond_image - decode(cond), [B,3,ch,cw] in -1..1 units, which decoding adds back (resized to the
    output); None for other models. Its size is the condition's, whatever the output size."""
    if not model.config.anchor:
        return None
    cond_image = _condition_image(model, image)
    return cond_image - model.decode(cond.to(cond_image.device), *cond_image.shape[-2:])


@torch.no_grad()
def denoise(model: ArbScaleModel, cond: torch.Tensor | None = None, latent_shape: tuple[int, ...] | None = None,
            steps: int | None = None, eta: float = DEFAULT_ETA, seed: int = 0,
            dtype: torch.dtype | None = None, callback: Callback | None = None,
            tile: int = DEFAULT_TILE, tile_overlap: int = DEFAULT_TILE_OVERLAP) -> torch.Tensor:
    """DDIM in latent space. SR: ``cond`` [B,C,h,w]; generation: ``latent_shape`` (B,C,h,w).
    ``steps`` None: the model file's default (``default_steps``).
    Latents larger than ``tile`` cells on a side are denoised in blended overlapping tiles.
    Returns the denoised (scaled) latent [B,C,h,w] float32."""
    device = next(model.parameters()).device
    if model.config.task == "sr":
        if cond is None:
            raise ValueError("an SR model needs a condition latent (encode an image first)")
        shape = tuple(cond.shape)
    else:
        if latent_shape is None:
            raise ValueError("a generation model needs a latent shape")
        shape = tuple(latent_shape)
    if tile < 1:
        raise ValueError(f"tile must be at least 1 latent cell, got {tile}")
    steps = default_steps(model) if steps is None else steps
    gen = _generator(seed)
    noise = torch.randn(shape, generator=gen).to(device)
    current = {"tile": tile}

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        def tile_fn(x_tile: torch.Tensor, cond_tile: torch.Tensor | None) -> torch.Tensor:
            with _autocast(device, dtype):
                return model.eps(x_tile, t, cond_tile)

        while True:
            size = current["tile"]
            try:
                return tiled_eps(tile_fn, x, cond, size, min(tile_overlap, size - 1))
            except torch.cuda.OutOfMemoryError:
                smaller = min(size, max(x.shape[-2:])) // 2
                if smaller < MIN_TILE:
                    raise
                current["tile"] = smaller
                log.warning("ArbScale: out of memory while denoising; retrying with %d-cell tiles", smaller)
                _empty_cache(device)

    def x0_callback(i: int, n: int, x0: torch.Tensor) -> None:
        callback(i, n, model.from_diffusion(x0, cond))

    x = sample_ddim(eps_fn, noise, alphas_cumprod(model.config), steps=steps, eta=eta,
                    generator=gen,
                    callback=x0_callback if callback is not None else None)
    return model.from_diffusion(x, cond)


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@torch.no_grad()
def decode_bands(model: ArbScaleModel, latent: torch.Tensor, height: int, width: int,
                 chunk: int = DEFAULT_CHUNK, dtype: torch.dtype | None = None, start_row: int = 0,
                 min_chunk: int = MIN_CHUNK, anchor: torch.Tensor | None = None,
                 ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (y0, y1, rgb [B,3,y1-y0,width] in 0..1) bands of the decoded image from start_row on.
    ``anchor`` (from ``condition_anchor``) is resized to the output band by band and added.
    On out-of-memory the chunk halves (with a logged warning) down to ``min_chunk`` and decoding
    resumes at the first row not yet yielded."""
    device = next(model.parameters()).device
    latent = latent.to(device)
    if anchor is not None:
        anchor = anchor.to(device, torch.float32)
        rows_m = resize_matrix(anchor.shape[-2], height).to(device)        # [height, ch]
        cols_mt = resize_matrix(anchor.shape[-1], width).to(device).T      # [cw, width]
    done = start_row
    while True:
        try:
            for y0, y1, band in model.decode_bands(latent, height, width, chunk, dtype, done):
                if anchor is not None:
                    band = band.float() + rows_m[y0:y1] @ anchor @ cols_mt
                yield y0, y1, ((band + 1) / 2).clamp(0, 1)
                done = y1
            return
        except torch.cuda.OutOfMemoryError:
            if chunk // 2 < min_chunk:
                raise
            chunk //= 2
            log.warning("ArbScale: out of memory while decoding; retrying with chunk %d", chunk)
            _empty_cache(device)


def decode(model: ArbScaleModel, latent: torch.Tensor, height: int, width: int, chunk: int = DEFAULT_CHUNK,
           dtype: torch.dtype | None = None, progress: Callable[[int, int], None] | None = None,
           anchor: torch.Tensor | None = None) -> torch.Tensor:
    """Decode a latent at any size: [B,3,height,width] float in 0..1 (assembled in memory)."""
    bands = []
    for _, y1, band in decode_bands(model, latent, height, width, chunk, dtype, anchor=anchor):
        bands.append(band.cpu())
        if progress:
            progress(y1, height)
    return torch.cat(bands, dim=2)


def decode_uint8_bands(model: ArbScaleModel, latent: torch.Tensor, height: int, width: int,
                       chunk: int = DEFAULT_CHUNK, dtype: torch.dtype | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       anchor: torch.Tensor | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (y0, y1, uint8 [B,y1-y0,width,3]) bands top to bottom: what a streaming writer takes."""
    for y0, y1, band in decode_bands(model, latent, height, width, chunk, dtype, anchor=anchor):
        yield y0, y1, (band * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        if progress:
            progress(y1, height)


def decode_uint8(model: ArbScaleModel, latent: torch.Tensor, height: int, width: int,
                 chunk: int = DEFAULT_CHUNK, dtype: torch.dtype | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 anchor: torch.Tensor | None = None) -> np.ndarray:
    """Decode straight into a uint8 canvas [B,height,width,3], band by band (no full float image)."""
    canvas = np.empty((latent.shape[0], height, width, 3), dtype=np.uint8)
    for y0, y1, band in decode_uint8_bands(model, latent, height, width, chunk, dtype, progress, anchor):
        canvas[:, y0:y1] = band
    return canvas


def upscale_tensor(model: ArbScaleModel, image: torch.Tensor, height: int, width: int,
                   steps: int | None = None, eta: float = DEFAULT_ETA, seed: int = 0,
                   chunk: int = DEFAULT_CHUNK, dtype: torch.dtype | None = None,
                   callback: Callback | None = None) -> torch.Tensor:
    """image [B,3,h,w] in 0..1 -> [B,3,height,width] in 0..1."""
    cond = encode_condition(model, image)
    latent = denoise(model, cond, steps=steps, eta=eta, seed=seed, dtype=dtype, callback=callback)
    return decode(model, latent, height, width, chunk, dtype, anchor=condition_anchor(model, image, cond))


def upscale(model: ArbScaleModel, image: torch.Tensor, scale: float | None = None,
            size: tuple[int, int] | None = None, **kwargs) -> torch.Tensor:
    """Upscale by ``scale`` (any positive float) or to ``size`` = (width, height)."""
    if model.config.task != "sr":
        raise ValueError("this model is a generation model; upscaling needs an SR model")
    height, width = output_size(*image.shape[-2:], scale=scale, size=size)
    return upscale_tensor(model, image, height, width, **kwargs)


def generation_latent_size(model: ArbScaleModel, height: int, width: int, max_side: int = 32) -> tuple[int, int]:
    """The latent for a generated image: the output / f, capped so the longer side is <= max_side
    cells (the implicit decoder supplies the rest of the resolution)."""
    f = model.config.downsample
    h, w = height / f, width / f
    shrink = max(1.0, max(h, w) / max_side)
    return max(1, round(h / shrink)), max(1, round(w / shrink))


def generate(model: ArbScaleModel, size: tuple[int, int], n: int = 1, seed: int = 0,
             steps: int | None = None, eta: float = DEFAULT_ETA, chunk: int = DEFAULT_CHUNK,
             dtype: torch.dtype | None = None, latent_size: tuple[int, int] | None = None,
             callback: Callback | None = None) -> torch.Tensor:
    """Noise -> DDIM -> decode at size = (width, height): [n,3,height,width] in 0..1."""
    if model.config.task != "gen":
        raise ValueError("this model is an SR model; generation needs a generation model")
    height, width = output_size(1, 1, size=size)
    lh, lw = latent_size or generation_latent_size(model, height, width)
    latent = denoise(model, latent_shape=(n, model.config.latent_channels, lh, lw), steps=steps, eta=eta,
                     seed=seed, dtype=dtype, callback=callback)
    return decode(model, latent, height, width, chunk, dtype)
