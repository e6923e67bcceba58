import json

import pytest

from arbscale_core.config import CONFIG_VERSION, PRESETS, ModelConfig, preset
from arbscale_core.model import ArbScaleModel, parameter_counts


def test_json_round_trip_keeps_tuples():
    cfg = preset("tiny").replace(latent_scale=0.37, mlp_hidden=(64, 32))
    back = ModelConfig.from_json(cfg.to_json())
    assert back == cfg
    assert isinstance(back.mlp_hidden, tuple)


def test_unknown_version_and_fields_are_rejected():
    raw = json.loads(preset("tiny").to_json())
    with pytest.raises(ValueError, match="unknown config version 99"):
        ModelConfig.from_json(json.dumps({**raw, "version": 99}))
    with pytest.raises(ValueError, match="unknown fields: wings"):
        ModelConfig.from_json(json.dumps({**raw, "wings": 2}))
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.from_json("{nope")


def test_invalid_values():
    with pytest.raises(ValueError, match="task"):
        ModelConfig(task="video")
    with pytest.raises(ValueError, match="latent_channels"):
        ModelConfig(latent_channels=0)
    with pytest.raises(ValueError, match="version"):
        ModelConfig(version=CONFIG_VERSION + 1)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build(name):
    cfg = preset(name)
    assert cfg.downsample == 4
    counts = parameter_counts(ArbScaleModel(cfg))
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    if name == "paper":
        assert cfg.mlp_hidden == (256, 256, 256, 256)
    else:  # tiny must stay shippable: two fp16 files together <= 30 MB
        assert counts["total"] * 2 * 2 <= 30e6


def test_lr_reading_decoder_fields():
    cfg = ModelConfig(lr_features=8, lr_blocks=2)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    raw = json.loads(ModelConfig().to_json())
    del raw["lr_features"], raw["lr_blocks"]  # files written before the fields existed
    assert ModelConfig.from_json(json.dumps(raw)).lr_features == 0
    with pytest.raises(ValueError, match="lr_features is for SR models"):
        ModelConfig(task="gen", lr_features=8)
    with pytest.raises(ValueError, match="anchor and lr_features exclude each other"):
        ModelConfig(anchor=True, lr_features=8)
    with pytest.raises(ValueError, match="lr_features and lr_blocks"):
        ModelConfig(lr_features=-1)
