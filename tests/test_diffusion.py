import pytest
import torch

from arbscale_core.config import ModelConfig
from arbscale_core.diffusion import alphas_cumprod, predict_x0, q_sample, snr
from arbscale_core.sampler import ddim_timesteps, sample_ddim
from arbscale_core.unet import UNet

from conftest import micro_config, micro_model

ABAR = alphas_cumprod(ModelConfig())


def test_schedule_is_decreasing_and_bounded():
    assert ABAR.shape == (1000,)
    assert torch.all(ABAR.diff() < 0)
    assert 0.99 < ABAR[0] < 1 and 0 < ABAR[-1] < 0.01


def test_q_sample_predict_x0_inverse():
    x0 = torch.randn(3, 4, 5, 6)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 500, 999])
    x_t = q_sample(x0, t, noise, ABAR)
    torch.testing.assert_close(predict_x0(x_t, t, noise, ABAR), x0, atol=1e-3, rtol=1e-4)
    assert torch.all(snr(t, ABAR).diff() < 0)


@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_ddim_timesteps(steps):
    ts = ddim_timesteps(steps, 1000)
    assert len(ts) == steps and ts[0] == 999 and ts == sorted(ts, reverse=True)
    assert min(ts) >= 0


def test_ddim_timesteps_rejects_bad_steps():
    for bad in (0, -1, 1001):
        with pytest.raises(ValueError, match="steps"):
            ddim_timesteps(bad, 1000)


def oracle_eps(target):
    """The exact eps-predictor when all data is the single point ``target``."""
    def model(x, t):
        a = ABAR[t].float().view(-1, 1, 1, 1)
        return (x - a.sqrt() * target) / (1 - a).sqrt()
    return model


@pytest.mark.parametrize("steps,eta", [(1, 0.0), (10, 0.0), (25, 1.0)])
def test_ddim_recovers_point_mass(steps, eta):
    target = torch.linspace(-1, 1, 2 * 3 * 4 * 5).view(2, 3, 4, 5)
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    out = sample_ddim(oracle_eps(target), noise, ABAR, steps=steps, eta=eta,
                      generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, target, atol=1e-3, rtol=1e-3)


def test_ddim_deterministic_per_seed_and_callback():
    model = micro_model("gen")
    unet = lambda x, t: model.unet(x, t)  # noqa: E731
    noise = torch.randn(1, 4, 6, 7, generator=torch.Generator().manual_seed(3))
    seen = []
    run = lambda seed, eta: sample_ddim(unet, noise, ABAR, steps=5, eta=eta,  # noqa: E731
                                        generator=torch.Generator().manual_seed(seed),
                                        callback=lambda i, n, x0: seen.append((i, n, x0.shape)))
    a, b, c = run(0, 1.0), run(0, 1.0), run(1, 1.0)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert seen[:5] == [(i, 5, (1, 4, 6, 7)) for i in range(1, 6)]
    assert torch.equal(run(0, 0.0), run(1, 0.0))  # eta=0 uses no fresh noise


def test_ddim_rejects_bad_eta():
    for eta in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eta"):
            sample_ddim(lambda x, t: x, torch.zeros(1, 1, 2, 2), ABAR, steps=2, eta=eta)


def test_callback_exception_cancels():
    class Stop(Exception):
        pass

    calls = []

    def cb(i, n, x0):
        calls.append(i)
        if i == 2:
            raise Stop

    with pytest.raises(Stop):
        sample_ddim(lambda x, t: torch.zeros_like(x), torch.zeros(1, 1, 2, 2), ABAR, steps=10, callback=cb)
    assert calls == [1, 2]


@pytest.mark.parametrize("hw", [(5, 7), (8, 8), (1, 3), (13, 2)])
def test_unet_any_latent_size(hw):
    cfg = micro_config("sr")
    unet = UNet(cfg)
    x = torch.randn(2, 4, *hw)
    out = unet(x, torch.tensor([3, 900]), torch.randn(2, 4, *hw))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="condition"):
        unet(x, torch.tensor([1, 2]))


def test_v_skip_eps_parameterisation():
    model = micro_model("sr", eps_param="v_skip")
    x = torch.randn(2, 4, 5, 6)
    cond = torch.randn(2, 4, 5, 6)
    t = torch.tensor([0, 999])
    a = ABAR[t].float().view(-1, 1, 1, 1)
    expected = a.sqrt() * model.unet(x, t, cond) + (1 - a).sqrt() * x
    torch.testing.assert_close(model.eps(x, t, cond), expected)
    # at the noisiest step eps is almost x_t itself: the U-Net only supplies a small correction
    assert (model.eps(x, t, cond)[1] - x[1]).abs().max() < 0.1 * x[1].abs().max()
