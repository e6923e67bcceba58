"""Image conversion and resizing shared by the pipeline, training and evaluation."""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
# Outputs larger than this many pixels are streamed to PNG row by row instead of assembled in a
# uint8 canvas (64 Mpx = 192 MB as uint8; a 500x output of a 64 px image would need 3 GB).
STREAM_PIXELS = 1 << 26
# Inputs over this many pixels are refused from the file's header, before decoding: the diffusion
# runs at the input's size (an 8192x8192 input is already a 2048x2048 latent), and a small file can
# claim a huge image (a decompression bomb). Below Pillow's own bomb warning (89 Mpx).
MAX_INPUT_PIXELS = 1 << 26


def resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bicubic resize of [B,C,H,W] (any range; not clamped)."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bicubic", antialias=True, align_corners=False)


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] matrix M with M @ v == resize() of v along one axis (resize is separable and
    linear), so a band of rows of a resized image costs only that band: M[rows] @ img @ Mx.T."""
    eye = torch.eye(n_in).view(1, 1, n_in, n_in)
    return resize(eye, n_out, n_in)[0, 0]


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as RGB [1,3,H,W] float in 0..1. Raises ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"input not found: {path}")
    try:
        with Image.open(path) as im:
            check_input_pixels(path, *im.size)
            im.load()
            # upright, as image viewers show it (EXIF orientation), then RGB
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit: refused in Image.open
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed[1]):,}" if claimed else f"over {2 * Image.MAX_IMAGE_PIXELS:,}"
        raise ValueError(f"{path}: its header claims {size} pixels, over the input limit of "
                         f"{MAX_INPUT_PIXELS:,} (a decompression bomb, or downscale it first)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    return from_uint8(np.asarray(rgb, dtype=np.uint8))


def check_input_pixels(path: str | os.PathLike, width: int, height: int) -> None:
    if width * height > MAX_INPUT_PIXELS:
        raise ValueError(f"{path}: {width}x{height} is {width * height:,} pixels, over the input limit of "
                         f"{MAX_INPUT_PIXELS:,} (downscale it first)")


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] -> [1,3,H,W] float in 0..1 (a copy: the array is left alone)."""
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in -1..1 -> uint8 [B,H,W,3] (rounded, clamped)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_image(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write uint8 [H,W,3] atomically; the format follows the suffix (PNG when unknown)."""
    from .fileio import atomic_path

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format=fmt)


def save_png_rows(path: str | os.PathLike, height: int, width: int, bands: Iterable[np.ndarray]) -> None:
    """Stream uint8 bands [rows,width,3] (top to bottom, ``height`` rows in all) into a PNG,
    atomically; only one band is held in memory at a time."""
    import png  # pypng: writes rows from an iterator, so the image never exists whole

    from .fileio import atomic_path

    def rows():
        for band in bands:
            if band.dtype != np.uint8 or band.ndim != 3 or band.shape[1:] != (width, 3):
                raise ValueError(f"bands must be uint8 [rows,{width},3], got {band.dtype} {band.shape}")
            for row in band:
                yield row.tobytes()

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        png.Writer(width, height, greyscale=False, bitdepth=8, compression=6).write(fh, rows())
