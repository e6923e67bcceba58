"""Convolutional encoder (f = 2**(levels-1)) and the decoder half *without upsampling*.

The encoder maps an image [B,3,H,W] in -1..1 to a latent [B,C,H/f,W/f]. The feature decoder maps a
latent to a feature map at latent resolution [B,feature_channels,H/f,W/f]; pixels come from the
implicit decoder (``implicit_decoder.py``), queried at any output size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import ResBlock, channels_last, group_norm, silu_temporary
from .streaming import STREAM_PIXELS, encoder_levels


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = [cfg.ae_channels * m for m in cfg.ae_channel_mult]
        self.conv_in = nn.Conv2d(cfg.image_channels, ch[0], 3, padding=1)
        blocks: list[nn.Module] = []
        prev = ch[0]
        for level, c in enumerate(ch):
            for _ in range(cfg.ae_res_blocks):
                blocks.append(ResBlock(prev, c))
                prev = c
            if level < len(ch) - 1:
                blocks.append(nn.Conv2d(prev, prev, 3, stride=2, padding=0))  # padded asymmetrically below
        self.blocks = nn.ModuleList(blocks)
        self.mid = ResBlock(prev, prev)
        self.norm_out = group_norm(prev)
        self.conv_out = nn.Conv2d(prev, cfg.latent_channels, 3, padding=1)
        self.downsample = cfg.downsample
        f = cfg.downsample
        self.shortcut = nn.Conv2d(cfg.image_channels * f * f, cfg.latent_channels, 1) if cfg.ae_shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B,3,H,W] in -1..1 with H, W multiples of f -> latent [B,C,H/f,W/f] (unscaled)."""
        x = channels_last(x)
        blocks = list(self.blocks)
        last_down = max((i for i, b in enumerate(blocks) if isinstance(b, nn.Conv2d)), default=-1)
        if not torch.is_grad_enabled() and x.shape[-2] * x.shape[-1] > STREAM_PIXELS and last_down >= 0:
            # large inputs: the full-resolution levels band by band (the same function, flat memory)
            h, blocks = encoder_levels(self.conv_in, blocks[:last_down + 1], x), blocks[last_down + 1:]
        else:
            h = self.conv_in(x)
        for block in blocks:
            if isinstance(block, nn.Conv2d):
                h = block(F.pad(h, (0, 1, 0, 1)))
            else:
                h = block(h)
        z = self.conv_out(silu_temporary(self.norm_out(self.mid(h))))
        if self.shortcut is not None:
            z = z + self.shortcut(F.pixel_unshuffle(x, self.downsample))
        return z


class FeatureDecoder(nn.Module):
    """Symmetric ResBlock decoder with the upsampling layers removed."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.latent_channels, cfg.dec_channels, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(cfg.dec_channels, cfg.dec_channels)
                                    for _ in range(cfg.dec_res_blocks))
        self.norm_out = group_norm(cfg.dec_channels)
        self.conv_out = nn.Conv2d(cfg.dec_channels, cfg.feature_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(cfg.latent_channels, cfg.feature_channels, 1) if cfg.ae_shortcut else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: latent [B,C,h,w] (unscaled) -> features [B,F,h,w]."""
        z = channels_last(z)
        h = self.conv_in(z)
        for block in self.blocks:
            h = block(h)
        features = self.conv_out(silu_temporary(self.norm_out(h)))
        if self.shortcut is not None:
            features = features + self.shortcut(z)
        return features


class LREncoder(nn.Module):
    """Features of the LR image for an LR-reading implicit decoder (``config.lr_features``):
    EDSR-style ResBlocks (no normalisation: pixel values matter exactly) at the image's resolution."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.lr_features
        self.head = nn.Conv2d(cfg.image_channels, c, 3, padding=1)
        self.body = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
                                                nn.Conv2d(c, c, 3, padding=1)) for _ in range(cfg.lr_blocks))
        self.tail = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image [B,3,h,w] in -1..1 -> features [B,lr_features,h,w]."""
        x = self.head(channels_last(image))
        h = x
        for block in self.body:
            h = h + block(h)
        return self.tail(h) + x
