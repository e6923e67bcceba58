"""Noise schedule (LDM's scaled-linear betas over ``train_timesteps``), q_sample, eps loss, x0."""
from __future__ import annotations

import torch

from .config import ModelConfig


def alphas_cumprod(cfg: ModelConfig) -> torch.Tensor:
    """abar_t for t = 0..T-1 as float64 [T] (float64 so few-step DDIM products stay exact)."""
    betas = torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, cfg.train_timesteps,
                           dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _bcast(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    a = _bcast(abar, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def predict_x0(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    a = _bcast(abar, t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def snr(t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """abar_t / (1 - abar_t) as float32 [B]: the alignment stage's reconstruction weight."""
    a = abar.to(t.device)[t]
    return (a / (1 - a)).float()
