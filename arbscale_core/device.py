"""Device and dtype choice: automatic (cuda, then mps, then cpu) or named by the user."""
from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but CUDA is not available here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device mps was asked for but MPS is not available here")
    return device


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the U-Net and the decoder MLP (None = plain float32)."""
    if name is None or isinstance(name, torch.dtype):
        dtype = name
    else:
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r} (use fp32, bf16 or fp16)")
        dtype = DTYPES[name]
    if dtype in (None, torch.float32):
        return None
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("fp16 is not supported on the CPU; use bf16 or fp32")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("bf16 is not supported on this GPU; use fp16 or fp32")
    return dtype
