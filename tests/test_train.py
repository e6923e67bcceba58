import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from arbscale_core.checkpoint import load_model
from arbscale_core.pipeline import upscale
from arbscale_core.train import TrainArgs, train
from arbscale_core.train.__main__ import parse
from arbscale_core.train.trainer import Trainer

from conftest import MICRO

ROOT = Path(__file__).resolve().parents[1]


def smooth_image(rng, h, w):
    """Random smooth colour fields with some edges: cheap stand-ins for photos."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3))
    for c in range(3):
        a, b, f = rng.uniform(-1, 1, 3)
        img[..., c] = 0.5 + 0.3 * np.sin(8 * f * xx + 5 * a * yy) + 0.2 * (xx > b)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        (root / split).mkdir()
        for i in range(n):
            Image.fromarray(smooth_image(rng, 70 + 5 * i, 90)).save(root / split / f"{i}.png")
    (root / "train" / "broken.png").write_bytes(b"not a png")
    return root


def args_for(stage, out, data, **kw):
    base = dict(stage=stage, data=[str(data / "train")], out=str(out), steps=3, batch=4, crop=16,
                warmup=2, log_every=1, save_every=2, val_every=2, val_steps=2, queries=8, config=dict(MICRO))
    base.update(kw)
    return TrainArgs(**base)


def test_three_stages_end_to_end(tmp_path, image_dirs):
    with pytest.warns(UserWarning, match="broken.png"):
        ae = train(args_for("autoencoder", tmp_path / "ae", image_dirs, val=str(image_dirs / "val")))
    model = load_model(ae)
    assert model.config.latent_scale != 1.0  # measured from the data
    log = (tmp_path / "ae" / "log.csv").read_text()
    assert "val_recon_psnr" in log and "l1" in log

    sr = train(args_for("diffusion", tmp_path / "sr", image_dirs, init=str(ae), val=str(image_dirs / "val"),
                        x0_weight=1.0))
    sr_model = load_model(sr)
    assert sr_model.config.task == "sr"
    # the autoencoder is carried over unchanged
    torch.testing.assert_close(sr_model.encoder.state_dict(), model.encoder.state_dict())
    sr_log = (tmp_path / "sr" / "log.csv").read_text()
    assert "val_sr_x4_psnr" in sr_log and ",x0," in sr_log

    gen = train(args_for("diffusion", tmp_path / "gen", image_dirs, init=str(ae), task="gen"))
    assert load_model(gen).config.task == "gen"

    al = train(args_for("align", tmp_path / "al", image_dirs, init=str(sr)))
    aligned = load_model(al)
    torch.testing.assert_close(aligned.implicit.state_dict(), sr_model.implicit.state_dict())  # decoder frozen
    diff = sum(float((a - b).detach().abs().sum()) for a, b in zip(aligned.unet.parameters(), sr_model.unet.parameters()))
    assert diff > 0  # the U-Net was trained
    out = upscale(aligned, torch.rand(1, 3, 9, 7), scale=2.5, steps=2)
    assert out.shape == (1, 3, 23, 18) and torch.isfinite(out).all()


def test_align_gradients_reach_unet_through_frozen_decoder(tmp_path, image_dirs):
    ae = train(args_for("autoencoder", tmp_path / "ae", image_dirs, steps=1))
    sr = train(args_for("diffusion", tmp_path / "sr", image_dirs, init=str(ae), steps=1))
    trainer = Trainer(args_for("align", tmp_path / "al", image_dirs, init=str(sr), lambda_dm=0.0))
    crops = trainer.data.random_crops(4, 16, torch.Generator().manual_seed(0)).to(trainer.device)
    loss, logs = trainer.loss(crops)
    loss.backward()
    assert float(logs["rec"]) > 0
    grads = [p.grad for p in trainer.model.unet.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0  # only L_rec: via the decoder
    assert all(p.grad is None for p in trainer.model.implicit.parameters())


def test_resume_is_bit_for_bit(tmp_path, image_dirs):
    straight = train(args_for("autoencoder", tmp_path / "a", image_dirs, steps=4))
    killed = Trainer(args_for("autoencoder", tmp_path / "b", image_dirs, steps=4))
    killed.train_step()
    killed.train_step()
    killed.save_state()
    del killed  # a run that died after its step-2 checkpoint
    resumed = Trainer(args_for("autoencoder", tmp_path / "b", image_dirs, steps=4))
    assert resumed.step == 2
    resumed.run()
    a = load_file(str(tmp_path / "a" / "state.safetensors"))
    b = load_file(str(tmp_path / "b" / "state.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        if resumed.device.type == "cpu":
            assert torch.equal(a[k], b[k]), k
        else:  # cuDNN picks its kernels per process and some backward passes use atomics
            torch.testing.assert_close(a[k], b[k], atol=1e-3, rtol=1e-3, msg=k)
    assert straight.exists()


def test_ddp_two_ranks_match_single_process(tmp_path, image_dirs):
    common = ["autoencoder", "--data", str(image_dirs / "train"), "--steps", "3", "--batch", "4", "--crop", "16",
              "--warmup", "2", "--queries", "8", "--save-every", "3", "--threads", "1"]
    for k, v in MICRO.items():
        common += ["--config", f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun picks a free port itself (no race with another process)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "arbscale_core.train", *common,
                          "--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "arbscale_core.train", *common, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ranks = __import__("json").loads((tmp_path / "ddp" / "ranks.json").read_text())
    assert ranks["world"] == 2 and len(set(ranks["weights_sha256"])) == 1
    half = subprocess.run([sys.executable, "-m", "arbscale_core.train", *common, "--batch", "2",
                           "--out", str(tmp_path / "half")], env=env, capture_output=True, text=True, timeout=300)
    assert half.returncode == 0, half.stderr[-3000:]
    runs = {name: load_file(str(tmp_path / name / "state.safetensors")) for name in ("ddp", "one", "half")}
    init = Trainer(args_for("autoencoder", tmp_path / "fresh", image_dirs, steps=3)).model.state_dict()

    def dist(x, y):
        return sum(float((x["model." + k] - y["model." + k]).double().pow(2).sum()) for k in init) ** 0.5

    start = {"model." + k: v for k, v in init.items()}
    moved = dist(runs["one"], start)
    # Same global batch => the same update, up to float reduction order. Adam turns the rounding
    # noise of exactly-zero gradients (biases ahead of a GroupNorm) into lr-sized steps, so compare
    # against how far a run with other data lands, not against zero.
    assert moved > 1e-3
    assert dist(runs["ddp"], runs["one"]) < 0.01 * moved
    assert dist(runs["half"], runs["one"]) > 0.1 * moved


def test_cli_config_override_parsing():
    args = parse(["autoencoder", "--data", "d", "--out", "o", "--config", "mlp_hidden=[8,8]",
                  "--config", "feat_unfold=false"])
    assert args.config == {"mlp_hidden": (8, 8), "feat_unfold": False}


def test_stage2_needs_init(tmp_path, image_dirs):
    with pytest.raises(ValueError, match="needs --init"):
        train(args_for("diffusion", tmp_path / "x", image_dirs))


def test_x0_term_adds_to_eps_loss(tmp_path, image_dirs):
    ae = train(args_for("autoencoder", tmp_path / "ae", image_dirs, steps=1))
    trainer = Trainer(args_for("diffusion", tmp_path / "sr", image_dirs, init=str(ae), x0_weight=0.5))
    crops = trainer.data.random_crops(4, 16, torch.Generator().manual_seed(0)).to(trainer.device)
    with torch.no_grad():
        loss, logs = trainer.loss(crops)
    assert float(logs["x0"]) > 0
    assert float(loss) == pytest.approx(float(logs["eps"]) + 0.5 * float(logs["x0"]), rel=1e-5)


def test_anchored_align_tunes_decoder_and_ships_anchor(tmp_path, image_dirs):
    """--anchor --tune-decoder --default-steps 1: the saved model is anchored, its implicit decoder
    was trained, and the file carries its own sampling default."""
    ae = train(args_for("autoencoder", tmp_path / "ae", image_dirs, steps=1))
    sr = train(args_for("diffusion", tmp_path / "sr", image_dirs, init=str(ae), steps=1))
    al = train(args_for("align", tmp_path / "al", image_dirs, init=str(sr), anchor=True, tune_decoder=True,
                        snr_min=1.0, t_max_frac=0.5, rec_min_t=999, steps=2, val=str(image_dirs / "val"),
                        default_steps=1))
    before, after = load_model(sr), load_model(al)
    assert after.config.anchor and not before.config.anchor
    from arbscale_core.pipeline import DEFAULT_STEPS, default_steps

    assert default_steps(after) == 1 and default_steps(before) == DEFAULT_STEPS["sr"]
    from arbscale_core.checkpoint import read_config

    lineage = read_config(al)[1]
    assert lineage["stage"] == "align" and lineage["init_training"]["stage"] == "diffusion"
    assert lineage["init_training"]["init_training"]["stage"] == "autoencoder"
    changed = sum(float((a - b).detach().abs().sum()) for a, b in zip(after.implicit.parameters(), before.implicit.parameters()))
    assert changed > 0
    assert "val_sr_x4_psnr" in (tmp_path / "al" / "log.csv").read_text()


def test_t_max_frac_draws_last_timestep(tmp_path, image_dirs):
    ae = train(args_for("autoencoder", tmp_path / "ae", image_dirs, steps=1))
    trainer = Trainer(args_for("diffusion", tmp_path / "sr", image_dirs, init=str(ae), t_max_frac=0.5))
    t, _, _ = trainer.loss.draw(4000, (4, 2, 2))
    share = float((t == trainer.model.config.train_timesteps - 1).float().mean())
    assert 0.45 < share < 0.55


def test_minutes_budget_stops_the_run_and_ends_the_schedule(tmp_path, image_dirs):
    args = args_for("autoencoder", tmp_path / "ae", image_dirs, steps=10_000, minutes=1e-6, warmup=0,
                    val=str(image_dirs / "val"))
    trainer = Trainer(args)
    path = trainer.run()
    assert trainer.step == 1  # the budget was spent by the first step
    assert trainer.elapsed > 0
    # the schedule follows the clock: half the budget is half way down the cosine
    assert trainer.lr_at(5, elapsed=30e-6) == pytest.approx(args.lr * 0.55)
    assert trainer.lr_at(5, elapsed=1.0) == pytest.approx(args.lr * 0.1)
    assert load_model(path).config.task == "sr"
    import json

    assert json.loads((tmp_path / "ae" / "state.json").read_text())["elapsed_s"] == trainer.elapsed
    assert parse(["autoencoder", "--data", "d", "--out", "o", "--minutes", "2.5"]).minutes == 2.5
    # resuming a spent run trains no further
    again = Trainer(args)
    assert again.elapsed == trainer.elapsed and again.run() is not None and again.step == 1


def test_anchored_decoder_tuning_sees_the_anchor_move(tmp_path, image_dirs):
    """With the anchor, adding a constant to every decoder output changes nothing (the anchor
    subtracts it again), so the loss has no gradient along the output bias. A constant anchor would
    push that bias (and everything that shifts outputs together) forever: the drift that diverged."""
    ae = train(args_for("autoencoder", tmp_path / "ae", image_dirs, steps=1))
    sr = train(args_for("diffusion", tmp_path / "sr", image_dirs, init=str(ae), steps=1))
    trainer = Trainer(args_for("align", tmp_path / "al", image_dirs, init=str(sr), anchor=True,
                               tune_decoder=True, lambda_dm=0.0, snr_min=1.0, t_max_frac=1.0))
    crops = trainer.data.random_crops(4, 16, torch.Generator().manual_seed(0)).to(trainer.device)
    loss, _ = trainer.loss(crops)
    loss.backward()
    last = [m for m in trainer.model.implicit.mlp if isinstance(m, torch.nn.Linear)][-1]
    assert float(last.weight.grad.abs().max()) > 1e-6
    assert float(last.bias.grad.abs().max()) < 1e-3 * float(last.weight.grad.abs().max())


def test_sr_recipe_script_runs_every_stage(tmp_path):
    """scripts/train_sr.sh end to end on tiny budgets: stage 1, stage 2, the detail export and
    stage 3, each exported as float16 with its lineage."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 3), ("val", 1)):
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.fromarray(smooth_image(rng, 132, 140)).save(tmp_path / split / f"{i}.png")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PY=sys.executable, AE_MIN="0.0001", SR_MIN="0.0001",
               ALIGN_MIN="0.0001", BATCH="2", ALIGN_BATCH="2", EXTRA="--threads 1")
    res = subprocess.run(["bash", str(ROOT / "scripts/train_sr.sh"), str(tmp_path / "train"), str(tmp_path / "val"),
                          str(tmp_path / "runs"), str(tmp_path / "export")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    from arbscale_core.checkpoint import read_config
    from arbscale_core.pipeline import default_steps

    detail, default = load_model(tmp_path / "export/sr_detail.safetensors"), load_model(tmp_path / "export/sr_default.safetensors")
    assert detail.config.anchor and default.config.anchor
    assert default_steps(detail) == 20 and default_steps(default) == 1
    info = read_config(tmp_path / "export/sr_default.safetensors")[1]
    assert info["init_training"]["stage"] == "diffusion" and info["init_training"]["init_training"]["stage"] == "autoencoder"
    assert (tmp_path / "export/regress_log.csv").exists()
    assert load_file(str(tmp_path / "export/sr_default.safetensors"))["unet.conv_in.weight"].dtype == torch.float16
