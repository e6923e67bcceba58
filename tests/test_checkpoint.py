import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from arbscale_core.checkpoint import CheckpointError, load_model, read_config, save_model
from arbscale_core.pipeline import upscale

from conftest import micro_config, micro_model


def test_round_trip_rebuilds_identical_model(tmp_path, sr_model):
    path = tmp_path / "m.safetensors"
    save_model(sr_model, path, training={"steps": 12})
    loaded = load_model(path)
    assert loaded.config == sr_model.config
    assert loaded.training_info == {"steps": 12}
    img = torch.rand(1, 3, 6, 9)
    torch.testing.assert_close(upscale(loaded, img, scale=2.2, steps=2), upscale(sr_model, img, scale=2.2, steps=2),
                               rtol=0, atol=0)


def test_fp16_storage_is_smaller_and_close(tmp_path, sr_model):
    p32, p16 = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_model(sr_model, p32)
    save_model(sr_model, p16, dtype=torch.float16)
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    a, b = load_model(p32), load_model(p16)
    assert next(b.parameters()).dtype == torch.float32
    img = torch.rand(1, 3, 6, 6)
    assert (upscale(a, img, scale=2, steps=2) - upscale(b, img, scale=2, steps=2)).abs().max() < 0.01


def _meta(model):
    return {"format": "arbscale", "config": model.config.to_json(), "training": "{}"}


def test_not_safetensors(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(p)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.safetensors")


def test_truncated(tmp_path, sr_ckpt):
    p = tmp_path / "trunc.safetensors"
    data = sr_ckpt.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(p.name)):
        load_model(p)


def test_no_config_metadata(tmp_path, sr_model):
    p = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in sr_model.state_dict().items()}, str(p))
    with pytest.raises(CheckpointError, match="not an ArbScale model"):
        load_model(p)


def test_missing_and_unexpected_keys(tmp_path, sr_model):
    state = {k: v.contiguous() for k, v in sr_model.state_dict().items()}
    first = sorted(state)[0]
    p = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in state.items() if k != first}, str(p), metadata=_meta(sr_model))
    with pytest.raises(CheckpointError, match=f"missing keys {first}"):
        load_model(p)
    p = tmp_path / "extra.safetensors"
    save_file({**state, "bonus.weight": torch.zeros(2)}, str(p), metadata=_meta(sr_model))
    with pytest.raises(CheckpointError, match="unexpected keys bonus.weight"):
        load_model(p)


def test_shape_mismatch(tmp_path, sr_model):
    other = micro_model("sr", dec_channels=32)
    p = tmp_path / "shape.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(p), metadata=_meta(sr_model))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(p)


def test_unknown_config_version(tmp_path, sr_model):
    raw = json.loads(sr_model.config.to_json())
    raw["version"] = 7
    p = tmp_path / "v7.safetensors"
    save_file({k: v.contiguous() for k, v in sr_model.state_dict().items()}, str(p),
              metadata={"format": "arbscale", "config": json.dumps(raw)})
    with pytest.raises(CheckpointError, match="unknown config version 7"):
        read_config(p)


def test_save_is_atomic_on_failure(tmp_path, sr_model, monkeypatch):
    p = tmp_path / "keep.safetensors"
    save_model(sr_model, p)
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("arbscale_core.checkpoint.save_file", boom)
    with pytest.raises(OSError):
        save_model(micro_model("sr", seed=9), p)
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keep.safetensors"]


def test_no_pickle_loading_in_code():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["grep", "-rnE", r"torch\.load\(|pickle\.load|weights_only", "--include=*.py",
                          str(root / "arbscale_core")], capture_output=True, text=True)
    assert out.stdout == ""


def test_config_in_metadata_rebuilds_model_alone(tmp_path):
    cfg = micro_config("gen", mlp_hidden=(8, 8, 8))
    model = micro_model("gen", mlp_hidden=(8, 8, 8))
    p = tmp_path / "g.safetensors"
    save_model(model, p)
    config, _ = read_config(p)
    assert config == cfg
