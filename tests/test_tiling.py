"""Tiled latent denoising: coverage, exact blending, no seams, bounded U-Net input, real model."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from arbscale_core.pipeline import decode, denoise, encode_condition, sr_guide
from arbscale_core.tiling import tile_layout, tile_starts, tiled_eps

ROOT = Path(__file__).resolve().parents[1]


@given(size=st.integers(1, 400), tile=st.integers(1, 96), overlap=st.integers(0, 95))
def test_tile_starts_cover_with_overlap(size, tile, overlap):
    if overlap >= tile and tile < size:
        with pytest.raises(ValueError):
            tile_starts(size, tile, overlap)
        return
    length, starts = tile_layout(size, tile, overlap)
    assert length <= min(tile, size)
    assert starts[0] == 0
    assert starts[-1] + length == size
    for a, b in zip(starts, starts[1:]):
        assert a < b and a + length - b >= overlap  # neighbours share at least ``overlap`` cells
    # the fewest tiles: one fewer could not cover size with that overlap
    n = len(starts)
    assert n == 1 or (n - 1) * tile - (n - 2) * overlap < size


def test_tiles_shrink_to_the_fewest_that_cover():
    assert tile_layout(512, 256, 32) == (192, [0, 160, 320])
    assert tile_layout(300, 256, 32) == (166, [0, 134])
    assert tile_layout(200, 256, 32) == (200, [0])


def test_pointwise_model_is_reproduced_exactly():
    """Blend weights are normalised: a model without spatial context gives the untiled result."""
    x = torch.randn(2, 4, 37, 53)
    cond = torch.randn(2, 4, 37, 53)
    fn = lambda xs, cs: torch.tanh(xs) * 2 + cs  # noqa: E731
    assert torch.allclose(tiled_eps(fn, x, cond, 16, 5), fn(x, cond), atol=1e-6)


def _box_blur(xs, cs):  # zero padding: tile borders darken, as a conv net's borders do
    c = xs.shape[1]
    return F.conv2d(xs, torch.full((c, 1, 7, 7), 1 / 49), padding=3, groups=c)


def test_blending_removes_seams():
    x = torch.ones(1, 1, 64, 64)
    full = _box_blur(x, None)
    interior = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    hard = (tiled_eps(_box_blur, x, None, 32, 0) - full)[interior].abs()
    blended = (tiled_eps(_box_blur, x, None, 32, 12) - full)[interior].abs()
    assert hard.max() > 0.3  # a visible line where tiles meet without overlap
    assert blended.max() < 0.1 * hard.max()


def test_denoise_tiles_bound_unet_input(sr_model, monkeypatch):
    seen = []
    original = sr_model.eps

    def spy(x, t, cond=None):
        seen.append(tuple(x.shape[-2:]))
        return original(x, t, cond)

    monkeypatch.setattr(sr_model, "eps", spy)
    cond = torch.randn(1, sr_model.config.latent_channels, 50, 70)
    z = denoise(sr_model, cond, steps=2, tile=24, tile_overlap=8)
    assert z.shape == cond.shape and torch.isfinite(z).all()
    assert max(max(s) for s in seen) <= 24
    assert len(seen) == 2 * len(tile_starts(50, 24, 8)) * len(tile_starts(70, 24, 8))


def test_bad_tile_is_an_error(sr_model):
    with pytest.raises(ValueError, match="tile"):
        denoise(sr_model, torch.randn(1, sr_model.config.latent_channels, 8, 8), steps=1, tile=0)


def test_tiled_upscale_close_to_untiled_shipped_model():
    """The shipped SR model on a real photo crop: tiling (4 x 4 tiles) changes the result only a
    little, because tiles see less context than the whole latent, not because of seams."""
    from arbscale_core.checkpoint import load_model
    from arbscale_core.imageops import load_image

    model = load_model(ROOT / "arbscale_core/weights/arbscale_sr_tiny.safetensors").eval()
    lr = load_image(ROOT / "assets/building_lr.png")[..., :96, :96]
    cond = encode_condition(model, lr)
    guide = sr_guide(model, lr, cond, consistency=False)  # the LR image, which the decoder reads
    outs = [decode(model, denoise(model, cond, steps=3, seed=0, tile=tile, tile_overlap=16), 192, 192, guide=guide)
            for tile in (256, 36)]
    mse = float(((outs[0] - outs[1]) ** 2).mean())
    assert 10 * np.log10(1 / mse) > 30


def test_denoise_halves_tile_on_oom(sr_model, monkeypatch, caplog):
    """A (simulated) CUDA out-of-memory on a U-Net call larger than 20 cells halves the tile size
    and redoes the step, with a warning; the result is the one a small tile gives directly."""
    cond = torch.randn(1, sr_model.config.latent_channels, 40, 40)
    original = sr_model.eps

    def picky(x, t, c=None):
        if max(x.shape[-2:]) > 20:
            raise torch.cuda.OutOfMemoryError("simulated")
        return original(x, t, c)

    monkeypatch.setattr(sr_model, "eps", picky)
    with caplog.at_level("WARNING", logger="arbscale"):
        z = denoise(sr_model, cond, steps=2, tile=64, tile_overlap=8)
    assert "retrying with 20-cell tiles" in caplog.text
    monkeypatch.setattr(sr_model, "eps", original)
    torch.testing.assert_close(z, denoise(sr_model, cond, steps=2, tile=20, tile_overlap=8))
