"""The SR and generation pipelines: encode the condition, DDIM in latent space, implicit decode.

Public images are [B,3,H,W] float in 0..1; the model works in -1..1. Diffusion runs on a latent of
LR size x cond_scale / f, so its cost does not depend on the output size; only decoding does, and it
runs in bands of ``chunk`` pixels so memory stays flat.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from .diffusion import alphas_cumprod
from .imageops import BandResize, resize, resize_matrix
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
# LR-consistency projection (``lr_correction``): the output is measured on a proxy of at most this
# many times the LR size per side; the correction is iterated this many times; outputs up to this
# many pixels are decoded once and kept (float32, 12 bytes a pixel: up to 192 MB, a 4,096² output)
# rather than decoded twice (a second decode is half the time of a 1024² -> x4 upscale).
CONSISTENCY_PROXY = 4
CONSISTENCY_ITERS = 3
CONSISTENCY_CACHE_PIXELS = 1 << 24


MAX_SEED = 2 ** 64 - 1  # seeds are unsigned 64-bit, as ComfyUI's seed widget


def check_scale(scale: float | str) -> float:
    """A scale factor > 0; text may carry an "x" ("2x", "x2.5")."""
    text = scale
    if isinstance(scale, str):
        text = re.sub(r"^\s*[xX×]|[xX×]\s*$", "", scale.strip())
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a number, got {scale!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    return value


def check_sampling(model: ArbScaleModel, steps: int | None, eta: float, seed: int) -> tuple[int, float, int]:
    """(steps, eta, seed) checked for ``model``; steps None: its default. ValueError names the bad one."""
    limit = model.config.train_timesteps
    steps = default_steps(model) if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= limit:
        raise ValueError(f"steps must be a whole number from 1 to {limit} (the model's training timesteps), "
                         f"got {steps!r}")
    try:
        eta = float(eta)
    except (TypeError, ValueError):
        raise ValueError(f"eta must be a number, got {eta!r}") from None
    if not 0 <= eta <= 1:  # nan fails too
        raise ValueError(f"eta must be between 0 (deterministic) and 1 (DDPM-like), got {eta}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to 2**64-1, got {seed!r}")
    return int(steps), eta, int(seed)


def check_image(image: torch.Tensor) -> None:
    """An image tensor [B,C,H,W] float in 0..1 with C = 1 (grey), 3 (RGB) or 4 (RGBA), finite."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor [B,C,H,W] with C 1, 3 or 4, got {shape}")
    if not image.is_floating_point():
        raise ValueError(f"image must be float in 0..1, got {image.dtype} (divide by 255 first?)")
    if min(image.shape) == 0:
        raise ValueError(f"image is empty: {tuple(image.shape)}")
    lo, hi = image.min().item(), image.max().item()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("image has NaN or infinite values")
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"image must be float in 0..1, got values from {lo:g} to {hi:g}"
                         + (" (divide by 255 first?)" if hi > 2 else ""))


def size_problem(width: int, height: int) -> str | None:
    """Why an output of width x height is refused, or None; web/size.js words it the same."""
    if width < 1 or height < 1:
        return f"output size must be positive, got {width}x{height}"
    if width * height > MAX_OUTPUT_PIXELS:
        return (f"output {width}x{height} is too large: {width * height:,} pixels, over the limit of "
                f"{MAX_OUTPUT_PIXELS:,}")
    return None


def scaled_side(side: int, scale: float) -> int:
    """side x scale rounded half up (22.5 -> 23, not Python's banker's 22), at least 1. ValueError
    when that is beyond any output (so 1e308 never reaches an integer conversion)."""
    value = side * scale + 0.5
    if not value < MAX_OUTPUT_PIXELS:
        raise ValueError(f"scale {scale:g} makes a side of {side * scale:.4g} px, over the output limit of "
                         f"{MAX_OUTPUT_PIXELS:,} pixels")
    return max(1, math.floor(value))


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
    problem = size_problem(width, height)
    if problem:
        raise ValueError(problem)
    return height, width


def default_steps(model: ArbScaleModel) -> int:
    """The model file's own default ("default_steps" in its training info), else the task's."""
    own = getattr(model, "training_info", {}).get("default_steps")
    return int(own) if own else DEFAULT_STEPS[model.config.task]


# Named sampling modes of an SR model. fidelity: the model's default steps (1 for the bundled one),
# eta 0, deterministic: the best PSNR. detail: DDIM with eta > 0 over several steps, so each seed
# samples its own plausible detail (sharper, less faithful; see the model card for what it wins and
# loses), decoded by the model's detail head when it has one (config.detail_head). A model file
# may name its own detail settings ("detail_steps", "detail_eta").
MODES = ("fidelity", "detail")
DETAIL_STEPS = 20
DETAIL_ETA = 0.5


def mode_sampling(model: ArbScaleModel, mode: str = "fidelity", steps: int | None = None,
                  eta: float | None = None) -> tuple[int, float]:
    """(steps, eta) of a named mode; ``steps`` / ``eta`` given (not None) override the mode's."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "fidelity":
        own_steps, own_eta = default_steps(model), DEFAULT_ETA
    else:
        info = getattr(model, "training_info", {})
        own_steps = int(info.get("detail_steps") or DETAIL_STEPS)
        own_eta = float(info.get("detail_eta", DETAIL_ETA)) if info.get("detail_steps") else DETAIL_ETA
    return (own_steps if steps is None else steps), (own_eta if eta is None else eta)


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


@dataclass(frozen=True)
class SRGuide:
    """What SR decoding takes from the LR input besides the latent.

    anchor: the autoencoder's error on the condition image [B,3,ch,cw] (-1..1 units), added to the
    output, or None (see ``condition_anchor``). lr: the LR input [B,3,h,w] in -1..1, or None: what
    LR-reading decoders read (``config.lr_features``) and, with ``consistency``, what decoding
    projects the output onto consistency with (``lr_correction``). detail: decode with the model's
    detail head (``config.detail_head``; the "detail" mode), if it has one."""
    anchor: torch.Tensor | None = None
    lr: torch.Tensor | None = None
    consistency: bool = True
    detail: bool = False

    @property
    def projects(self) -> bool:
        return self.consistency and self.lr is not None


def sr_guide(model: ArbScaleModel, image: torch.Tensor, cond: torch.Tensor,
             consistency: bool = True, detail: bool = False) -> SRGuide | None:
    """The SRGuide for an LR image [B,3,h,w] in 0..1 and its condition latent; None for
    generation models."""
    if model.config.task != "sr":
        return None
    anchor = condition_anchor(model, image, cond)
    lr = image.to(anchor.device if anchor is not None else cond.device, torch.float32) * 2 - 1
    return SRGuide(anchor=anchor, lr=lr, consistency=consistency, detail=detail)


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
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < MIN_TILE:
        raise ValueError(f"tile must be a whole number of at least {MIN_TILE} latent cells (smaller tiles see "
                         f"too little of the image), got {tile!r}")
    steps, eta, seed = check_sampling(model, steps, eta, seed)
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


def _low_res_terms(model: ArbScaleModel, guide: SRGuide | None) -> list[torch.Tensor]:
    """The low-res images decoding adds to the decoder's output, resized: the anchor (anchored
    models), the LR image itself (LR-reading models, whose decoder gives a residual over it)."""
    if guide is None:
        return []
    terms = [guide.anchor] if guide.anchor is not None else []
    if model.reads_lr and guide.lr is not None:
        terms.append(guide.lr)
    return terms


def _raw_bands(model: ArbScaleModel, latent: torch.Tensor, height: int, width: int, chunk: int,
               dtype: torch.dtype | None, start_row: int, min_chunk: int, added: list[torch.Tensor],
               lr: torch.Tensor | None = None, detail: bool = False) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(y0, y1, float32 band in -1..1, not clamped) with the low-res images ``added`` resized and
    added; LR-reading decoders read ``lr`` (the LR image, -1..1; other models ignore it). On
    out-of-memory the chunk halves down to ``min_chunk``; decoding resumes at the first row not yet
    yielded."""
    device = next(model.parameters()).device
    latent = latent.to(device)
    lr = lr.to(device, torch.float32) if lr is not None else None
    low_res = [BandResize(a, height, width, device) for a in added]
    done = start_row
    while True:
        try:
            for y0, y1, band in model.decode_bands(latent, height, width, chunk, dtype, done, lr=lr, detail=detail):
                band = band.float()
                for extra in low_res:
                    band = band + extra.band(y0, y1)
                yield y0, y1, band
                done = y1
            return
        except torch.cuda.OutOfMemoryError:
            if chunk // 2 < min_chunk:
                raise
            chunk //= 2
            log.warning("ArbScale: out of memory while decoding; retrying with chunk %d", chunk)
            _empty_cache(device)


def _consistency_proxy(height: int, width: int, lr_hw: tuple[int, int]) -> tuple[int, int, bool]:
    """(rows, columns) of the decode the LR-consistency residual is measured on, and whether that
    decode is the output itself and small enough to keep (CONSISTENCY_CACHE_PIXELS)."""
    ph, pw = min(height, CONSISTENCY_PROXY * lr_hw[0]), min(width, CONSISTENCY_PROXY * lr_hw[1])
    return ph, pw, (ph, pw) == (height, width) and height * width <= CONSISTENCY_CACHE_PIXELS


@torch.no_grad()
def lr_correction(model: ArbScaleModel, latent: torch.Tensor, height: int, width: int, guide: SRGuide,
                  chunk: int = DEFAULT_CHUNK, dtype: torch.dtype | None = None, min_chunk: int = MIN_CHUNK,
                  progress: Callable[[int, int], None] | None = None,
                  ) -> tuple[torch.Tensor, list[tuple[int, int, torch.Tensor]] | None]:
    """Back-projection onto the LR input: a correction c [B,3,h,w] (LR size, -1..1 units) such
    that output + resize(c), brought back to the LR size, gives (nearly) the LR image.

    The decoded output is measured on a proxy of at most CONSISTENCY_PROXY x the LR size per side
    (bringing it down to the LR size averages away what the proxy cannot hold), so the cost is
    bounded at any scale; up to that scale the proxy is the output itself. The correction is
    iterated CONSISTENCY_ITERS times at the proxy size. Returns (c, the decoded output's bands
    [(y0, y1, [B,3,y1-y0,W] clamped to -1..1)] when the proxy is the output and at most
    CONSISTENCY_CACHE_PIXELS, so it need not be decoded twice; else None).
    ``progress(rows, proxy height)`` after each band."""
    lr = guide.lr.to(next(model.parameters()).device, torch.float32)
    h, w = lr.shape[-2:]
    ph, pw, keep = _consistency_proxy(height, width, (h, w))
    down_rows = resize_matrix(ph, h).to(lr.device)      # [h, ph]
    down_cols_t = resize_matrix(pw, w).to(lr.device).T  # [pw, w]
    bands = []
    measured = torch.zeros_like(lr)
    for y0, y1, band in _raw_bands(model, latent, ph, pw, chunk, dtype, 0, min_chunk,
                                   _low_res_terms(model, guide), lr, guide.detail):
        band = band.clamp(-1, 1)  # what the output holds
        # columns first: [rows, pw] @ [pw, w] then [h, rows] @ [rows, w]; the other order makes an
        # [h, pw] product per band, 50x the work at a 4,096-px output (35 s of a 1024² -> x4 upscale)
        measured += down_rows[:, y0:y1] @ (band @ down_cols_t)
        if keep:
            bands.append((y0, y1, band))
        if progress:
            progress(y1, ph)
    # each correction step leaves the residual r - down(up(r)) for the next
    up_rows, up_cols_t = resize_matrix(h, ph).to(lr.device), resize_matrix(w, pw).to(lr.device).T
    round_trip_rows, round_trip_cols_t = down_rows @ up_rows, up_cols_t @ down_cols_t   # [h,h], [w,w]
    residual = lr - measured
    correction = torch.zeros_like(lr)
    for _ in range(CONSISTENCY_ITERS):
        correction = correction + residual
        residual = residual - round_trip_rows @ residual @ round_trip_cols_t
    return correction, (bands if keep else None)


@torch.no_grad()
def decode_bands(model: ArbScaleModel, latent: torch.Tensor, height: int, width: int,
                 chunk: int = DEFAULT_CHUNK, dtype: torch.dtype | None = None, start_row: int = 0,
                 min_chunk: int = MIN_CHUNK, guide: SRGuide | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (y0, y1, rgb [B,3,y1-y0,width] in 0..1) bands of the decoded image from start_row on.

    ``guide`` (from ``sr_guide``): its anchor (and, for LR-reading models, its LR image: their
    decoder gives a residual over it) is resized to the output band by band and added; with
    its LR image the output is first measured and corrected to be consistent with it
    (``lr_correction``; not for outputs smaller than the LR on a side). ``progress(done, total)``
    counts the rows of both passes. On out-of-memory the chunk halves (with a logged warning) down
    to ``min_chunk`` and decoding resumes at the first row not yet yielded."""
    added = _low_res_terms(model, guide)
    measure_rows = 0
    if guide is not None and guide.projects and height >= guide.lr.shape[-2] and width >= guide.lr.shape[-1]:
        measure_rows, _, decodes_once = _consistency_proxy(height, width, tuple(guide.lr.shape[-2:]))
        total = measure_rows + (0 if decodes_once else height)
        correction, kept = lr_correction(model, latent, height, width, guide, chunk, dtype, min_chunk,
                                         progress and (lambda done, _: progress(done, total)))
        if kept is not None:
            fix = BandResize(correction, height, width, correction.device)
            for y0, y1, band in kept:
                if y1 > start_row:
                    y0, band = max(y0, start_row), band[:, :, max(0, start_row - y0):]
                    yield y0, y1, ((band + fix.band(y0, y1) + 1) / 2).clamp(0, 1)
            return
        added.append(correction)
    for y0, y1, band in _raw_bands(model, latent, height, width, chunk, dtype, start_row, min_chunk, added,
                                   guide.lr if guide is not None else None, guide is not None and guide.detail):
        yield y0, y1, ((band + 1) / 2).clamp(0, 1)
        if progress:
            progress(measure_rows + y1, measure_rows + height)


def decode(model: ArbScaleModel, latent: torch.Tensor, height: int, width: int, chunk: int = DEFAULT_CHUNK,
           dtype: torch.dtype | None = None, progress: Callable[[int, int], None] | None = None,
           guide: SRGuide | None = None) -> torch.Tensor:
    """Decode a latent at any size: [B,3,height,width] float in 0..1 (assembled in memory)."""
    return torch.cat([band.cpu() for _, _, band in decode_bands(model, latent, height, width, chunk, dtype,
                                                                 guide=guide, progress=progress)], dim=2)


def decode_uint8_bands(model: ArbScaleModel, latent: torch.Tensor, height: int, width: int,
                       chunk: int = DEFAULT_CHUNK, dtype: torch.dtype | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       guide: SRGuide | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (y0, y1, uint8 [B,y1-y0,width,3]) bands top to bottom: what a streaming writer takes."""
    for y0, y1, band in decode_bands(model, latent, height, width, chunk, dtype, guide=guide, progress=progress):
        yield y0, y1, (band * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def decode_uint8(model: ArbScaleModel, latent: torch.Tensor, height: int, width: int,
                 chunk: int = DEFAULT_CHUNK, dtype: torch.dtype | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 guide: SRGuide | None = None) -> np.ndarray:
    """Decode straight into a uint8 canvas [B,height,width,3], band by band (no full float image)."""
    canvas = np.empty((latent.shape[0], height, width, 3), dtype=np.uint8)
    for y0, y1, band in decode_uint8_bands(model, latent, height, width, chunk, dtype, progress, guide):
        canvas[:, y0:y1] = band
    return canvas


# The dihedral transforms of the image plane, as (transpose, flip rows, flip columns); the first 2
# and the first 4 mix transposed and untransposed copies.
DIHEDRAL = ((False, False, False), (True, False, False), (False, True, True), (True, True, True),
            (False, False, True), (False, True, False), (True, False, True), (True, True, False))
ENSEMBLE_SIZES = (1, 2, 4, 8)


def dihedral(x: torch.Tensor, t: tuple[bool, bool, bool], inverse: bool = False) -> torch.Tensor:
    """Apply (or undo) one of DIHEDRAL to the last two dimensions of x."""
    transpose, flip_rows, flip_cols = t
    flips = [d for d, f in ((-2, flip_rows), (-1, flip_cols)) if f]
    if not inverse:
        x = x.transpose(-2, -1) if transpose else x
        return x.flip(flips) if flips else x
    x = x.flip(flips) if flips else x
    return x.transpose(-2, -1) if transpose else x


def check_ensemble(ensemble: int) -> int:
    if ensemble not in ENSEMBLE_SIZES:
        raise ValueError(f"ensemble must be one of {ENSEMBLE_SIZES}, got {ensemble}")
    return ensemble


def ensemble_average(run: Callable[[int, torch.Tensor, int, int], torch.Tensor], image: torch.Tensor,
                     height: int, width: int, ensemble: int) -> torch.Tensor:
    """Geometric self-ensemble: ``run(k, x, out_height, out_width)`` -> [B,3,out_height,out_width]
    on the k-th of the first ``ensemble`` DIHEDRAL copies x of image [B,3,h,w] (sides swapped for
    transposed copies); each result is transformed back, and their mean returned."""
    check_ensemble(ensemble)
    total = None
    for k, t in enumerate(DIHEDRAL[:ensemble]):
        th, tw = (width, height) if t[0] else (height, width)
        out = dihedral(run(k, dihedral(image, t), th, tw), t, inverse=True)
        total = out if total is None else total + out
    return total / ensemble


def upscale_tensor(model: ArbScaleModel, image: torch.Tensor, height: int, width: int,
                   steps: int | None = None, eta: float = DEFAULT_ETA, seed: int = 0,
                   chunk: int = DEFAULT_CHUNK, dtype: torch.dtype | None = None,
                   callback: Callback | None = None, consistency: bool = True, ensemble: int = 1,
                   tile: int = DEFAULT_TILE, detail: bool = False) -> torch.Tensor:
    """image [B,3,h,w] in 0..1 -> [B,3,height,width] in 0..1. ``consistency``: correct the output
    so that brought back to the LR size it gives the input (``lr_correction``). ``ensemble`` (1, 2, 4
    or 8): average that many runs on flipped / transposed copies of the input (geometric
    self-ensemble: higher PSNR for that many times the work; the output is assembled in memory).
    ``detail``: decode with the model's detail head (see SRGuide)."""
    check_chunk(chunk)

    def run(k: int, x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
        cond = encode_condition(model, x)
        latent = denoise(model, cond, steps=steps, eta=eta, seed=seed, dtype=dtype, callback=callback, tile=tile)
        return decode(model, latent, th, tw, chunk, dtype, guide=sr_guide(model, x, cond, consistency, detail))

    return ensemble_average(run, image, height, width, ensemble)


def upscale(model: ArbScaleModel, image: torch.Tensor, scale: float | None = None,
            size: tuple[int, int] | None = None, mode: str = "fidelity", **kwargs) -> torch.Tensor:
    """Upscale image [B,C,h,w] in 0..1 by ``scale`` (any positive float) or to ``size`` = (width,
    height): [B,C,height,width] in 0..1. C = 3 (RGB), 1 (grey: upscaled as RGB, returned grey) or
    4 (RGBA: the colour through the model, alpha resized with antialiased bicubic). ``mode``
    ("fidelity" or "detail", see MODES) sets steps and eta unless they are passed.
    kwargs: those of ``upscale_tensor``. ValueError names any bad argument."""
    if model.config.task != "sr":
        raise ValueError("this model is a generation model; upscaling needs an SR model")
    kwargs["steps"], kwargs["eta"] = mode_sampling(model, mode, kwargs.get("steps"), kwargs.get("eta"))
    kwargs.setdefault("detail", mode == "detail")
    check_image(image)
    height, width = output_size(*image.shape[-2:], scale=scale, size=size)
    channels = image.shape[1]
    rgb = image[:, :1].expand(-1, 3, -1, -1) if channels == 1 else image[:, :3]
    out = upscale_tensor(model, rgb.clamp(0, 1), height, width, **kwargs)
    if channels == 1:
        return out.mean(1, keepdim=True)
    if channels == 4:
        return torch.cat([out, resize_alpha(image[:, 3:], height, width).to(out.device)], dim=1)
    return out


def resize_alpha(alpha: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Alpha [B,1,h,w] in 0..1 -> [B,1,height,width] (antialiased bicubic, clamped): the model is
    trained on colour, so transparency follows the image by plain resizing."""
    return resize(alpha.float(), height, width).clamp(0, 1)


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
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number >= 1, got {n!r}")
    check_chunk(chunk)
    height, width = output_size(1, 1, size=size)
    lh, lw = latent_size or generation_latent_size(model, height, width)
    latent = denoise(model, latent_shape=(n, model.config.latent_channels, lh, lw), steps=steps, eta=eta,
                     seed=seed, dtype=dtype, callback=callback)
    return decode(model, latent, height, width, chunk, dtype)


def check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a whole number of pixels >= 1, got {chunk!r}")
    return int(chunk)
