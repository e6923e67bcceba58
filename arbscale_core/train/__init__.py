"""Training: ``python -m arbscale_core.train STAGE ...`` or ``torchrun ... -m arbscale_core.train``."""
from .trainer import TrainArgs, train

__all__ = ["TrainArgs", "train"]
