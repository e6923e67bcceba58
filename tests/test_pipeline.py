import math

import numpy as np
import pytest
import torch

from arbscale_core.pipeline import (decode, decode_uint8, denoise, encode_condition, generate,
                                    output_size, sr_guide, upscale)


@pytest.mark.parametrize("scale,expected", [(3.7, (37, 48)), (2, (20, 26)), (0.5, (5, 7)), (200, (2000, 2600))])
def test_output_size_from_scale(scale, expected):
    assert output_size(10, 13, scale=scale) == expected


@pytest.mark.parametrize("bad", [0, -2, float("nan"), float("inf"), "abc", None])
def test_output_size_rejects_bad_scale(bad):
    with pytest.raises(ValueError):
        output_size(10, 10, scale=bad) if bad is not None else output_size(10, 10)


def test_output_size_rejects_bad_size():
    for size in [(0, 5), (5, -1), (2.5, 3)]:
        with pytest.raises(ValueError, match="size"):
            output_size(4, 4, size=size)
    with pytest.raises(ValueError, match="too large"):
        output_size(4, 4, size=(100_000, 100_000))
    with pytest.raises(ValueError, match="not both"):
        output_size(4, 4, scale=2, size=(3, 3))


@pytest.mark.parametrize("scale", [3.7, 1.5, 0.6])
def test_upscale_non_square_non_integer(sr_model, scale):
    img = torch.rand(2, 3, 11, 17)
    out = upscale(sr_model, img, scale=scale, steps=2)
    assert out.shape == (2, 3, math.floor(11 * scale + 0.5), math.floor(17 * scale + 0.5))
    assert out.min() >= 0 and out.max() <= 1


def test_upscale_to_size_and_determinism(sr_model):
    img = torch.rand(1, 3, 9, 14)
    a = upscale(sr_model, img, size=(50, 21), steps=3, eta=1.0, seed=5)
    b = upscale(sr_model, img, size=(50, 21), steps=3, eta=1.0, seed=5)
    c = upscale(sr_model, img, size=(50, 21), steps=3, eta=1.0, seed=6)
    assert a.shape == (1, 3, 21, 50)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_diffusion_latent_is_lr_sized(sr_model):
    cond = encode_condition(sr_model, torch.rand(1, 3, 11, 17))
    assert cond.shape == (1, 4, 11, 17)  # cond_scale 4 = f: diffusion at LR size for any output


def test_one_latent_many_sizes(sr_model):
    img = torch.rand(1, 3, 8, 12)
    latent = denoise(sr_model, encode_condition(sr_model, img), steps=2, seed=1)
    sizes = [(16, 24), (37, 50), (80, 120)]
    outs = [decode(sr_model, latent, h, w) for h, w in sizes]
    for (h, w), out in zip(sizes, outs):
        assert out.shape == (1, 3, h, w)
    # the same latent decoded through the full pipeline gives the same picture
    plain = upscale(sr_model, img, size=(50, 37), steps=2, seed=1, consistency=False)
    torch.testing.assert_close(plain, outs[1])
    guide = sr_guide(sr_model, img, encode_condition(sr_model, img))
    torch.testing.assert_close(upscale(sr_model, img, size=(50, 37), steps=2, seed=1),
                               decode(sr_model, latent, 37, 50, guide=guide))


def test_decode_uint8_matches_float(sr_model):
    latent = torch.randn(1, 4, 5, 7)
    f = decode(sr_model, latent, 23, 31, chunk=100)
    u = decode_uint8(sr_model, latent, 23, 31, chunk=100)
    assert u.dtype == np.uint8 and u.shape == (1, 23, 31, 3)
    ref = (f * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(u.astype(int) - ref.astype(int)).max() <= 1


def test_generate_any_size(gen_model):
    out = generate(gen_model, (45, 19), n=2, steps=2, seed=3)
    assert out.shape == (2, 3, 19, 45)
    assert not torch.equal(out[0], out[1])


def test_wrong_task_errors(sr_model, gen_model):
    with pytest.raises(ValueError, match="generation model"):
        upscale(gen_model, torch.rand(1, 3, 4, 4), scale=2)
    with pytest.raises(ValueError, match="SR model"):
        generate(sr_model, (8, 8))


def test_bf16_pipeline_close(sr_model):
    img = torch.rand(1, 3, 8, 8)
    a = upscale(sr_model, img, scale=2.5, steps=2)
    b = upscale(sr_model, img, scale=2.5, steps=2, dtype=torch.bfloat16)
    assert math.isfinite(float(b.sum()))
    assert (a - b).abs().max() < 0.1


def test_residual_model_denoises_around_condition():
    """Residual SR: an eps-model that predicts "no residual" returns exactly the condition latent."""
    from arbscale_core.diffusion import alphas_cumprod

    from conftest import micro_model

    model = micro_model("sr", residual=True, residual_scale=2.5)
    abar = alphas_cumprod(model.config).float()

    def zero_residual_eps(x, t, cond=None):
        a = abar[t].view(-1, 1, 1, 1)
        return x / (1 - a).sqrt()  # the exact eps when x0 (the residual) is 0

    model.unet.forward = zero_residual_eps
    cond = encode_condition(model, torch.rand(1, 3, 7, 9))
    for steps, eta in ((1, 0.0), (8, 1.0)):
        latent = denoise(model, cond, steps=steps, eta=eta, seed=2)
        torch.testing.assert_close(latent, cond, atol=1e-4, rtol=1e-4)


def test_v_skip_model_upscales():
    from conftest import micro_model

    model = micro_model("sr", eps_param="v_skip", residual=True, residual_scale=2.0)
    out = upscale(model, torch.rand(1, 3, 6, 9), scale=2.5, steps=3)
    assert out.shape == (1, 3, 15, 23) and torch.isfinite(out).all()


def test_anchor_makes_unchanged_latent_reproduce_condition_image(sr_model):
    """An anchored model decoding the condition latent itself at the condition size returns the
    condition image (the bicubic-resized LR) exactly: the autoencoder's error is added back."""
    from arbscale_core.imageops import resize
    from arbscale_core.model import ArbScaleModel
    from arbscale_core.pipeline import SRGuide, condition_anchor

    assert condition_anchor(sr_model, torch.rand(1, 3, 6, 5), torch.zeros(1, 4, 6, 5)) is None
    model = ArbScaleModel(sr_model.config.replace(anchor=True)).eval()
    model.load_state_dict(sr_model.state_dict())
    lr = torch.rand(2, 3, 7, 9)
    cond = encode_condition(model, lr)
    anchor = condition_anchor(model, lr, cond)
    ch, cw = model.condition_size(7, 9)
    assert anchor.shape == (2, 3, ch, cw)
    expected = ((resize(lr * 2 - 1, ch, cw).clamp(-1, 1) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(decode(model, cond, ch, cw, guide=SRGuide(anchor=anchor)), expected, atol=1e-5, rtol=0)
    # without the anchor the (random) autoencoder is far off
    assert (decode(model, cond, ch, cw) - expected).abs().mean() > 0.05


def test_anchor_bands_equal_whole_resize(sr_model):
    """Banded decoding adds exactly resize(anchor) to each band, at any output size."""
    from arbscale_core.imageops import resize
    from arbscale_core.pipeline import SRGuide

    latent = torch.randn(1, 4, 5, 6)
    anchor = torch.randn(1, 3, 20, 24) * 0.1
    for h, w in [(37, 29), (12, 50)]:
        with torch.no_grad():
            plain = sr_model.decode(latent, h, w)  # -1..1, unclamped
        banded = decode(sr_model, latent, h, w, chunk=w * 3, guide=SRGuide(anchor=anchor))
        expected = ((plain + resize(anchor, h, w) + 1) / 2).clamp(0, 1)
        torch.testing.assert_close(banded, expected, atol=1e-5, rtol=0)


def _lr_error(out: torch.Tensor, lr: torch.Tensor) -> float:
    from arbscale_core.imageops import resize

    return float((resize(out * 2 - 1, *lr.shape[-2:]) - (lr * 2 - 1)).abs().mean())


@pytest.mark.parametrize("size", [(23, 31), (40, 40), (90, 70)])  # (H, W): x~2.5, x4 non-square, x10 and x7
def test_consistency_projection_gives_back_the_lr(sr_model, size):
    """Brought back to the LR size, the projected output matches the input (the random model alone
    is far off); above CONSISTENCY_PROXY x the LR, measuring on the proxy still gets close."""
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 9, 10) * 0.6 + 0.2
    h, w = size
    plain = upscale(sr_model, lr, size=(w, h), steps=1, consistency=False)
    projected = upscale(sr_model, lr, size=(w, h), steps=1)
    before, after = _lr_error(plain, lr), _lr_error(projected, lr)
    assert before > 0.05
    assert after < before / 10, (before, after)


def test_consistency_cached_and_two_pass_decoding_agree(sr_model, monkeypatch):
    """Up to the proxy scale the measured decode is kept; decoding twice gives the same image, in
    bands from any start row."""
    import arbscale_core.pipeline as pipeline

    lr = torch.rand(1, 3, 8, 11)
    latent = denoise(sr_model, encode_condition(sr_model, lr), steps=1)
    guide = sr_guide(sr_model, lr, encode_condition(sr_model, lr))
    kept = decode(sr_model, latent, 29, 41, chunk=41 * 4, guide=guide)
    monkeypatch.setattr(pipeline, "CONSISTENCY_CACHE_PIXELS", 0)
    twice = decode(sr_model, latent, 29, 41, chunk=41 * 4, guide=guide)
    torch.testing.assert_close(kept, twice, atol=1e-5, rtol=0)
    tail = [b for _, _, b in pipeline.decode_bands(sr_model, latent, 29, 41, 41 * 4, start_row=12, guide=guide)]
    torch.testing.assert_close(torch.cat(tail, dim=2), kept[:, :, 12:], atol=1e-5, rtol=0)


def test_consistency_measures_on_a_bounded_proxy(sr_model):
    """At x12 the measuring pass decodes CONSISTENCY_PROXY x the LR rows, not the output's, and
    progress counts both passes; outputs smaller than the LR are left alone."""
    from arbscale_core.pipeline import CONSISTENCY_PROXY

    lr = torch.rand(1, 3, 6, 7)
    cond = encode_condition(sr_model, lr)
    latent = denoise(sr_model, cond, steps=1)
    guide = sr_guide(sr_model, lr, cond)
    seen = []
    decode(sr_model, latent, 72, 84, chunk=84 * 8, guide=guide, progress=lambda d, t: seen.append((d, t)))
    total = CONSISTENCY_PROXY * 6 + 72
    assert seen[-1] == (total, total) and all(t == total for _, t in seen)
    assert any(d == CONSISTENCY_PROXY * 6 for d, _ in seen)  # the proxy pass ended there
    # rows within the proxy, columns beyond it: the output is decoded twice, and counted so
    seen.clear()
    decode(sr_model, latent, 20, 84, chunk=84 * 4, guide=guide, progress=lambda d, t: seen.append((d, t)))
    assert {t for _, t in seen} == {40} and seen[-1] == (40, 40)
    small = decode(sr_model, latent, 4, 5, guide=guide)
    torch.testing.assert_close(small, decode(sr_model, latent, 4, 5, guide=sr_guide(sr_model, lr, cond, False)))


def test_self_ensemble_transforms_round_trip_and_average(sr_model):
    """Every dihedral transform is undone exactly; an ensemble of 2 is the mean of the plain run and
    the run on the transposed input, transposed back."""
    from arbscale_core.pipeline import DIHEDRAL, dihedral, upscale_tensor

    x = torch.rand(1, 3, 5, 7)
    outs = {dihedral(x, t).shape[-2:] for t in DIHEDRAL}
    assert outs == {(5, 7), (7, 5)}
    assert len({tuple(dihedral(x, t).flatten().tolist()) for t in DIHEDRAL}) == 8
    for t in DIHEDRAL:
        assert torch.equal(dihedral(dihedral(x, t), t, inverse=True), x)
    lr = torch.rand(1, 3, 6, 9)
    one = upscale_tensor(sr_model, lr, 14, 20, steps=1)
    transposed = upscale_tensor(sr_model, lr.transpose(-2, -1), 20, 14, steps=1).transpose(-2, -1)
    torch.testing.assert_close(upscale_tensor(sr_model, lr, 14, 20, steps=1, ensemble=2), (one + transposed) / 2)
    with pytest.raises(ValueError, match="ensemble"):
        upscale_tensor(sr_model, lr, 14, 20, ensemble=3)


def _lr_reading(sr_model, zero_branch=False):
    """The micro SR model with an LR-reading decoder added (its other weights shared)."""
    from arbscale_core.model import ArbScaleModel

    torch.manual_seed(1)
    model = ArbScaleModel(sr_model.config.replace(lr_features=6, lr_blocks=1)).eval()
    missing, unexpected = model.load_state_dict(sr_model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("lr_encoder.", "implicit.first_lr.")) for k in missing)
    if not zero_branch:
        torch.nn.init.normal_(model.implicit.first_lr.weight, std=0.2)
    return model


def test_lr_reading_decoder_adds_its_output_to_the_resized_lr(sr_model):
    """With its LR branch at zero, an LR-reading decoder gives the plain decoder's output plus the
    LR image resized to the output (its output is a residual over bicubic)."""
    from arbscale_core.imageops import resize

    model = _lr_reading(sr_model, zero_branch=True)
    img = torch.rand(1, 3, 6, 9)
    cond = encode_condition(sr_model, img)
    latent = denoise(sr_model, cond, steps=2)
    expected = ((sr_model.decode(latent, 15, 22) + resize(img * 2 - 1, 15, 22) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(decode(model, latent, 15, 22, guide=sr_guide(model, img, cond, False)),
                               expected, atol=1e-5, rtol=0)


def test_lr_reading_decoder_reads_the_lr_image(sr_model):
    model = _lr_reading(sr_model)
    img = torch.rand(1, 3, 6, 9)
    cond = encode_condition(model, img)
    latent = denoise(model, cond, steps=2)
    with pytest.raises(ValueError, match="reads the LR image"):
        decode(model, latent, 15, 22)
    plain = decode(model, latent, 15, 22, guide=sr_guide(model, img, cond, consistency=False))
    other = decode(model, latent, 15, 22, guide=sr_guide(model, img.flip(-1), cond, consistency=False))
    assert (plain - other).abs().max() > 1e-3  # same latent, another LR image: another output
    # the projection still works on top, and the public entry points pass the LR along
    projected = decode(model, latent, 15, 22, guide=sr_guide(model, img, cond))
    assert not torch.allclose(projected, plain)
    out = upscale(model, img, size=(22, 15), steps=2)
    torch.testing.assert_close(out, projected)
    assert upscale(model, img, scale=3.3, steps=1, ensemble=2).shape == (1, 3, 20, 30)


def test_modes_set_steps_and_eta(sr_model):
    from arbscale_core.pipeline import DETAIL_ETA, DETAIL_STEPS, MODES, default_steps, mode_sampling

    assert MODES == ("fidelity", "detail")
    assert mode_sampling(sr_model, "fidelity") == (default_steps(sr_model), 0.0)
    assert mode_sampling(sr_model, "detail") == (DETAIL_STEPS, DETAIL_ETA)
    assert mode_sampling(sr_model, "detail", steps=4) == (4, DETAIL_ETA)  # given values override
    assert mode_sampling(sr_model, "detail", eta=0.3) == (DETAIL_STEPS, 0.3)
    with pytest.raises(ValueError, match="mode must be one of fidelity, detail"):
        mode_sampling(sr_model, "sharp")


def test_model_file_names_its_detail_mode(sr_model, monkeypatch):
    from arbscale_core.pipeline import mode_sampling

    monkeypatch.setattr(sr_model, "training_info", {"default_steps": 1, "detail_steps": 6, "detail_eta": 0.5},
                        raising=False)
    assert mode_sampling(sr_model, "fidelity") == (1, 0.0)
    assert mode_sampling(sr_model, "detail") == (6, 0.5)


def test_upscale_modes(sr_model):
    """fidelity is deterministic over seeds' noise only through the 1-step estimate; detail samples:
    its seeds differ, and it equals upscale_tensor at the mode's steps and eta."""
    from arbscale_core.pipeline import DETAIL_ETA, DETAIL_STEPS, upscale, upscale_tensor

    img = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    detail = [upscale(sr_model, img, 2.0, mode="detail", seed=s) for s in (0, 1)]
    assert (detail[0] - detail[1]).abs().mean() > 1e-4
    same = upscale_tensor(sr_model, img, 24, 20, steps=DETAIL_STEPS, eta=DETAIL_ETA, seed=0)
    assert torch.allclose(detail[0], same)
    explicit = upscale(sr_model, img, 2.0, mode="detail", steps=2, eta=0.0, seed=0)
    assert torch.allclose(explicit, upscale_tensor(sr_model, img, 24, 20, steps=2, eta=0.0, seed=0))


def test_detail_head_decodes_the_detail_mode(sr_model):
    """A model with a detail head (config.detail_head) decodes the detail mode with it and the
    fidelity mode with its default head; without one, both modes use the one head."""
    from arbscale_core.model import ArbScaleModel
    from arbscale_core.pipeline import DETAIL_ETA, DETAIL_STEPS, upscale_tensor

    base = _lr_reading(sr_model)
    with pytest.raises(ValueError, match="detail_head .* needs lr_features"):
        sr_model.config.replace(detail_head=True)
    model = ArbScaleModel(base.config.replace(detail_head=True)).eval()
    state = base.state_dict()
    state.update({f"detail_{k}": v.clone() for k, v in state.items() if k.startswith(("lr_encoder.", "implicit."))})
    model.load_state_dict(state)
    img = torch.rand(1, 3, 6, 9, generator=torch.Generator().manual_seed(2))
    # a detail head that is a copy of the default one decodes the same pixels
    torch.testing.assert_close(upscale(model, img, 2.0, mode="detail", seed=3),
                               upscale(base, img, 2.0, mode="detail", seed=3))
    with torch.no_grad():
        torch.nn.init.normal_(model.detail_implicit.mlp[-1].weight, std=0.5)
    fidelity = upscale(model, img, 2.0)
    torch.testing.assert_close(fidelity, upscale(base, img, 2.0))  # the default head is untouched
    detail = upscale(model, img, 2.0, mode="detail", seed=3)
    assert (detail - upscale(base, img, 2.0, mode="detail", seed=3)).abs().max() > 1e-3
    same = upscale_tensor(model, img, 12, 18, steps=DETAIL_STEPS, eta=DETAIL_ETA, seed=3, detail=True)
    torch.testing.assert_close(detail, same)
