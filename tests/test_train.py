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
            Image.fromarray(smooth_image(rng, 196, 200)).save(tmp_path / split / f"{i}.png")  # val crops of 2 x 96
    env = dict(os.environ, PYTHONPATH=str(ROOT), PY=sys.executable, AE_MIN="0.0001", SR_MIN="0.0001",
               ALIGN_MIN="0.0001", DEC_MIN="0.0001", HEAD_MIN="0.0001", BATCH="2", ALIGN_BATCH="2", DEC_BATCH="2",
               HEAD_BATCH="2", HEAD_CROP="96",
               EXTRA="--threads 1")
    res = subprocess.run(["bash", str(ROOT / "scripts/train_sr.sh"), str(tmp_path / "train"), str(tmp_path / "val"),
                          str(tmp_path / "runs"), str(tmp_path / "export")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    from arbscale_core.checkpoint import read_config
    from arbscale_core.pipeline import default_steps

    export = tmp_path / "export"
    detail, aligned = load_model(export / "sr_detail.safetensors"), load_model(export / "sr_aligned.safetensors")
    default = load_model(export / "sr_default.safetensors")
    assert detail.config.anchor and aligned.config.anchor and not default.config.anchor and default.reads_lr
    assert default_steps(detail) == 20 and default_steps(aligned) == 1 and default_steps(default) == 1
    info = read_config(export / "sr_default.safetensors")[1]
    assert [info["stage"], info["init_training"]["stage"], info["init_training"]["init_training"]["stage"]] == \
        ["decoder", "align", "diffusion"]
    assert (export / "regress_log.csv").exists() and (export / "decoder_log.csv").exists()
    assert load_file(str(tmp_path / "export/sr_default.safetensors"))["unet.conv_in.weight"].dtype == torch.float16
    two_mode = load_model(export / "sr_two_mode.safetensors")
    assert two_mode.config.detail_head and two_mode.training_info["detail_steps"] == 20
    assert (export / "head_log.csv").exists()


def test_decoder_stage_trains_an_lr_reading_decoder(tmp_path, image_dirs):
    """Stage 4: from an anchored aligned model, with stage 2's decoders (--decoder-init), the
    exported model reads the LR image, drops the anchor, keeps encoder and U-Net, starts out as
    bicubic, and its LR branch (zero at the start) learned something."""
    ae = train(args_for("autoencoder", tmp_path / "ae", image_dirs, steps=1))
    sr = train(args_for("diffusion", tmp_path / "sr", image_dirs, init=str(ae), steps=1))
    al = train(args_for("align", tmp_path / "al", image_dirs, init=str(sr), anchor=True, tune_decoder=True,
                        steps=1, default_steps=1))
    dec_args = args_for("decoder", tmp_path / "dec", image_dirs, init=str(al), decoder_init=str(sr),
                        lr_scale_range=(2.0, 4.0), val=str(image_dirs / "val"), steps=4,
                        config=dict(lr_features=6, lr_blocks=1))
    trainer = Trainer(dec_args)
    assert trainer.loss.opts["sample_steps"] == 1  # the init file's own sampling default
    assert not any(p.requires_grad for p in trainer.model.unet.parameters())
    assert float(trainer.model.implicit.first_lr.weight.detach().abs().sum()) == 0
    # a fresh LR-reading decoder starts out as bicubic: its residual is zero
    from arbscale_core.imageops import resize

    lr = torch.rand(1, 3, 5, 6)
    start = upscale(trainer.model.eval(), lr, size=(15, 12), steps=1, consistency=False)
    torch.testing.assert_close(start, ((resize(lr * 2 - 1, 12, 15) + 1) / 2).clamp(0, 1), atol=1e-5, rtol=0)
    del trainer
    dec = load_model(train(dec_args))
    aligned, stage2 = load_model(al), load_model(sr)
    assert dec.config.lr_features == 6 and dec.reads_lr and not dec.config.anchor
    from arbscale_core.pipeline import default_steps

    assert default_steps(dec) == 1  # it decodes 1-step estimates: that is its default
    torch.testing.assert_close(dec.unet.state_dict(), aligned.unet.state_dict())
    torch.testing.assert_close(dec.encoder.state_dict(), aligned.encoder.state_dict())
    torch.testing.assert_close(dec.feature_decoder.state_dict(), stage2.feature_decoder.state_dict())
    assert float(dec.implicit.first_lr.weight.abs().sum()) > 0
    assert "val_sr_x4_psnr" in (tmp_path / "dec" / "log.csv").read_text()
    out = upscale(dec, torch.rand(1, 3, 9, 7), scale=2.5)
    assert out.shape == (1, 3, 23, 18) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="decoder stage is for SR models"):
        gen = train(args_for("diffusion", tmp_path / "gen", image_dirs, init=str(ae), task="gen", steps=1))
        Trainer(args_for("decoder", tmp_path / "dec_gen", image_dirs, init=str(gen), task="gen"))


def test_decoder_stage_trains_a_detail_head(tmp_path, image_dirs):
    """--detail-head: a copy of the init's LR-reading decoder is added and trained alone on true
    latents; everything else, the default head included, stays as it was, so the fidelity mode
    decodes exactly as the init did, and the file records the detail mode's settings."""
    ae = train(args_for("autoencoder", tmp_path / "ae", image_dirs, steps=1))
    sr = train(args_for("diffusion", tmp_path / "sr", image_dirs, init=str(ae), steps=1))
    dec = train(args_for("decoder", tmp_path / "dec", image_dirs, init=str(sr), steps=2, lr_scale_range=(2.0, 4.0),
                         config=dict(lr_features=6, lr_blocks=1), default_steps=1))
    with pytest.raises(ValueError, match="needs an LR-reading|must have lr_features"):
        Trainer(args_for("decoder", tmp_path / "bad", image_dirs, init=str(sr), detail_head=True))
    args = args_for("decoder", tmp_path / "det", image_dirs, init=str(dec), steps=3, lr_scale_range=(2.0, 6.0),
                    detail_head=True, detail_steps=3, detail_eta=0.5, val=str(image_dirs / "val"))
    trainer = Trainer(args)
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("detail_implicit.", "detail_lr_encoder.")) for n in trained)
    del trainer
    out = load_model(train(args))
    init = load_model(dec)
    assert out.config.detail_head and out.training_info["detail_steps"] == 3
    for k, v in init.state_dict().items():
        torch.testing.assert_close(out.state_dict()[k], v)  # every part the init had is unchanged
    moved = sum(float((out.state_dict()[f"detail_{k}"] - v).abs().sum()) for k, v in init.state_dict().items()
                if k.startswith(("implicit.", "lr_encoder.")))
    assert moved > 0
    from arbscale_core.pipeline import mode_sampling

    assert mode_sampling(out, "detail") == (3, 0.5)
    img = torch.rand(1, 3, 7, 8)
    torch.testing.assert_close(upscale(out, img, scale=2.0), upscale(init, img, scale=2.0))
    assert "val_sr_x4_psnr" in (tmp_path / "det" / "log.csv").read_text()


def test_decoder_stage_ddp_matches_single_process(tmp_path, image_dirs):
    """The decoder stage under torchrun (2 ranks) lands where one process with the same global
    batch does: its random draws (scale, noise, queries) are shared, each rank keeps its slice."""
    ae = train(args_for("autoencoder", tmp_path / "ae", image_dirs, steps=1))
    sr = train(args_for("diffusion", tmp_path / "sr", image_dirs, init=str(ae), steps=1))
    common = ["decoder", "--data", str(image_dirs / "train"), "--init", str(sr), "--steps", "3", "--batch", "4",
              "--crop", "16", "--warmup", "1", "--queries", "8", "--save-every", "3", "--threads", "1",
              "--lr-scale-range", "2", "4", "--config", "lr_features=4", "--config", "lr_blocks=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "arbscale_core.train", *common, "--out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "arbscale_core.train", *common, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = (load_file(str(tmp_path / name / "state.safetensors")) for name in ("ddp", "one"))
    start = load_model(sr).state_dict()
    keys = [k for k in a if k.startswith("model.implicit.first_feat")]
    moved = sum(float((b[k] - start[k[len("model."):]]).double().pow(2).sum()) for k in keys) ** 0.5
    apart = sum(float((a[k] - b[k]).double().pow(2).sum()) for k in keys) ** 0.5
    assert moved > 1e-4 and apart < 0.01 * moved, (moved, apart)


def test_decoder_stage_refuses_mismatched_inits(tmp_path, image_dirs):
    ae = train(args_for("autoencoder", tmp_path / "ae", image_dirs, steps=1))
    sr = train(args_for("diffusion", tmp_path / "sr", image_dirs, init=str(ae), steps=1))
    other = train(args_for("autoencoder", tmp_path / "other", image_dirs, steps=1,
                           config=dict(MICRO, feature_channels=4)))
    with pytest.raises(ValueError, match="do not fit one model"):
        Trainer(args_for("decoder", tmp_path / "dec", image_dirs, init=str(sr), decoder_init=str(other)))
    with pytest.raises(ValueError, match="lr_features must be > 0"):
        Trainer(args_for("decoder", tmp_path / "dec0", image_dirs, init=str(sr), config=dict(lr_features=0)))
