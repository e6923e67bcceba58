"""The LIIF-style regression baseline (Chen et al. 2021, "Learning Continuous Image Representation
with Local Implicit Image Function"): an EDSR-style encoder on the LR image and our implicit decoder,
whose output is added to the bicubic upscale. ``benchmarks/liif_baseline.py`` trains it; ``arbscale
eval --baseline FILE`` measures it next to ours. Weights are safetensors with the shape in metadata.
"""
from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .autoencoder import LREncoder
from .config import ModelConfig
from .imageops import resize
from .implicit_decoder import ImplicitDecoder, decode_bands, make_coord


class LIIFBaseline(LREncoder):
    """LR [B,3,h,w] in -1..1 -> any size, as bicubic + an implicit-decoder residual. The encoder is
    the one LR-reading ArbScale decoders use (its head/body/tail are this module's own)."""

    def __init__(self, channels: int = 48, blocks: int = 4, hidden: tuple[int, ...] = (128, 128, 128)):
        super().__init__(ModelConfig(lr_features=channels, lr_blocks=blocks))
        self.implicit = ImplicitDecoder(ModelConfig(feature_channels=channels, mlp_hidden=hidden))
        self.shape = {"channels": channels, "blocks": blocks, "hidden": list(hidden)}

    def first(self, lr: torch.Tensor) -> torch.Tensor:
        return self.implicit.first_layer_map(super().forward(lr))

    def forward(self, lr: torch.Tensor, height: int, width: int, rows: torch.Tensor,
                cols: torch.Tensor) -> torch.Tensor:
        """Rows x columns of the height x width output, [B,3,len(rows),len(cols)] in about -1..1."""
        h, w = lr.shape[-2:]
        ys, xs = make_coord(height, h, lr.device)[rows], make_coord(width, w, lr.device)[cols]
        residual = self.implicit.query(self.first(lr), ys, xs, (h / height, w / width))
        return resize(lr, height, width)[:, :, rows][:, :, :, cols] + residual

    @torch.no_grad()
    def upscale(self, lr: torch.Tensor, height: int, width: int) -> torch.Tensor:
        bands = [band for _, _, band in decode_bands(self.implicit, self.first(lr), height, width)]
        return resize(lr, height, width) + torch.cat(bands, dim=2)


def load_baseline(path: str) -> tuple[LIIFBaseline, dict]:
    """(network in eval mode, its metadata) from a file ``benchmarks/liif_baseline.py train`` wrote."""
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        shape = json.loads(meta["shape"])
        net = LIIFBaseline(int(shape["channels"]), int(shape["blocks"]), tuple(int(h) for h in shape["hidden"]))
        net.load_state_dict(load_file(str(path)))
    except FileNotFoundError:
        raise ValueError(f"baseline weights not found: {path}") from None
    except Exception as exc:  # not safetensors, no or bad metadata, other shapes
        raise ValueError(f"{path} is not a regression baseline file from benchmarks/liif_baseline.py "
                         f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    return net.eval(), meta
