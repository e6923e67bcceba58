"""Training images: any folder of PNG/JPEG/WebP, held in memory as uint8, random crops."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..imageops import IMAGE_SUFFIXES


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageSet:
    """uint8 images [3,H,W] whose sides are at least ``min_size`` (smaller and unreadable ones are
    skipped with a warning)."""

    def __init__(self, folders: list[str | os.PathLike], min_size: int, limit: int | None = None):
        paths = [p for folder in folders for p in list_images(folder)]
        if limit:
            paths = paths[:limit]
        self.images: list[torch.Tensor] = []
        for path in paths:
            try:
                with Image.open(path) as im:
                    array = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except Exception as exc:  # a broken file must not stop a long run
                warnings.warn(f"skipping unreadable image {path}: {exc}")
                continue
            if min(array.shape[:2]) < min_size:
                warnings.warn(f"skipping {path}: smaller than {min_size}px")
                continue
            self.images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
        if not self.images:
            raise ValueError(f"no usable images (at least {min_size}px) in {', '.join(map(str, folders))}")

    def __len__(self) -> int:
        return len(self.images)

    def random_crops(self, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
        """n random size x size crops with random horizontal flips: [n,3,size,size] in -1..1."""
        idx = torch.randint(len(self.images), (n,), generator=gen)
        u = torch.rand(n, 3, generator=gen)
        crops = []
        for i in range(n):
            img = self.images[int(idx[i])]
            h, w = img.shape[-2:]
            y = int(u[i, 0] * (h - size + 1))
            x = int(u[i, 1] * (w - size + 1))
            crop = img[:, y:y + size, x:x + size]
            if u[i, 2] < 0.5:
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.stack(crops).float() / 127.5 - 1.0

    def center_crops(self, size: int) -> torch.Tensor:
        """One centred crop per image (validation): [N,3,size,size] in -1..1."""
        out = []
        for img in self.images:
            h, w = img.shape[-2:]
            y, x = (h - size) // 2, (w - size) // 2
            out.append(img[:, y:y + size, x:x + size])
        return torch.stack(out).float() / 127.5 - 1.0
