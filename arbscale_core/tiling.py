"""Tiled eps prediction for latents too large to denoise in one U-Net call (large LR inputs).

Each DDIM step predicts eps on overlapping tiles and blends them with weights that ramp linearly
across the overlaps (MultiDiffusion-style), so the U-Net's memory is bounded by the tile size and
tile borders leave no seams. Sides at the latent's own border do not ramp.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

TileFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (x [B,C,th,tw], cond tile) -> eps


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` cells covering ``size`` with at least ``overlap`` shared
    cells between neighbours; the last tile ends exactly at ``size``."""
    if tile >= size:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got overlap {overlap} for tile {tile}")
    stride = tile - overlap
    n = -(-(size - tile) // stride) + 1
    # spread the tiles evenly so every overlap is at least ``overlap`` cells
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _ramp(length: int, start: int, size: int, overlap: int) -> torch.Tensor:
    """1-D blend weights [length] for a tile at ``start``: a ramp over ``overlap`` cells on each
    side that has a neighbour, flat 1 elsewhere (and on sides at the border)."""
    w = torch.ones(length)
    if overlap <= 0:
        return w
    ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
    n = min(overlap, length)
    if start > 0:
        w[:n] = torch.minimum(w[:n], ramp[:n])
    if start + length < size:
        w[-n:] = torch.minimum(w[-n:], ramp[:n].flip(0))
    return w


def tiled_eps(fn: TileFn, x: torch.Tensor, cond: torch.Tensor | None, tile: int, overlap: int) -> torch.Tensor:
    """eps for the whole latent x [B,C,h,w] from ``fn`` run on tiles of at most tile x tile cells."""
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x, cond)
    out = torch.zeros_like(x, dtype=torch.float32)
    total = torch.zeros((h, w), dtype=torch.float32, device=x.device)
    th, tw = min(tile, h), min(tile, w)
    for y in tile_starts(h, tile, overlap):
        wy = _ramp(th, y, h, overlap)
        for x0 in tile_starts(w, tile, overlap):
            weight = (wy[:, None] * _ramp(tw, x0, w, overlap)[None, :]).to(x.device)
            part = (slice(None), slice(None), slice(y, y + th), slice(x0, x0 + tw))
            eps = fn(x[part], None if cond is None else cond[part]).float()
            out[part] += eps * weight
            total[y:y + th, x0:x0 + tw] += weight
    return out / total
