"""Model configuration: one frozen dataclass that travels inside every checkpoint.

A checkpoint's safetensors metadata holds ``config`` as JSON, so the file alone rebuilds its model
(nanoGPT style). Bump ``CONFIG_VERSION`` when a field's meaning changes; loading refuses versions it
does not know instead of silently building the wrong network.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

CONFIG_VERSION = 1
TASKS = ("sr", "gen")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build an ArbScale model (autoencoder, implicit decoder, latent U-Net).

    ``task``: "sr" (the U-Net sees the LR condition latent concatenated to the noisy latent) or
    "gen" (unconditional). ``cond_scale``: the LR image is resized by this factor before encoding,
    so the diffusion latent has cond_scale / downsample times the LR size (1 with the defaults:
    diffusion runs at LR size, whatever the output scale).
    """

    version: int = CONFIG_VERSION
    task: str = "sr"
    image_channels: int = 3
    latent_channels: int = 4
    # Autoencoder: len(ae_channel_mult) - 1 stride-2 downsamplings, so downsample = 2**(len-1).
    ae_channels: int = 32
    ae_channel_mult: tuple[int, ...] = (1, 2, 2)
    ae_res_blocks: int = 1
    # Space-to-channel shortcuts (as in DC-AE): a linear path from the pixel-unshuffled image to the
    # latent, and from the latent to the decoder features, so the nonlinear layers learn a residual.
    ae_shortcut: bool = False
    # Decoder without upsampling: ResBlocks at latent resolution, then a feature map for the MLP.
    dec_channels: int = 128
    dec_res_blocks: int = 2
    feature_channels: int = 64
    # LIIF MLP: hidden widths; feat_unfold gathers the 3x3 neighbourhood of features (as LIIF).
    mlp_hidden: tuple[int, ...] = (128, 128, 128)
    feat_unfold: bool = True
    # Latents are multiplied by latent_scale before diffusion (set from data after stage 1).
    latent_scale: float = 1.0
    # Latent U-Net
    unet_channels: int = 48
    unet_channel_mult: tuple[int, ...] = (1, 2, 2)
    unet_res_blocks: int = 2
    unet_attention_levels: tuple[int, ...] = (2,)
    unet_heads: int = 4
    unet_dropout: float = 0.0
    # Diffusion
    train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    cond_scale: float = 4.0
    # Residual latent diffusion (SR only): diffuse (z_hr - z_cond) * residual_scale instead of z_hr,
    # so "no change" is free and a small U-Net only learns the missing detail.
    residual: bool = False
    residual_scale: float = 1.0
    # "direct": the U-Net outputs eps. "v_skip": eps = sqrt(abar)*F + sqrt(1-abar)*x_t, so the
    # U-Net F learns v (well conditioned at every noise level) while samplers still get eps.
    eps_param: str = "direct"
    # Condition anchoring (SR only): add the autoencoder's own error on the condition image back in
    # pixel space, out = decode(z) + resize(cond_image - decode(z_cond)), so a "no change" latent
    # gives exactly the bicubic image and the networks only have to supply missing detail.
    anchor: bool = False
    # LR-reading decoder (SR only; 0 = off, as in the paper): an encoder of this many channels
    # (lr_blocks EDSR-style ResBlocks) on the LR image, resized to the latent grid, whose features
    # the implicit decoder's first layer reads next to the latent's, and whose output is a residual
    # over the LR image resized to the output (bicubic). The decoder then no longer has to recover
    # from the latent what the LR pixels say exactly (cf. StableSR's feature wrapping of its VAE
    # decoder with encoder features, and LIIF-style regressions' residual over bicubic).
    lr_features: int = 0
    lr_blocks: int = 4
    # A second LR-reading decoder head (SR, needs lr_features) for the "detail" sampling mode: trained
    # on true latents (the HR image's own), so it renders what a sampled latent holds, where the
    # default head, trained on the U-Net's few-step estimate, regresses to the mean (fidelity mode).
    detail_head: bool = False

    def __post_init__(self):
        if self.version != CONFIG_VERSION:
            raise ValueError(f"unknown config version {self.version} (this arbscale knows {CONFIG_VERSION})")
        if self.task not in TASKS:
            raise ValueError(f"config task must be one of {TASKS}, got {self.task!r}")
        for name in ("image_channels", "latent_channels", "ae_channels", "dec_channels",
                     "feature_channels", "unet_channels", "train_timesteps"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"config {name} must be positive, got {getattr(self, name)}")
        if not self.ae_channel_mult or not self.unet_channel_mult or not self.mlp_hidden:
            raise ValueError("config ae_channel_mult, unet_channel_mult and mlp_hidden must not be empty")
        if self.eps_param not in ("direct", "v_skip"):
            raise ValueError(f"config eps_param must be direct or v_skip, got {self.eps_param!r}")
        if int(self.lr_features) < 0 or int(self.lr_blocks) < 0:
            raise ValueError("config lr_features and lr_blocks must be >= 0")
        if self.lr_features and self.task != "sr":
            raise ValueError("config lr_features is for SR models (a generation model has no LR image)")
        if self.lr_features and self.anchor:
            raise ValueError("config anchor and lr_features exclude each other: the anchor's decode of the "
                             "condition would read the LR image too and cancel what it adds")
        if self.detail_head and not self.lr_features:
            raise ValueError("config detail_head is a second LR-reading decoder head: it needs lr_features > 0")
        if not (self.cond_scale > 0):
            raise ValueError(f"config cond_scale must be positive, got {self.cond_scale}")

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along each axis (f)."""
        return 2 ** (len(self.ae_channel_mult) - 1)

    @property
    def cond_channels(self) -> int:
        return self.latent_channels if self.task == "sr" else 0

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config metadata is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("config metadata is not a JSON object")
        version = raw.get("version")
        if version != CONFIG_VERSION:
            raise ValueError(f"unknown config version {version!r} (this arbscale knows {CONFIG_VERSION})")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"config has unknown fields: {', '.join(unknown)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return cls(**kwargs)


def preset(name: str, task: str = "sr") -> ModelConfig:
    """``tiny``: trains on a 2-core CPU in hours. ``paper``: the paper's sizes, for GPUs."""
    if name == "tiny":
        return ModelConfig(task=task, latent_channels=16, ae_shortcut=True, residual=task == "sr",
                           eps_param="v_skip" if task == "sr" else "direct")
    if name == "paper":
        return ModelConfig(
            task=task, latent_channels=4, ae_channels=128, ae_channel_mult=(1, 2, 4),
            ae_res_blocks=2, dec_channels=256, dec_res_blocks=4, feature_channels=64,
            mlp_hidden=(256, 256, 256, 256), unet_channels=160, unet_channel_mult=(1, 2, 2, 4),
            unet_res_blocks=2, unet_attention_levels=(1, 2, 3), unet_heads=8)
    raise ValueError(f"unknown preset {name!r} (choose tiny or paper)")


PRESETS = ("tiny", "paper")
