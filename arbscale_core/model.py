"""The whole ArbScale model: encoder, feature decoder + implicit decoder, latent U-Net."""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import Encoder, FeatureDecoder, LREncoder
from .config import ModelConfig
from .diffusion import alphas_cumprod
from .imageops import resize
from .implicit_decoder import ImplicitDecoder, decode_bands
from .streaming import STREAM_CELLS
from .streaming import first_layer_map as streamed_first_layer_map
from .unet import UNet


class ArbScaleModel(nn.Module):
    """Images are [B,3,H,W] in -1..1 inside the model; latents are scaled by ``config.latent_scale``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.feature_decoder = FeatureDecoder(config)
        self.implicit = ImplicitDecoder(config)
        self.lr_encoder = LREncoder(config) if config.lr_features else None
        # the detail mode's decoder head (config.detail_head): its own LR encoder and MLP
        self.detail_lr_encoder = LREncoder(config) if config.detail_head else None
        self.detail_implicit = ImplicitDecoder(config) if config.detail_head else None
        self.unet = UNet(config)
        self.register_buffer("abar", alphas_cumprod(config).float(), persistent=False)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The eps prediction for noisy latents x_t [B,C,h,w] at timesteps t [B]."""
        out = self.unet(x_t, t, cond)
        if self.config.eps_param == "v_skip":
            a = self.abar[t].view(-1, 1, 1, 1).to(out.dtype)
            out = a.sqrt() * out + (1 - a).sqrt() * x_t.to(out.dtype)
        return out

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image [B,3,H,W] in -1..1 -> scaled latent [B,C,ceil(H/f),ceil(W/f)] (edge-padded to f)."""
        f = self.config.downsample
        h, w = image.shape[-2:]
        pad_h, pad_w = (-h) % f, (-w) % f
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
        return self.encoder(image) * self.config.latent_scale

    @property
    def reads_lr(self) -> bool:
        """Whether decoding needs the LR image as well as the latent (``config.lr_features``)."""
        return self.lr_encoder is not None

    def head(self, detail: bool = False) -> tuple[ImplicitDecoder, LREncoder | None]:
        """(MLP, LR encoder) of the default decoder head, or of the detail head when ``detail`` and
        the model has one (models without a detail head decode every mode with their one head)."""
        if detail and self.detail_implicit is not None:
            return self.detail_implicit, self.detail_lr_encoder
        return self.implicit, self.lr_encoder

    def lr_features(self, lr: torch.Tensor | None, latent_hw: tuple[int, int],
                    detail: bool = False) -> torch.Tensor | None:
        """LR image [B,3,h,w] in -1..1 -> its features on the latent grid (None if not read)."""
        encoder = self.head(detail)[1]
        if encoder is None:
            return None
        return encoder(self.lr_image_on_latent_grid(lr, latent_hw))

    def lr_image_on_latent_grid(self, lr: torch.Tensor | None, latent_hw: tuple[int, int]) -> torch.Tensor:
        """The LR image [B,3,h,w] in -1..1 resized to the latent grid (as is, when it has its size)."""
        if lr is None:
            raise ValueError("this SR model's decoder reads the LR image: pass it (lr=) with the latent")
        if tuple(lr.shape[-2:]) != tuple(latent_hw):
            lr = resize(lr, *latent_hw).clamp(-1, 1)
        return lr

    def first_layer_map(self, latent: torch.Tensor, lr: torch.Tensor | None = None,
                        detail: bool = False) -> torch.Tensor:
        """scaled latent [B,C,h,w] (and the LR image [B,3,*,*] in -1..1 for LR-reading decoders) ->
        the MLP's per-cell first-layer term [B,hidden,h,w] (of the detail head with ``detail``).
        Large latents at inference: the same, band by band (``streaming.first_layer_map``)."""
        if not torch.is_grad_enabled() and latent.shape[-2] * latent.shape[-1] > STREAM_CELLS:
            return streamed_first_layer_map(self, latent, lr, detail)
        features = self.feature_decoder(latent / self.config.latent_scale)
        return self.head(detail)[0].first_layer_map(features, self.lr_features(lr, latent.shape[-2:], detail))

    def decode_bands(self, latent: torch.Tensor, height: int, width: int, chunk: int = 65536,
                     autocast_dtype: torch.dtype | None = None, start_row: int = 0,
                     lr: torch.Tensor | None = None, detail: bool = False) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (y0, y1, rgb [B,3,y1-y0,width] in about -1..1) for an output of height x width."""
        first = self.first_layer_map(latent, lr, detail)
        yield from decode_bands(self.head(detail)[0], first, height, width, chunk, autocast_dtype, start_row)

    def decode(self, latent: torch.Tensor, height: int, width: int, chunk: int = 65536,
               autocast_dtype: torch.dtype | None = None, lr: torch.Tensor | None = None,
               detail: bool = False) -> torch.Tensor:
        """scaled latent -> image [B,3,height,width] in about -1..1 (assembled in memory)."""
        bands = [rgb for _, _, rgb in self.decode_bands(latent, height, width, chunk, autocast_dtype, lr=lr,
                                                        detail=detail)]
        return torch.cat(bands, dim=2)

    def to_diffusion(self, latent: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The space the U-Net denoises: the latent itself, or its scaled residual over the condition."""
        if self.config.residual and cond is not None:
            return (latent - cond) * self.config.residual_scale
        return latent

    def from_diffusion(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if self.config.residual and cond is not None:
            return cond + x / self.config.residual_scale
        return x

    def condition_size(self, lr_height: int, lr_width: int) -> tuple[int, int]:
        """Pixel size the LR image is resized to before encoding (a multiple of f)."""
        f = self.config.downsample
        s = self.config.cond_scale
        return (max(f, f * math.ceil(lr_height * s / f)), max(f, f * math.ceil(lr_width * s / f)))


def parameter_counts(model: ArbScaleModel) -> dict[str, int]:
    parts = {"encoder": model.encoder, "feature_decoder": model.feature_decoder,
             "implicit_decoder": model.implicit, "unet": model.unet}
    if model.lr_encoder is not None:
        parts["lr_encoder"] = model.lr_encoder
    if model.detail_implicit is not None:
        parts["detail_head"] = nn.ModuleList([model.detail_implicit, model.detail_lr_encoder])
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    counts["total"] = sum(counts.values())
    return counts
