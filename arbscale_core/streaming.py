"""Band-by-band inference of the encoder's full-resolution levels, exact, in flat memory.

The condition image is the LR resized by cond_scale (4): a 512² input means a 2048² image, whose
32-channel activations take 512 MB each; the plain forward holds 4-5 of them (2.4 GB peak). Here
each layer is a ``Rows``: a function giving any band of its output rows, computed from the band of
its input rows it needs (3x3 convolutions widen the band by their padding). GroupNorm needs the
statistics of its whole input, so each norm first runs one pass over all bands of its input to
collect them (per band in float32, summed in float64), then normalises band by band with them: the same function as the plain
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
        # zero rows only at the image's top and bottom; equal side columns by the conv itself (a
        # padded copy of every band costs as much as a third of the convolutions)
        rows_pad = (max(0, -lo), max(0, hi - src.height))
        cols = left if left == right else 0
        if any(rows_pad) or left != right:
            x = F.pad(x, (left - cols, right - cols, *rows_pad))
        return F.conv2d(channels_last(x), conv.weight, conv.bias, stride=conv.stride, padding=(0, cols))

    return Rows(fn, height)


def group_norm_rows(norm: nn.GroupNorm, src: Rows, rows: int) -> Rows:
    """GroupNorm of ``src`` with the statistics of all of it (one pass over its bands first)."""
    ref = sums = squares = None
    count = 0
    for a, b in bands(src.height, rows):
        x = src(a, b)
        pixels = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])  # [B, rows*W, C]: a view, channels last
        if ref is None:  # sums of x - ref, ref = the first band's mean: no cancellation in var
            ref = pixels.mean(1, keepdim=True)
        d = pixels - ref
        s, q = d.sum(1).double(), (d * d).sum(1).double()  # [B,C]: per band in float32, across bands in float64
        sums, squares = (s, q) if sums is None else (sums + s, squares + q)
        count += pixels.shape[1]
    batch, channels = sums.shape
    groups = norm.num_groups
    per_group = channels // groups
    # per channel: mean_c = ref_c + s_c / n, E[(x - mean)^2]_c = q_c / n - (s_c / n)^2; then per group
    # the mean of the channel means and the mean of (channel variance + (mean_c - group mean)^2)
    channel_mean = ref.view(batch, channels).double() + sums / count
    channel_var = (squares / count - (sums / count) ** 2).clamp_min(0)
    mean = channel_mean.view(batch, groups, per_group).mean(-1)
    var = (channel_var + (channel_mean - mean.repeat_interleave(per_group, dim=1)) ** 2).view(
        batch, groups, per_group).mean(-1)
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
    return add_rows(skip, h)


def add_rows(narrow: Rows, wide: Rows) -> Rows:
    """narrow + wide; ``wide`` is computed first: it asks the shared input for more rows, which the
    input keeps, so ``narrow``'s request is served from them instead of computed again."""
    def fn(a: int, b: int) -> torch.Tensor:
        band = wide(a, b)
        return narrow(a, b) + band

    return Rows(fn, narrow.height)


def relu_rows(src: Rows) -> Rows:
    return Rows(lambda a, b: F.relu(src(a, b)), src.height, keep=False)  # not in place: src keeps its band


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


# Latents over this many cells (LR inputs over 512² at cond_scale 4) get the MLP's first-layer map
# band by band; below, the plain forward (faster: no statistics passes) fits in memory anyway.
STREAM_CELLS = 1 << 18


def first_layer_map(model, latent: torch.Tensor, lr_image: torch.Tensor | None, detail: bool) -> torch.Tensor:
    """``ArbScaleModel.first_layer_map`` band by band: the feature decoder (one full tensor kept
    per ResBlock: the next norm's statistics need all of it), the LR encoder (no norms: bands with
    a halo) and the first layer's convolutions, [B,hidden,h,w] channels last."""
    dec = model.feature_decoder
    width = latent.shape[-1]
    rows = band_rows(dec.conv_in.out_channels, width)
    z = tensor_rows(channels_last(latent / model.config.latent_scale))
    h = conv_rows(dec.conv_in, z)
    for block in dec.blocks:
        h = tensor_rows(materialize(resblock_rows(block, h, rows), rows))
    features = conv_rows(dec.conv_out, silu_rows(group_norm_rows(dec.norm_out, h, rows)))
    if dec.shortcut is not None:
        features = add_rows(conv_rows(dec.shortcut, z), features)
    implicit, lr_encoder = model.head(detail)
    first = conv_rows(implicit.first_feat, features)
    if implicit.first_lr is not None:
        image = model.lr_image_on_latent_grid(lr_image, latent.shape[-2:])
        x = conv_rows(lr_encoder.head, tensor_rows(channels_last(image)))
        body = x
        for block in lr_encoder.body:  # conv, ReLU, conv, with a skip
            body = add_rows(body, conv_rows(block[2], relu_rows(conv_rows(block[0], body))))
        lr_features = add_rows(x, conv_rows(lr_encoder.tail, body))
        first = add_rows(first, conv_rows(implicit.first_lr, lr_features))
    return materialize(first, rows)
