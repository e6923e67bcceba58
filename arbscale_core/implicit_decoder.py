"""LIIF-style implicit decoder: an MLP f(feature, relative coordinate, cell) with local ensemble.

Coordinates are in latent-cell units: the latent grid of size (h, w) spans [0, h] x [0, w] and cell
(i, j) has its centre at (i + 0.5, j + 0.5). An output of size (H, W) samples pixel centres
``(k + 0.5) * h / H``, so any size works (non-integer scale, non-square, smaller than the latent).

Two facts make decoding cheap without changing LIIF's maths:
- The MLP's first layer is linear in [unfolded feature, rel coord, cell]; its feature part is a
  3x3 (or 1x1) convolution computed once per latent cell (``first_layer_map``) and gathered per query.
- The 4 nearest cells and their bilinear (area) weights factor into a row part and a column part,
  so a band of output rows needs only 1-D index/weight tables.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext

import torch
from torch import nn

from .config import ModelConfig


def make_coord(n: int, length: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre positions of n samples spread over [0, length]: [n]."""
    return (torch.arange(n, device=device, dtype=dtype) + 0.5) * (length / n)


def axis_neighbours(pos: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two nearest cell centres along one axis for each position.

    pos: [n] positions in cell units (0..size). Returns (index [2,n] long in 0..size-1,
    rel [2,n] offset of pos from that cell's centre in cell units, weight [2,n] summing to 1).
    Weights are LIIF's area weights (the opposite neighbour's distance), i.e. linear interpolation;
    at the borders both neighbours clamp to the edge cell.
    """
    lower = torch.floor(pos - 0.5).long()
    index = torch.stack([lower, lower + 1]).clamp_(0, size - 1)
    rel = pos[None] - (index.to(pos.dtype) + 0.5)
    dist = rel.abs()
    weight = torch.stack([dist[1], dist[0]]) + 1e-9  # eps: both clamped onto a cell centre
    weight = weight / weight.sum(0, keepdim=True)
    return index, rel, weight


class ImplicitDecoder(nn.Module):
    """MLP over (feature neighbourhood, relative coordinate, cell size) -> RGB in -1..1 (unclamped)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = list(cfg.mlp_hidden)
        k = 3 if cfg.feat_unfold else 1
        self.first_feat = nn.Conv2d(cfg.feature_channels, hidden[0], k, padding=k // 2)
        self.first_coord = nn.Linear(4, hidden[0], bias=False)  # (rel_y, rel_x, cell_y, cell_x)
        # LR-reading decoders: the LR features' share of the first layer. Zero at creation, so an
        # MLP fine-tuned from one without it starts out computing what that one computed.
        self.first_lr = nn.Conv2d(cfg.lr_features, hidden[0], k, padding=k // 2) if cfg.lr_features else None
        if self.first_lr is not None:
            nn.init.zeros_(self.first_lr.weight)
            nn.init.zeros_(self.first_lr.bias)
        layers: list[nn.Module] = []
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers += [nn.ReLU(), nn.Linear(a, b)]
        layers += [nn.ReLU(), nn.Linear(hidden[-1], cfg.image_channels)]
        self.out_channels = cfg.image_channels
        self.mlp = nn.Sequential(*layers)

    def first_layer_map(self, features: torch.Tensor, lr_features: torch.Tensor | None = None) -> torch.Tensor:
        """features [B,F,h,w] (and, for LR-reading decoders, LR features [B,lr_features,h,w]) ->
        the first layer's feature term per latent cell [B,hidden,h,w]."""
        first = self.first_feat(features)
        if self.first_lr is not None:
            first = first + self.first_lr(lr_features)
        return first

    def query(self, first: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
              cell: tuple[float, float], autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Decode the separable grid ys x xs.

        first: [B,hidden,h,w] from ``first_layer_map``; ys: [n] and xs: [m] positions in cell units;
        cell: one output pixel's size (cell_y, cell_x) in cell units. Returns [B,3,n,m] in about -1..1.
        """
        b, hid, h, w = first.shape
        iy, ry, wy = axis_neighbours(ys, h)
        ix, rx, wx = axis_neighbours(xs, w)
        n, m = ys.shape[0], xs.shape[0]
        wc = self.first_coord.weight.to(first.dtype)  # [hidden, 4]
        # All 4 neighbours at once, channels last so the MLP's matmuls read contiguous rows:
        # [B, 2 (row neighbour), n, 2 (column neighbour), m, hidden], built in place from the
        # separable row/column parts.
        # one gather of whole hidden-wide rows through flat cell indices (row * w + column), from
        # ``first`` viewed as [B, h*w, hidden] (a copy unless it is channels last already)
        cells = (iy.reshape(-1, 1) * w + ix.reshape(1, -1)).view(-1)  # [2n * 2m]
        pre = first.permute(0, 2, 3, 1).reshape(b, h * w, hid).index_select(1, cells)
        pre = pre.view(b, 2, n, 2, m, hid)
        pre += (ry[..., None] * wc[:, 0]).view(1, 2, n, 1, 1, hid)
        pre += (rx[..., None] * wc[:, 1]).view(1, 1, 1, 2, m, hid)
        pre += wc[:, 2] * cell[0] + wc[:, 3] * cell[1]
        ctx = (torch.autocast(device_type=first.device.type, dtype=autocast_dtype)
               if autocast_dtype is not None else nullcontext())
        with ctx:
            if torch.is_grad_enabled():
                rgb = self.mlp(pre)                   # [B,2,n,2,m,3]
            else:  # inference: ReLU in place, so each layer allocates one buffer fewer
                rgb = pre
                for layer in self.mlp:
                    rgb = rgb.relu_() if isinstance(layer, nn.ReLU) else layer(rgb)
        weight = (wy[:, :, None, None] * wx[None, None]).to(torch.float32)  # [2,n,2,m]
        out = (rgb.float() * weight[None, ..., None]).sum(dim=(1, 3))      # [B,n,m,3]
        return out.permute(0, 3, 1, 2)


def output_bands(height: int, width: int, chunk: int, start_row: int = 0) -> Iterator[tuple[int, int]]:
    """Row ranges [y0, y1) covering rows start_row..height, each at most max(1, chunk // width) rows."""
    if chunk <= 0:
        raise ValueError(f"chunk must be a positive number of pixels, got {chunk}")
    rows = max(1, chunk // width)
    for y0 in range(start_row, height, rows):
        yield y0, min(height, y0 + rows)


# Pixels per MLP call inside a band. The MLP's activations (4 neighbours x hidden floats per
# pixel) then stay in the CPU caches: measured 1.9x faster than one 65,536-pixel call (2 threads,
# 384² output); benchmarks/decoder_speed.py sweeps it.
QUERY_BLOCK = 2048


def decode_bands(decoder: ImplicitDecoder, first: torch.Tensor, height: int, width: int,
                 chunk: int = 65536, autocast_dtype: torch.dtype | None = None, start_row: int = 0,
                 block: int = QUERY_BLOCK) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (y0, y1, rgb [B,3,y1-y0,width]) bands of the decoded image from ``start_row`` on;
    memory stays per band. Each band is computed in blocks of about ``block`` pixels."""
    if height <= 0 or width <= 0:
        raise ValueError(f"output size must be positive, got {width}x{height}")
    if block <= 0:
        raise ValueError(f"block must be a positive number of pixels, got {block}")
    b, _, h, w = first.shape
    # channels last once, so each query gathers whole rows of ``hidden`` floats: gathering from the
    # conv's [B,hidden,h,w] layout touches one cache line per value (20x slower at a 512² latent)
    first = first.contiguous(memory_format=torch.channels_last)
    ys_all = make_coord(height, h, device=first.device)
    xs = make_coord(width, w, device=first.device)
    cell = (h / height, w / width)
    block_rows = max(1, block // width)
    block_cols = width if block_rows > 1 else min(width, block)
    for y0, y1 in output_bands(height, width, chunk, start_row):
        if (y1 - y0) * width <= block:
            yield y0, y1, decoder.query(first, ys_all[y0:y1], xs, cell, autocast_dtype)
            continue
        out = torch.empty((b, decoder.out_channels, y1 - y0, width), device=first.device)
        for r0 in range(y0, y1, block_rows):
            r1 = min(y1, r0 + block_rows)
            for c0 in range(0, width, block_cols):
                c1 = min(width, c0 + block_cols)
                out[:, :, r0 - y0:r1 - y0, c0:c1] = decoder.query(first, ys_all[r0:r1], xs[c0:c1], cell,
                                                                  autocast_dtype)
        yield y0, y1, out
