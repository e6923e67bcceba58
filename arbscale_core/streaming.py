"""Band-by-band inference of the encoder's full-resolution levels, exact, in flat memory.

The condition image is the LR resized by cond_scale (4): a 512² input means a 2048² image, whose
32-channel activations take 512 MB each; the plain forward holds 4-5 of them (2.4 GB peak). Here
each layer is a ``Rows``: a function giving any band of its output rows, computed from the band of
its input rows it needs (3x3 convolutions widen the band by their padding). GroupNorm needs the
statistics of its whole input, so each norm first runs one pass over all bands of its input to
collect them (float64 sums), then normalises band by band with them: the same function as the plain
forward, to float32 rounding, with only bands and the downsampled level outputs in memory, for the
cost of computing each ResBlock's first convolution twice.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ResBlock, channels_last

# Activation elements per band (about 16 MB of float32): rows = BAND_ELEMENTS // (channels x width).
BAND_ELEMENTS = 1 << 22


class Rows:
    """A layer's output [B,C,height,W], computed a band of rows at a time: ``rows(a, b)`` ->
    [B,C,b-a,W] for 0 <= a < b <= height. ``keep``: remember the last band computed and serve
    requests inside it from it (a ResBlock asks its input for the same rows twice: conv and skip)."""

    def __init__(self, fn: Callable[[int, int], torch.Tensor], height: int, keep: bool = True):
        self.fn, self.height, self.keep = fn, height, keep
        self._last: tuple[int, int, torch.Tensor] | None = None

    def __call__(self, a: int, b: int) -> torch.Tensor:
        if self._last is not None and self._last[0] <= a and b <= self._last[1]:
            lo, _, band = self._last
            return band[:, :, a - lo:b - lo]
        band = self.fn(a, b)
        if self.keep:
            self._last = (a, b, band)
        return band


def tensor_rows(x: torch.Tensor) -> Rows:
    return Rows(lambda a, b: x[:, :, a:b], x.shape[-2], keep=False)


def band_rows(channels: int, width: int) -> int:
    return max(8, BAND_ELEMENTS // max(1, channels * width))


def bands(height: int, rows: int):
    for a in range(0, height, rows):
        yield a, min(height, a + rows)


def materialize(src: Rows, rows: int) -> torch.Tensor:
    """The whole output of ``src``, band by band, channels last."""
    out = None
    for a, b in bands(src.height, rows):
        band = src(a, b)
        if out is None:
            out = torch.empty((band.shape[0], band.shape[1], src.height, band.shape[3]), dtype=band.dtype,
                              device=band.device).contiguous(memory_format=torch.channels_last)
        out[:, :, a:b] = band
    return out


def conv_rows(conv: nn.Conv2d, src: Rows, pad: tuple[int, int, int, int] | None = None) -> Rows:
    """``conv`` over ``src`` with zero padding (top, bottom, left, right) (default: the conv's own)."""
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        raise ValueError("conv_rows handles plain convolutions only")
    kh, stride = conv.kernel_size[0], conv.stride[0]
    top, bottom, left, right = pad or (conv.padding[0], conv.padding[0], conv.padding[1], conv.padding[1])
    height = (src.height + top + bottom - kh) // stride + 1

    def fn(a: int, b: int) -> torch.Tensor:
        lo, hi = a * stride - top, (b - 1) * stride - top + kh  # input rows needed, unpadded coordinates
        x = src(max(lo, 0), min(hi, src.height))
        x = F.pad(x, (left, right, max(0, -lo), max(0, hi - src.height)))
        return F.conv2d(channels_last(x), conv.weight, conv.bias, stride=conv.stride)

    return Rows(fn, height)


def group_norm_rows(norm: nn.GroupNorm, src: Rows, rows: int) -> Rows:
    """GroupNorm of ``src`` with the statistics of all of it (one pass over its bands first)."""
    sums = squares = None
    count = 0
    for a, b in bands(src.height, rows):
        x = src(a, b).double()
        s, q = x.sum(dim=(2, 3)), (x * x).sum(dim=(2, 3))  # [B,C]
        sums, squares = (s, q) if sums is None else (sums + s, squares + q)
        count += x.shape[2] * x.shape[3]
    batch, channels = sums.shape
    groups = norm.num_groups
    per_group = channels // groups
    n = count * per_group
    mean = sums.view(batch, groups, per_group).sum(-1) / n
    var = (squares.view(batch, groups, per_group).sum(-1) / n - mean * mean).clamp_min(0)
    inv = (var + norm.eps).rsqrt()
    scale = inv.repeat_interleave(per_group, dim=1)  # [B,C]
    shift = -mean.repeat_interleave(per_group, dim=1) * scale
    if norm.affine:
        scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
    scale, shift = scale.float()[:, :, None, None], shift.float()[:, :, None, None]
    return Rows(lambda a, b: torch.addcmul(shift, src(a, b), scale), src.height, keep=False)


def silu_rows(src: Rows) -> Rows:
    # the input band is a fresh tensor (a norm's output, not kept), so SiLU may overwrite it
    return Rows(lambda a, b: F.silu(src(a, b), inplace=True), src.height, keep=False)


def resblock_rows(block: ResBlock, src: Rows, rows: int) -> Rows:
    """A ResBlock without timestep embedding (the autoencoder's), at inference (dropout off)."""
    if block.emb is not None:
        raise ValueError("resblock_rows handles ResBlocks without a timestep embedding")
    h = conv_rows(block.conv1, silu_rows(group_norm_rows(block.norm1, src, rows)))
    h = conv_rows(block.conv2, silu_rows(group_norm_rows(block.norm2, h, rows)))
    skip = src if isinstance(block.skip, nn.Identity) else conv_rows(block.skip, src)
    return Rows(lambda a, b: skip(a, b) + h(a, b), src.height)


# Encoder inputs over this many pixels (a condition image over 1024²: LR inputs over 256² at
# cond_scale 4) run their full-resolution levels band by band; smaller ones run the plain forward,
# which is faster (no statistics passes) and whose memory is small anyway.
STREAM_PIXELS = 1 << 20


def encoder_levels(conv_in: nn.Conv2d, blocks: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``conv_in``, then ``blocks`` (ResBlocks, and stride-2 downsampling convs applied after a
    (0, 1, 0, 1) zero pad, as ``Encoder``), which must end with a downsampling conv, on the image x
    [B,C,H,W], band by band: the output of the last downsampling, channels last."""
    if not blocks or not isinstance(blocks[-1], nn.Conv2d):
        raise ValueError("encoder_levels streams up to a downsampling convolution")
    rows, width, out = conv_rows(conv_in, tensor_rows(x)), x.shape[-1], None
    for block in blocks:
        if isinstance(block, nn.Conv2d):
            out = materialize(conv_rows(block, rows, pad=(0, 1, 0, 1)),
                              max(4, band_rows(block.in_channels, width) // block.stride[0]))
            rows, width = tensor_rows(out), out.shape[-1]
        else:
            rows = resblock_rows(block, rows, band_rows(block.conv1.out_channels, width))
    return out
