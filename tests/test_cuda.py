"""CUDA paths. Skipped without a GPU (CI has none); run them on one with
``python -m pytest -q tests/test_cuda.py``."""
import numpy as np
import pytest
import torch

from arbscale_core.checkpoint import load_model
from arbscale_core.cli import DEFAULT_MODELS
from arbscale_core.pipeline import denoise, generate, upscale
from arbscale_core.train import TrainArgs
from arbscale_core.train.trainer import Trainer

from conftest import MICRO, micro_model
from test_train import image_dirs, smooth_image  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def exact_fp32(monkeypatch):
    # compare devices at full fp32 (the trainer turns TF32 on for itself)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def psnr01(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a.float().cpu() - b.float().cpu()).pow(2).mean().clamp(min=1e-12)))


def test_seeded_ddim_with_fresh_noise_matches_cpu():
    model = micro_model("sr")
    cond = torch.randn(1, model.config.latent_channels, 6, 9, generator=torch.Generator().manual_seed(1))
    kwargs = dict(steps=5, eta=1.0, seed=7)
    on_cpu = denoise(model, cond, **kwargs)
    on_gpu = denoise(model.cuda(), cond.cuda(), **kwargs)
    again = denoise(model, cond.cuda(), **kwargs)
    assert torch.equal(on_gpu, again)  # the seed fixes the result on the GPU too
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("task", ["sr", "gen"])
def test_shipped_models_match_cpu(task):
    model = load_model(DEFAULT_MODELS[task])
    gpu = load_model(DEFAULT_MODELS[task], "cuda")
    if task == "sr":
        image = torch.from_numpy(smooth_image(np.random.default_rng(0), 40, 56)).permute(2, 0, 1)[None] / 255
        cpu_out = upscale(model, image, size=(187, 133))  # non-integer, non-square
        gpu_out = upscale(gpu, image, size=(187, 133))
        assert gpu_out.shape == (1, 3, 133, 187)
    else:
        cpu_out = generate(model, (72, 40), seed=3)
        gpu_out = generate(gpu, (72, 40), seed=3)
    assert psnr01(gpu_out, cpu_out) > 45


def test_bf16_autocast_on_cuda_stays_close():
    model = load_model(DEFAULT_MODELS["sr"], "cuda")
    image = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    fp32 = upscale(model, image, scale=4)
    bf16 = upscale(model, image, scale=4, dtype=torch.bfloat16)
    assert psnr01(bf16, fp32) > 35


def test_training_stages_run_on_cuda(tmp_path, image_dirs):  # noqa: F811
    common = dict(data=[str(image_dirs / "train")], val=str(image_dirs / "val"), steps=2, batch=4, crop=16,
                  warmup=1, log_every=1, save_every=2, val_every=2, val_steps=2, queries=8, config=dict(MICRO))
    path = None
    for stage, extra in (("autoencoder", {}), ("diffusion", {"x0_weight": 1.0}),
                         ("align", {"tune_decoder": True, "anchor": True, "t_max_frac": 1.0, "snr_min": 1.0})):
        trainer = Trainer(TrainArgs(stage=stage, out=str(tmp_path / stage), init=path and str(path),
                                    **common, **extra))
        assert trainer.device.type == "cuda"
        assert all(p.device.type == "cuda" for p in trainer.params.values())
        logs = trainer.train_step()
        assert torch.isfinite(logs["loss"]) and logs["loss"].device.type == "cuda"
        path = trainer.run()
    assert load_model(path).config.anchor
