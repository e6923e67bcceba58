"""Model files: safetensors with the config (and training info) as JSON metadata. Never pickle."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .fileio import atomic_path
from .model import ArbScaleModel

FORMAT = "arbscale"


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file and the problem."""


def save_model(model: ArbScaleModel, path: str | os.PathLike, training: dict | None = None,
               dtype: torch.dtype = torch.float32) -> None:
    """Write ``model`` atomically; ``dtype`` (e.g. float16) shrinks shipped files, loading upcasts."""
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": model.config.to_json(),
                "training": json.dumps(training or {}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None


def read_config(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """(config, training info) from a model file's metadata, without loading the weights."""
    meta = read_metadata(path)
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{path}: not an ArbScale model (no arbscale config in its metadata)")
    try:
        config = ModelConfig.from_json(meta["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        training = json.loads(meta.get("training", "{}"))
    except json.JSONDecodeError:
        training = {}
    return config, training


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ArbScaleModel:
    """Rebuild the model from the file alone; every mismatch is a CheckpointError naming it."""
    config, training = read_config(path)
    model = ArbScaleModel(config)
    expected = model.state_dict()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = set(f.keys())
            missing = sorted(set(expected) - keys)
            unexpected = sorted(keys - set(expected))
            if missing or unexpected:
                parts = []
                if missing:
                    parts.append(f"missing keys {_preview(missing)}")
                if unexpected:
                    parts.append(f"unexpected keys {_preview(unexpected)}")
                raise CheckpointError(f"{path}: weights do not match its config: {'; '.join(parts)}")
            state = {}
            for key in sorted(keys):
                tensor = f.get_tensor(key)
                if tensor.shape != expected[key].shape:
                    raise CheckpointError(f"{path}: shape mismatch for {key}: file has {tuple(tensor.shape)}, "
                                          f"config needs {tuple(expected[key].shape)}")
                state[key] = tensor.to(expected[key].dtype)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from None
    model.load_state_dict(state)
    model.training_info = training
    return model.to(device).eval()


def _preview(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
