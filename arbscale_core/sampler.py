"""DDIM as a plain function over a model callable (k-diffusion style)."""
from __future__ import annotations

from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t [B,C,h,w], t [B]) -> eps
Callback = Callable[[int, int, torch.Tensor], None]            # (step, total, x0_pred)


def ddim_timesteps(steps: int, train_timesteps: int) -> list[int]:
    """Descending timesteps, "trailing" spacing: always starts at T-1 so one step is a valid sampler."""
    if not 1 <= steps <= train_timesteps:
        raise ValueError(f"steps must be between 1 and {train_timesteps}, got {steps}")
    ts = [round(train_timesteps - i * train_timesteps / steps) - 1 for i in range(steps)]
    return sorted(set(ts), reverse=True)


@torch.no_grad()
def sample_ddim(model: ModelFn, noise: torch.Tensor, abar: torch.Tensor, steps: int = 20,
                eta: float = 0.0, generator: torch.Generator | None = None,
                callback: Callback | None = None) -> torch.Tensor:
    """Run DDIM from x_T = noise. abar: [T] cumulative alphas. eta=0 is deterministic; eta=1 is
    DDPM-like. Fresh noise for eta > 0 comes from ``generator`` (drawn on the generator's device
    and moved to the noise's, so a CPU generator's seed gives the same result on every device).
    ``callback(step, total, x0_pred)`` runs after each step (raise to cancel).
    Returns the final latent [B,C,h,w] (float32)."""
    if not 0.0 <= eta <= 1.0:  # nan fails too; above 1 the noise outgrows the DDPM posterior
        raise ValueError(f"eta must be between 0 (deterministic) and 1 (DDPM-like), got {eta}")
    ts = ddim_timesteps(steps, len(abar))
    abar = abar.to(noise.device)
    x = noise.float()
    b = x.shape[0]
    for i, t in enumerate(ts):
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), dtype=abar.dtype, device=abar.device)
        eps = model(x, torch.full((b,), t, device=x.device, dtype=torch.long)).float()
        x0 = (x - (1 - a_t).sqrt().float() * eps) / a_t.sqrt().float()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        dir_coef = (1 - a_prev - sigma ** 2).clamp(min=0).sqrt()
        x = a_prev.sqrt().float() * x0 + dir_coef.float() * eps
        if eta > 0 and i + 1 < len(ts):
            z_device = generator.device if generator is not None else x.device
            z = torch.randn(x.shape, generator=generator, device=z_device, dtype=x.dtype).to(x.device)
            x = x + sigma.float() * z
        if callback is not None:
            callback(i + 1, len(ts), x0)
    return x
