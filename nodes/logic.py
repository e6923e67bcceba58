"""Node logic with no ComfyUI import, so the default test suite covers it.

ComfyUI's IMAGE is [B,H,W,C] float 0..1; arbscale_core works on [B,C,H,W]. ``Hooks`` carries what
ComfyUI provides (progress bar, interrupt check) so the same code runs with or without it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from arbscale_core.checkpoint import CheckpointError, load_model
from arbscale_core.model import ArbScaleModel
from arbscale_core.imageops import BandResize
from arbscale_core.pipeline import (MODES, SRGuide, check_ensemble, check_image, check_sampling, check_scale,
                                    decode_bands, default_steps, denoise, encode_condition, ensemble_average,
                                    generation_latent_size, mode_sampling, resize_alpha, scaled_side, size_problem,
                                    sr_guide)

MAX_SIDE = 65536  # width/height widgets allow at most this; the output limit is its pixel count
# RAM an output needs, in IMAGEs: the IMAGE itself, plus what SaveImage / PreviewImage take to write
# it (their float copy and clip: 2.25x the IMAGE measured, 5000x5000 in ComfyUI 0.3.64).
IMAGE_RAM_FACTOR = 3.25


@dataclass
class Hooks:
    """progress(done, total) and check_interrupt() (raises to stop); both optional."""
    progress: Callable[[int, int], None] = lambda done, total: None
    check_interrupt: Callable[[], None] = lambda: None


@dataclass
class ArbLatent:
    """What travels on an ARBSCALE_LATENT socket.

    latent: [B,C,h,w] (scaled) once denoised, else None; cond: the SR condition latent or None;
    guide: what SR decoding takes from the LR image (``pipeline.sr_guide``: the LR image, read by
    LR-reading decoders and the consistency projection, and the anchor), else None;
    source_hw: the LR image's (H, W) for SR, or the requested output (H, W) for generation, so a
    scale has something to multiply.
    """
    model: ArbScaleModel
    source_hw: tuple[int, int]
    cond: torch.Tensor | None = None
    guide: SRGuide | None = None
    latent: torch.Tensor | None = None
    latent_shape: tuple[int, ...] | None = None
    info: dict = field(default_factory=dict)
    alpha: torch.Tensor | None = None  # an RGBA input's alpha [B,1,h,w]: decoding resizes it along


def load(path: str | Path, device: torch.device) -> ArbScaleModel:
    try:
        return load_model(path, device)
    except CheckpointError as exc:
        raise ValueError(f"ArbScale: {exc}") from None


def image_to_bchw(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B,H,W,C] (C 1, 3 or 4) -> [B,C,H,W] float, checked (0..1, finite)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"ArbScale: expected an IMAGE [B,H,W,C] with C 1, 3 or 4, got {shape}")
    x = image.permute(0, 3, 1, 2)
    try:
        check_image(x)
    except ValueError as exc:
        raise ValueError(f"ArbScale: {exc}") from None
    return x.float()


def split_alpha(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B,C,H,W] -> (RGB [B,3,H,W], alpha [B,1,H,W] or None); grey is replicated."""
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1), None
    return x[:, :3], (x[:, 3:] if x.shape[1] == 4 else None)


def bchw_to_image(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


def encode_lr(model: ArbScaleModel, image: torch.Tensor) -> ArbLatent:
    if model.config.task != "sr":
        raise ValueError("ArbScale: Encode LR needs an SR model; this one is a generation model")
    x, alpha = split_alpha(image_to_bchw(image))
    with torch.no_grad():
        cond = encode_condition(model, x)
    return ArbLatent(model=model, source_hw=tuple(x.shape[-2:]), cond=cond,
                     guide=sr_guide(model, x, cond), alpha=alpha)


def empty_latent(model: ArbScaleModel, width: int, height: int, batch: int) -> ArbLatent:
    if model.config.task != "gen":
        raise ValueError("ArbScale: Empty Latent is for generation models; this one is an SR model")
    check_size(width, height)
    if batch < 1:
        raise ValueError(f"ArbScale: batch must be at least 1, got {batch}")
    lh, lw = generation_latent_size(model, height, width)
    return ArbLatent(model=model, source_hw=(height, width),
                     latent_shape=(batch, model.config.latent_channels, lh, lw))


SAMPLING_MODES = [*MODES, "custom"]


def resolve_sampling(model: ArbScaleModel, mode: str, steps: int, eta: float) -> tuple[int, float]:
    """(steps, eta) from the node's widgets. SR models in a named mode (pipeline.MODES): the mode's,
    a steps widget above 0 overriding its steps (the eta widget is for "custom"). "custom", and every
    generation model: the widgets, steps 0 meaning the model file's default."""
    if mode not in SAMPLING_MODES:
        raise ValueError(f"ArbScale: mode must be one of {', '.join(SAMPLING_MODES)}, got {mode!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"ArbScale: steps must be at least 1 (or 0 for the default), got {steps!r}")
    if mode == "custom" or model.config.task != "sr":
        return steps or default_steps(model), eta
    return mode_sampling(model, mode, steps or None, None)


def run_denoise(src: ArbLatent, steps: int, eta: float, seed: int, hooks: Hooks | None = None,
                dtype: torch.dtype | None = None, detail: bool = False) -> ArbLatent:
    """DDIM on an encoded (or empty) latent; ``detail``: its decode uses the model's detail head (the
    "detail" mode, see pipeline.SRGuide)."""
    hooks = hooks or Hooks()
    if steps < 0:
        raise ValueError(f"ArbScale: steps must be at least 1 (or 0 for the model's default), got {steps}")
    try:
        steps, eta, seed = check_sampling(src.model, steps or None, eta, seed)
    except ValueError as exc:
        raise ValueError(f"ArbScale: {exc}") from None

    def callback(i: int, n: int, x0: torch.Tensor) -> None:
        hooks.progress(i, n)
        hooks.check_interrupt()

    hooks.check_interrupt()
    latent = denoise(src.model, src.cond, src.latent_shape, steps=steps, eta=eta, seed=seed, dtype=dtype,
                     callback=callback)
    guide = dataclasses.replace(src.guide, detail=detail) if src.guide is not None else None
    return ArbLatent(model=src.model, source_hw=src.source_hw, cond=src.cond, guide=guide, latent=latent,
                     latent_shape=tuple(latent.shape), info={"steps": steps, "eta": eta, "seed": seed},
                     alpha=src.alpha)


def check_size(width: int, height: int) -> None:
    problem = size_problem(width, height)
    if problem:
        raise ValueError(f"ArbScale: {problem}")


def image_bytes(batch: int, height: int, width: int) -> int:
    """Bytes of a ComfyUI IMAGE [batch,height,width,3] (float32)."""
    return batch * height * width * 3 * 4


def check_image_memory(batch: int, height: int, width: int, free_bytes: int) -> None:
    """Refuse, before any work, an output whose IMAGE (and saving it) would not fit in free RAM.
    The IMAGE lives in RAM whatever the device (bands are decoded there and copied out)."""
    image = image_bytes(batch, height, width)
    need = image * IMAGE_RAM_FACTOR
    if need > free_bytes:
        image_gb = image / 1e9
        raise ValueError(
            f"ArbScale: a {width}x{height} output{f' (batch {batch})' if batch > 1 else ''} needs about "
            f"{need / 1e9:.1f} GB of RAM ({image_gb:.1f} GB for the float32 IMAGE, the rest to save it) but "
            f"{free_bytes / 1e9:.1f} GB is free: decode a smaller size, or use the command line "
            f"(arbscale upscale|generate ... -o OUT.png --size {width}x{height}), which writes large PNGs band by "
            f"band")


def target_size(source_hw: tuple[int, int], scale: float, width: int = 0, height: int = 0) -> tuple[int, int]:
    """(height, width): width and height when both > 0; one of them keeps the source's aspect;
    neither: source x scale."""
    sh, sw = source_hw
    if width > 0 and height > 0:
        h, w = height, width
    elif width > 0:
        h, w = max(1, math.floor(width * sh / sw + 0.5)), width
    elif height > 0:
        h, w = height, max(1, math.floor(height * sw / sh + 0.5))
    else:
        try:
            scale = check_scale(scale)
            h, w = scaled_side(sh, scale), scaled_side(sw, scale)
        except ValueError as exc:
            raise ValueError(f"ArbScale: {exc}") from None
    check_size(w, h)
    return h, w


def run_decode(src: ArbLatent, height: int, width: int, chunk: int, hooks: Hooks | None = None,
               dtype: torch.dtype | None = None, min_chunk: int = 1024, consistency: bool = True) -> torch.Tensor:
    """Decode into an IMAGE [B,height,width,3] float 0..1, band by band, checking for interrupts
    between bands; on out-of-memory the chunk halves (with a warning) down to ``min_chunk``.
    ``consistency``: SR outputs get the LR-consistency projection. hooks.progress(done, total)
    counts decoded rows, those of the consistency pass included."""
    hooks = hooks or Hooks()
    if src.latent is None:
        raise ValueError("ArbScale: this latent is not denoised yet; connect it through Latent Denoise first")
    check_size(width, height)
    if chunk < 1:
        raise ValueError(f"ArbScale: chunk must be positive, got {chunk}")
    guide = src.guide if consistency or src.guide is None else dataclasses.replace(src.guide, consistency=False)

    def progress(done: int, total: int) -> None:
        hooks.progress(done, total)
        hooks.check_interrupt()

    alpha = BandResize(src.alpha, height, width) if src.alpha is not None else None
    out = torch.empty((src.latent.shape[0], height, width, 3 + (alpha is not None)), dtype=torch.float32)
    hooks.check_interrupt()
    for y0, y1, band in decode_bands(src.model, src.latent, height, width, chunk, dtype, min_chunk=min_chunk,
                                     guide=guide, progress=progress):
        if alpha is not None:
            band = torch.cat([band.float().cpu(), alpha.band(y0, y1).clamp(0, 1)], dim=1)
        out[:, y0:y1] = bchw_to_image(band.float()).cpu()
    return out


def run_upscale(model: ArbScaleModel, image: torch.Tensor, height: int, width: int, steps: int, eta: float,
                seed: int, chunk: int, hooks: Hooks | None = None, dtype: torch.dtype | None = None,
                consistency: bool = True, ensemble: int = 1, detail: bool = False) -> torch.Tensor:
    """IMAGE [B,h,w,C] -> IMAGE [B,height,width,C]: encode, denoise, decode, for each of ``ensemble``
    flipped/transposed copies (geometric self-ensemble), averaged. C 4: alpha resized along; C 1:
    returned grey. hooks.progress runs over all of it (each member: its steps, then its decoded
    rows, weighted as ``height`` rows)."""
    hooks = hooks or Hooks()
    try:
        check_ensemble(ensemble)
    except ValueError as exc:
        raise ValueError(f"ArbScale: {exc}") from None
    steps = steps or default_steps(model)
    span = steps + height

    def run(k: int, x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
        denoised = run_denoise(encode_lr(model, bchw_to_image(x)), steps, eta, seed, Hooks(
            progress=lambda i, n: hooks.progress(k * span + i, ensemble * span),
            check_interrupt=hooks.check_interrupt), dtype, detail)
        out = run_decode(denoised, th, tw, chunk, Hooks(
            progress=lambda done, rows: hooks.progress(k * span + steps + done * height // rows, ensemble * span),
            check_interrupt=hooks.check_interrupt), dtype, consistency=consistency)
        return out.permute(0, 3, 1, 2)

    x = image_to_bchw(image)
    rgb, alpha = split_alpha(x)
    out = ensemble_average(run, rgb, height, width, ensemble)
    if x.shape[1] == 1:
        out = out.mean(1, keepdim=True)
    elif alpha is not None:
        out = torch.cat([out, resize_alpha(alpha, height, width)], dim=1)
    return bchw_to_image(out)
