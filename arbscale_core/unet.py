"""Epsilon-prediction latent U-Net (timestep embedding, ResBlocks, attention at low resolutions).

SR models concatenate the condition latent (the encoded, resized LR image) to the noisy latent at
every step; generation models take the noisy latent alone. Any latent size works: the input is
padded to a multiple of the U-Net's total stride and the output cropped back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import Attention, ResBlock, channels_last, group_norm, silu_temporary, timestep_embedding


class UNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.unet_channels
        emb_ch = ch * 4
        self.base = ch
        self.cond_channels = cfg.cond_channels
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.conv_in = nn.Conv2d(cfg.latent_channels + cfg.cond_channels, ch, 3, padding=1)
        levels = [ch * m for m in cfg.unet_channel_mult]
        self.stride = 2 ** (len(levels) - 1)

        self.down = nn.ModuleList()
        skips = [ch]
        prev = ch
        for level, c in enumerate(levels):
            for _ in range(cfg.unet_res_blocks):
                attn = Attention(c, cfg.unet_heads) if level in cfg.unet_attention_levels else None
                self.down.append(nn.ModuleList([ResBlock(prev, c, emb_ch, cfg.unet_dropout), attn or nn.Identity()]))
                prev = c
                skips.append(c)
            if level < len(levels) - 1:
                self.down.append(nn.Conv2d(prev, prev, 3, stride=2, padding=1))
                skips.append(prev)

        self.mid1 = ResBlock(prev, prev, emb_ch, cfg.unet_dropout)
        self.mid_attn = Attention(prev, cfg.unet_heads)
        self.mid2 = ResBlock(prev, prev, emb_ch, cfg.unet_dropout)

        self.up = nn.ModuleList()
        for level in reversed(range(len(levels))):
            c = levels[level]
            for i in range(cfg.unet_res_blocks + 1):
                attn = Attention(c, cfg.unet_heads) if level in cfg.unet_attention_levels else None
                self.up.append(nn.ModuleList([ResBlock(prev + skips.pop(), c, emb_ch, cfg.unet_dropout),
                                              attn or nn.Identity()]))
                prev = c
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(prev, prev, 3, padding=1)))
        self.norm_out = group_norm(prev)
        self.conv_out = nn.Conv2d(prev, cfg.latent_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: noisy latent [B,C,h,w]; t: timesteps [B]; cond: [B,C,h,w] for SR -> eps [B,C,h,w]."""
        if self.cond_channels:
            if cond is None:
                raise ValueError("this SR U-Net needs a condition latent")
            x_in = torch.cat([x, cond.to(x.dtype)], dim=1)
        else:
            x_in = x
        h0, w0 = x.shape[-2:]
        pad_h, pad_w = (-h0) % self.stride, (-w0) % self.stride
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h0 and pad_w < w0 else "replicate"
            x_in = F.pad(x_in, (0, pad_w, 0, pad_h), mode=mode)
        emb = self.time_mlp(timestep_embedding(t, self.base).to(x_in.dtype))
        h = self.conv_in(channels_last(x_in))
        skips = [h]
        for block in self.down:
            if isinstance(block, nn.ModuleList):
                h = block[1](block[0](h, emb))
            else:
                h = block(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = block[1](block[0](torch.cat([h, skips.pop()], dim=1), emb))
            else:
                h = block(h)
        out = self.conv_out(silu_temporary(self.norm_out(h)))
        return out[..., :h0, :w0]
