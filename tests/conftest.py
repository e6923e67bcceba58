import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arbscale_core.checkpoint import save_model
from arbscale_core.config import ModelConfig
from arbscale_core.model import ArbScaleModel

MICRO = dict(latent_channels=4, ae_channels=8, ae_channel_mult=(1, 2, 2), ae_res_blocks=1, dec_channels=16,
             dec_res_blocks=1, feature_channels=8, mlp_hidden=(16, 16), unet_channels=16,
             unet_channel_mult=(1, 2), unet_res_blocks=1, unet_attention_levels=(1,), unet_heads=2)


def micro_config(task: str = "sr", **changes) -> ModelConfig:
    return ModelConfig(task=task, **{**MICRO, **changes})


def micro_model(task: str = "sr", seed: int = 0, **changes) -> ArbScaleModel:
    torch.manual_seed(seed)
    model = ArbScaleModel(micro_config(task, **changes)).eval()
    # The U-Net's output conv starts at zero (standard); randomise it so tests see real eps.
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)
    return model


@pytest.fixture(scope="session")
def sr_model() -> ArbScaleModel:
    return micro_model("sr")


@pytest.fixture(scope="session")
def gen_model() -> ArbScaleModel:
    return micro_model("gen")


@pytest.fixture(scope="session")
def sr_ckpt(tmp_path_factory, sr_model) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "sr.safetensors"
    save_model(sr_model, path, training={"note": "random init for tests"})
    return path


@pytest.fixture(scope="session")
def gen_ckpt(tmp_path_factory, gen_model) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "gen.safetensors"
    save_model(gen_model, path)
    return path


def write_png(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
