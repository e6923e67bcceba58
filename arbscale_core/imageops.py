"""Image conversion and resizing shared by the pipeline, training and evaluation."""
from __future__ import annotations

import io
import os
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import png  # pypng: reads 16-bit colour PNGs and writes PNGs row by row
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

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


@dataclass(frozen=True)
class PixelFormat:
    """How an image's pixels are stored: greyscale or RGB, with or without alpha, 8 or 16 bits a
    channel, and the ICC profile its values are in (None: sRGB)."""
    grey: bool = False
    alpha: bool = False
    bits: int = 8
    icc_profile: bytes | None = None

    @property
    def channels(self) -> int:
        return (1 if self.grey else 3) + self.alpha

    @property
    def mode(self) -> str:
        return ("L" if self.grey else "RGB") + ("A" if self.alpha else "")


@dataclass(frozen=True)
class SourceImage:
    """An input image as the pipeline takes it: rgb [1,3,H,W] float 0..1 (greyscale replicated),
    alpha [1,1,H,W] float 0..1 or None, the format it came in (outputs keep it), and notes saying
    what reading it changed (said to the user)."""
    rgb: torch.Tensor
    alpha: torch.Tensor | None
    format: PixelFormat
    notes: tuple[str, ...] = ()


class BandResize:
    """An image [B,C,lh,lw] resized (``resize``) to height x width band by band: a band of rows of
    resize(img) costs only that band, rows_m[y0:y1] @ img @ cols_mt."""

    def __init__(self, image: torch.Tensor, height: int, width: int, device: torch.device | str = "cpu"):
        self.image = image.to(device, torch.float32)
        self.rows_m = resize_matrix(image.shape[-2], height).to(device)      # [height, lh]
        self.cols_mt = resize_matrix(image.shape[-1], width).to(device).T    # [lw, width]

    def band(self, y0: int, y1: int) -> torch.Tensor:
        return self.rows_m[y0:y1] @ self.image @ self.cols_mt


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as RGB [1,3,H,W] float in 0..1 (see ``read_image`` for alpha, bit
    depth and colour profile). Raises ValueError naming the file."""
    return read_image(path).rgb


def read_image(path: str | os.PathLike) -> SourceImage:
    """Read an image file: upright as viewers show it (EXIF orientation), 16-bit kept, alpha kept,
    palettes expanded, 1-bit and CMYK converted (said in ``notes``). Refuses over MAX_INPUT_PIXELS
    from the header, before decoding. Raises ValueError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"input not found: {path}")
    try:
        with Image.open(path) as im:
            check_input_pixels(path, *im.size)
            im.load()
            orientation = im.getexif().get(0x0112, 1)
            pixels, fmt, notes = _pixels(path, im)
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit: refused in Image.open
        raise _bomb_error(path, exc) from None
    except (UnidentifiedImageError, OSError, SyntaxError, png.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    pixels = orient(pixels, orientation)
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]  # [1,C,H,W] float 0..1
    colour = x[:, :1].expand(-1, 3, -1, -1) if fmt.grey else x[:, :3]
    alpha = x[:, -1:] if fmt.alpha else None
    return SourceImage(rgb=colour.contiguous(), alpha=alpha, format=fmt, notes=tuple(notes))


# EXIF orientation -> the numpy operation that makes an [H,W,C] array upright (as Pillow's
# ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
# 7 transverse, 8 rotate 90 counter-clockwise).
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """[H,W,C] as stored -> upright for an EXIF orientation (1..8; anything else: unchanged)."""
    return _ORIENT.get(orientation, lambda a: a)(pixels)


def _png_bitdepth(path: Path) -> int:
    with open(path, "rb") as fh:
        head = fh.read(26)  # signature, IHDR length and tag, width, height, bit depth, colour type
    return head[24] if len(head) == 26 and head[12:16] == b"IHDR" else 8


def _pixels(path: Path, im: Image.Image) -> tuple[np.ndarray, PixelFormat, list[str]]:
    """float32 [H,W,C] in 0..1 (C: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), its format and notes."""
    icc = im.info.get("icc_profile") or None
    notes: list[str] = []
    mode = im.mode
    if im.format == "PNG" and _png_bitdepth(path) == 16:
        # Pillow reduces 16-bit colour PNGs to 8 bits; pypng keeps every bit (tRNS becomes alpha)
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        planes = info["planes"]
        array = np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, planes)
        fmt = PixelFormat(grey=planes <= 2, alpha=planes in (2, 4), bits=16, icc_profile=icc)
        return array.astype(np.float32) / 65535, fmt, notes
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(im).astype(np.float32)
        if array.max(initial=0) > 65535 or array.min(initial=0) < 0:
            notes.append("32-bit integer values clipped to the 16-bit range")
        return np.clip(array, 0, 65535)[..., None] / 65535, PixelFormat(grey=True, bits=16, icc_profile=icc), notes
    if mode == "F":
        notes.append("32-bit float greyscale read as 0..1 (clipped) and written as 16-bit")
        return np.clip(np.asarray(im, np.float32), 0, 1)[..., None], PixelFormat(grey=True, bits=16), notes
    if mode == "CMYK":
        im, how = _cmyk_to_srgb(im, icc)
        notes.append(f"CMYK converted to sRGB {how}")
        icc = None
    elif mode == "1":
        im = im.convert("L")
        notes.append("1-bit image written as 8-bit greyscale")
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        target = "RGBA" if "A" in mode or "a" in mode else "RGB"
        im = im.convert(target)
        if mode not in ("RGBX", "RGBa", "YCbCr"):
            notes.append(f"{mode} converted to {target}")
    if im.format == "TIFF" and im.mode in ("RGB", "RGBA") and 16 in tuple(getattr(im, "tag_v2", {}).get(258, ())):
        notes.append("16-bit colour TIFF read as 8 bits a channel (use a 16-bit PNG to keep 16)")
    array = np.asarray(im, dtype=np.uint8)
    array = array[..., None] if array.ndim == 2 else array
    fmt = PixelFormat(grey=im.mode in ("L", "LA"), alpha=im.mode in ("LA", "RGBA"), bits=8, icc_profile=icc)
    return array.astype(np.float32) / 255, fmt, notes


def _cmyk_to_srgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, str]:
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB"), \
                "through its ICC profile"
        except Exception:  # a broken or unsupported profile: fall back to the plain conversion
            pass
    return im.convert("RGB"), "without a colour profile (approximate colours)"


def _bomb_error(path: Path, exc: Exception) -> ValueError:
    claimed = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(claimed[1]):,}" if claimed else f"over {2 * Image.MAX_IMAGE_PIXELS:,}"
    return ValueError(f"{path}: its header claims {size} pixels, over the input limit of "
                      f"{MAX_INPUT_PIXELS:,} (a decompression bomb, or downscale it first)")


def check_input_pixels(path: str | os.PathLike, width: int, height: int) -> None:
    if width * height > MAX_INPUT_PIXELS:
        raise ValueError(f"{path}: {width}x{height} is {width * height:,} pixels, over the input limit of "
                         f"{MAX_INPUT_PIXELS:,} (downscale it first)")


def peek_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as viewers show it, from the header only (no decoding)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
    except Image.DecompressionBombError as exc:
        raise _bomb_error(path, exc) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    check_input_pixels(path, width, height)
    return width, height


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] -> [1,3,H,W] float in 0..1 (a copy: the array is left alone)."""
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in -1..1 -> uint8 [B,H,W,3] (rounded, clamped)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


# Output containers: Pillow's format name, the longest side it can hold, whether it keeps alpha,
# 16 bits and an ICC profile. Only PNG keeps 16 bits (Pillow writes no 16-bit colour elsewhere).
CONTAINERS = {
    ".png": ("PNG", 2 ** 31 - 1, True, True, True),
    ".jpg": ("JPEG", 65535, False, False, True), ".jpeg": ("JPEG", 65535, False, False, True),
    ".webp": ("WEBP", 16383, True, False, True),
    ".bmp": ("BMP", 2 ** 31 - 1, True, False, False),
    ".tif": ("TIFF", 2 ** 31 - 1, True, False, True), ".tiff": ("TIFF", 2 ** 31 - 1, True, False, True),
}
DEFAULT_QUALITY = 95


def output_format(source: PixelFormat, path: str | os.PathLike, width: int,
                  height: int) -> tuple[PixelFormat, list[str]]:
    """What an output at ``path`` keeps of the source's format, and notes saying what it cannot
    keep. Raises ValueError when the container cannot hold the size or is not an image suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONTAINERS:
        raise ValueError(f"output {path} needs an image suffix: {', '.join(sorted(CONTAINERS))}")
    name, max_side, alpha, bits16, icc = CONTAINERS[suffix]
    if max(width, height) > max_side:
        raise ValueError(f"output {width}x{height} is too large for {name}, which holds at most {max_side:,} px a "
                         f"side; write a .png")
    notes = []
    fmt = source
    if source.alpha and not alpha:
        notes.append(f"alpha dropped: {name} has no alpha channel (write .png or .webp to keep it)")
        fmt = replace(fmt, alpha=False)
    if source.bits == 16 and not bits16:
        notes.append("written as 8 bits a channel: only PNG keeps the input's 16")
        fmt = replace(fmt, bits=8)
    if source.icc_profile and not icc:
        notes.append(f"the input's ICC profile is not kept ({name} cannot hold one)")
        fmt = replace(fmt, icc_profile=None)
    return fmt, notes


def pixels_from_rgb(rgb: torch.Tensor, alpha: torch.Tensor | None, fmt: PixelFormat) -> np.ndarray:
    """rgb [B,3,h,w] and alpha [B,1,h,w] (or None), floats in 0..1 -> [B,h,w,fmt.channels]
    uint8 or uint16, rounded; greyscale by the ITU-R 601 weights Pillow's "L" uses."""
    x = rgb.float().clamp(0, 1)
    if fmt.grey:
        x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if fmt.alpha:
        if alpha is None:
            raise ValueError("this format has alpha but no alpha was given")
        x = torch.cat([x, alpha.float().clamp(0, 1).to(x.device)], dim=1)
    top = 65535 if fmt.bits == 16 else 255
    dtype = torch.int32 if fmt.bits == 16 else torch.uint8
    out = (x * top).round().to(dtype).permute(0, 2, 3, 1).cpu().numpy()
    return out.astype(np.uint16) if fmt.bits == 16 else out


def save_image(array: np.ndarray, path: str | os.PathLike, fmt: PixelFormat | None = None,
               quality: int = DEFAULT_QUALITY) -> None:
    """Write [H,W,C] uint8 (or uint16 for a 16-bit ``fmt``) atomically; the container follows the
    suffix (PNG when unknown). ``fmt`` (default: 8-bit RGB) as ``output_format`` gave it;
    ``quality`` 1..100 for JPEG and WebP (WebP at 100: lossless)."""
    from .fileio import atomic_path

    path = Path(path)
    fmt = fmt or PixelFormat()
    container = CONTAINERS.get(path.suffix.lower(), ("PNG",))[0]
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] != fmt.channels:
        raise ValueError(f"expected {fmt.channels} channels for {fmt.mode}, got {array.shape[-1]}")
    height, width = array.shape[:2]
    if container == "PNG" and fmt.bits == 16:
        save_png_rows(path, height, width, [array], fmt)
        return
    options: dict = {"icc_profile": fmt.icc_profile} if fmt.icc_profile else {}
    if container == "JPEG":
        options.update(quality=quality, subsampling=0 if quality >= 90 else 2)  # 4:4:4 keeps fine colour detail
    elif container == "WEBP":
        options.update(quality=quality, lossless=quality >= 100, method=4)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array, mode=fmt.mode)
    if container in ("WEBP", "BMP") and fmt.mode == "LA":
        image = image.convert("RGBA")  # neither holds grey + alpha
    with atomic_path(path) as tmp:
        image.save(tmp, format=container, **options)


class _PNGWriter(png.Writer):
    """pypng's writer plus an iCCP chunk (the colour profile), which it does not write itself."""

    def __init__(self, *args, icc_profile: bytes | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.icc_profile = icc_profile

    def write_preamble(self, outfile):
        super().write_preamble(outfile)
        if self.icc_profile:
            png.write_chunk(outfile, b"iCCP", b"icc\0\0" + zlib.compress(self.icc_profile))


def save_png_rows(path: str | os.PathLike, height: int, width: int, bands: Iterable[np.ndarray],
                  fmt: PixelFormat | None = None) -> None:
    """Stream bands [rows,width,C] (uint8, or uint16 for a 16-bit ``fmt``; top to bottom,
    ``height`` rows in all) into a PNG, atomically; only one band is held in memory at a time."""
    from .fileio import atomic_path

    fmt = fmt or PixelFormat()
    dtype, big_endian = (np.uint16, ">u2") if fmt.bits == 16 else (np.uint8, "u1")

    def rows():
        for band in bands:
            band = band[..., None] if band.ndim == 2 else band
            if band.dtype != dtype or band.ndim != 3 or band.shape[1:] != (width, fmt.channels):
                raise ValueError(f"bands must be {np.dtype(dtype).name} [rows,{width},{fmt.channels}], "
                                 f"got {band.dtype} {band.shape}")
            for row in band:
                yield row.astype(big_endian).tobytes()  # packed: PNG's big-endian samples

    writer = _PNGWriter(width, height, greyscale=fmt.grey, alpha=fmt.alpha, bitdepth=fmt.bits, compression=6,
                        icc_profile=fmt.icc_profile)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer.write_packed(fh, rows())
