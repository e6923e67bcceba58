"""ArbScale core: arbitrary-scale super-resolution and generation with a latent diffusion model
and an implicit neural decoder. Never imports ComfyUI."""
from .checkpoint import CheckpointError, load_model, save_model
from .config import ModelConfig, preset
from .model import ArbScaleModel

__version__ = "0.1.0"

__all__ = ["ArbScaleModel", "CheckpointError", "ModelConfig", "load_model", "preset", "save_model", "__version__"]
