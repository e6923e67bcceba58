"""Band-by-band inference of the encoder's full-resolution levels: the same function as the plain
forward (to float32 rounding), at any band size, through borders, odd sizes and downsampling."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import arbscale_core.autoencoder as autoencoder
import arbscale_core.streaming as streaming
from arbscale_core.autoencoder import Encoder
from arbscale_core.config import preset
from arbscale_core.layers import ResBlock

from conftest import micro_config


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    # non-trivial norm affines, so a wrong statistic or a missed shift shows
    torch.manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.GroupNorm):
            torch.nn.init.normal_(m.weight, 1, 0.3)
            torch.nn.init.normal_(m.bias, 0, 0.3)
    return module.eval()


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    return _randomised(Encoder(preset("tiny")))


def _encode(enc, x, stream: bool, band_rows: int = 5):
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(autoencoder, "STREAM_PIXELS", 0 if stream else 1 << 40)
        mp.setattr(streaming, "BAND_ELEMENTS", band_rows * 32 * x.shape[-1])
        return enc(x)


@pytest.mark.parametrize("h,w", [(36, 52), (64, 64), (20, 100), (8, 8)])
def test_streamed_encoder_equals_plain_forward(tiny_encoder, h, w):
    torch.manual_seed(h * w)
    x = torch.rand(1, 3, h, w) * 2 - 1
    plain, streamed = _encode(tiny_encoder, x, False), _encode(tiny_encoder, x, True)
    assert streamed.shape == plain.shape
    assert torch.allclose(streamed, plain, atol=2e-5, rtol=1e-5), (streamed - plain).abs().max()


@settings(max_examples=15, deadline=None)
@given(h=st.integers(2, 12).map(lambda k: 4 * k), w=st.integers(2, 12).map(lambda k: 4 * k),
       band=st.integers(1, 9), batch=st.integers(1, 2))
def test_any_band_size_gives_the_same_latent(h, w, band, batch):
    torch.manual_seed(0)
    enc = _randomised(Encoder(micro_config()))
    x = torch.rand(batch, 3, h, w) * 2 - 1
    assert torch.allclose(_encode(enc, x, True, band), _encode(enc, x, False), atol=1e-5)


def test_resblock_rows_with_a_channel_changing_skip():
    block = _randomised(ResBlock(8, 16))
    x = torch.randn(2, 8, 23, 17)
    with torch.no_grad():
        rows = streaming.resblock_rows(block, streaming.tensor_rows(x), 4)
        out = streaming.materialize(rows, 3)
        assert torch.allclose(out, block(x), atol=1e-5)


def test_large_inputs_stream_and_stay_exact(monkeypatch):
    """Over STREAM_PIXELS the encoder streams by itself (no flag), and gives what the plain forward does."""
    enc = _randomised(Encoder(micro_config()))
    calls = []
    real = autoencoder.encoder_levels
    monkeypatch.setattr(autoencoder, "encoder_levels", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(autoencoder, "STREAM_PIXELS", 32 * 32)
    x = torch.rand(1, 3, 40, 36) * 2 - 1
    with torch.no_grad():
        streamed = enc(x)
        small = enc(x[..., :32, :32])
    assert calls == [1]  # the 40x36 input streamed, the 32x32 one did not
    monkeypatch.setattr(autoencoder, "STREAM_PIXELS", 1 << 40)
    with torch.no_grad():
        assert torch.allclose(streamed, enc(x), atol=1e-5)
    # with gradients (training) the plain forward always runs
    enc(x[..., :32, :32]).sum().backward()
    assert small.shape == (1, 4, 8, 8)


@pytest.mark.parametrize("changes", [{}, {"lr_features": 6, "lr_blocks": 2, "detail_head": True},
                                     {"ae_shortcut": True, "dec_res_blocks": 2}])
@pytest.mark.parametrize("detail", [False, True])
def test_streamed_first_layer_map_equals_plain(monkeypatch, changes, detail):
    from arbscale_core.model import ArbScaleModel
    import arbscale_core.model as model_module

    torch.manual_seed(0)
    model = _randomised(ArbScaleModel(micro_config(**changes)))
    latent = torch.randn(2, model.config.latent_channels, 19, 23)
    lr = torch.rand(2, 3, 15, 17) * 2 - 1  # resized to the latent grid on the way
    with torch.no_grad():
        plain = model.first_layer_map(latent, lr, detail)
        monkeypatch.setattr(model_module, "STREAM_CELLS", 0)
        monkeypatch.setattr(streaming, "BAND_ELEMENTS", 16 * 23 * 3)  # 3-row bands
        streamed = model.first_layer_map(latent, lr, detail)
    assert streamed.shape == plain.shape
    assert torch.allclose(streamed, plain, atol=2e-5), (streamed - plain).abs().max()
    if model.reads_lr:
        with torch.no_grad(), pytest.raises(ValueError, match="reads the LR image"):
            model.first_layer_map(latent, None, detail)
