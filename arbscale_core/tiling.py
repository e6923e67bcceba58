"""Tiled eps prediction for latents too large to denoise in one U-Net call (large LR inputs).

Each DDIM step predicts eps on overlapping tiles and blends them with weights that ramp linearly
across the overlaps (MultiDiffusion-style), so the U-Net's memory is bounded by the tile size and
tile borders leave no seams. Sides at the latent's own border do not ramp.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

TileFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (x [B,C,th,tw], cond tile) -> eps


def tile_layout(size: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """(length, starts) of the fewest tiles of at most ``tile`` cells that cover ``size`` with at
    least ``overlap`` cells shared between neighbours, each as short as that allows (the same length,
    spread evenly; the last ends exactly at ``size``). Shortening matters: a 512-cell side in tiles of
    at most 256 needs 3 tiles, and 3 tiles of 192 are half the U-Net work of 3 of 256."""
    if tile >= size:
        return size, [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got overlap {overlap} for tile {tile}")
    n = -(-(size - overlap) // (tile - overlap))
    length = -(-(size + (n - 1) * overlap) // n)
    while True:  # rounding the starts can cost a cell of overlap: lengthen until none is short
        starts = [round(i * (size - length) / (n - 1)) for i in range(n)]
        if all(a + length - b >= overlap for a, b in zip(starts, starts[1:])) or length >= tile:
            return length, starts
        length += 1


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles of ``tile_layout``."""
    return tile_layout(size, tile, overlap)[1]


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
    (th, ys), (tw, xs) = tile_layout(h, tile, overlap), tile_layout(w, tile, overlap)
    for y in ys:
        wy = _ramp(th, y, h, overlap)
        for x0 in xs:
            weight = (wy[:, None] * _ramp(tw, x0, w, overlap)[None, :]).to(x.device)
            part = (slice(None), slice(None), slice(y, y + th), slice(x0, x0 + tw))
            eps = fn(x[part], None if cond is None else cond[part]).float()
            out[part] += eps * weight
            total[y:y + th, x0:x0 + tw] += weight
    return out / total
