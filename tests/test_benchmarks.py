"""Benchmark scripts run in --quick mode for correctness (their figures are not asserted here)."""
import subprocess
import sys
from pathlib import Path

from conftest import write_png

ROOT = Path(__file__).resolve().parents[1]


def test_sr_quality_quick(tmp_path, sr_ckpt):
    data = tmp_path / "val"
    data.mkdir()
    for i in range(3):
        write_png(data / f"{i}.png", 100 + 4 * i, 96, seed=i)
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sr_quality.py"), "--model", str(sr_ckpt),
                          "--data", str(data), "--quick", "--steps", "2"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| ours (2 steps) |" in res.stdout and "| lanczos+unsharp |" in res.stdout
    assert "ours - bicubic" in res.stdout


def test_decoder_speed_quick():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decoder_speed.py"), "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| ours bf16 (block " in res.stdout and "| naive LIIF fp32 (best batch " in res.stdout
    diff = float(res.stdout.split("max |diff| ")[1].split()[0])
    assert diff < 1e-4  # the naive LIIF and ours compute the same function


def test_memory_quick(tmp_path, sr_ckpt):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--quick", "--model", str(sr_ckpt)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| 16² | x8 | 128x128 |" in res.stdout and "growth from 32x32 to 128x128" in res.stdout


def test_latent_vs_pixel_quick():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latent_vs_pixel.py"), "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| 16² |")]
    assert [r.split("|")[3].strip() for r in rows] == ["32²", "64²"]
    for r in rows:
        cells = [c.strip() for c in r.split("|")]
        assert float(cells[4]) > 0 and float(cells[5]) > 0 and float(cells[6]) > 0  # times and ratio


def test_sr_options_runs(sr_ckpt):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sr_options.py"), "--model", str(sr_ckpt),
                          "--side", "12", "--scales", "3", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| ×3 | 36² | ensemble 8 |" in res.stdout and "| ×3 | 36² | default (projection) | " in res.stdout


def test_liif_baseline_trains_and_evaluates(tmp_path, sr_ckpt):
    """A few seconds of the regression baseline's training, then the comparison table: the script
    works end to end (its figures come from the 25-minute run in the model card)."""
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(3):
        write_png(data / f"{i}.png", 150 + 4 * i, 148, seed=i)
    script = str(ROOT / "benchmarks" / "liif_baseline.py")
    res = subprocess.run([sys.executable, script, "train", "--data", str(data), "--out", str(tmp_path / "run"),
                          "--minutes", "0.05", "--batch", "2", "--queries", "8", "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([sys.executable, script, "eval", "--weights", str(tmp_path / "run" / "liif.safetensors"),
                          "--data", str(data), "--model", str(sr_ckpt), "--scales", "2,4", "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| liif baseline | " in res.stdout and "| ours | " in res.stdout and "| bicubic | " in res.stdout


def test_latent_ablation_quick(tmp_path):
    """An LR-reading micro model through the ablation table: every latent row, both projections."""
    import torch

    from arbscale_core.checkpoint import save_model
    from conftest import micro_model

    model = micro_model("sr", lr_features=4, lr_blocks=1)
    torch.nn.init.normal_(model.implicit.first_lr.weight, std=0.2)
    ckpt = tmp_path / "lr.safetensors"
    save_model(model, ckpt, training={"default_steps": 1})
    data = tmp_path / "val"
    data.mkdir()
    for i in range(2):
        write_png(data / f"{i}.png", 40, 36, seed=i)
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latent_ablation.py"), "--model", str(ckpt),
                          "--data", str(data), "--side", "32", "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["condition latent (no diffusion)", "1 DDIM step",
                                                        "2 DDIM steps"]
    assert "(+0.00)" in rows[1].split("|")[3]  # the model's default, projection on, is the reference


def test_decoder_speed_lr_reading_model(tmp_path):
    """The LR branch enters the naive reference too: both still compute the same function."""
    import torch

    from arbscale_core.checkpoint import save_model
    from conftest import micro_model

    model = micro_model("sr", lr_features=4, lr_blocks=1)
    torch.nn.init.normal_(model.implicit.first_lr.weight, std=0.2)
    ckpt = tmp_path / "lr.safetensors"
    save_model(model, ckpt)
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decoder_speed.py"), "--quick", "--threads", "1",
                          "--model", str(ckpt), "--out", str(tmp_path / "speed.json")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.split("max |diff| ")[1].split()[0]) < 1e-4


def test_end_to_end_quick(tmp_path):
    """benchmarks/end_to_end.py --quick: the console script and every stage timed, with RSS."""
    import json

    out = tmp_path / "e2e.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "end_to_end.py"), "--quick", "--threads", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| 128² | ×2 | 256x256 | fp32 |" in res.stdout
    row = json.loads(out.read_text())["rows"][0]
    assert row["wall_s"] > 0 and row["peak_rss_mb"] > 50
    assert all(row[k] >= 0 for k in ("read_s", "encode_s", "unet_s", "per_cell_s", "mlp_s", "projection_s", "write_s"))
