import csv

import pytest

from arbscale_core.cli import main
from arbscale_core.eval_sr import diversity, lr_consistency, summarize

from conftest import write_png

import numpy as np


@pytest.fixture
def hr_dir(tmp_path):
    d = tmp_path / "hr"
    d.mkdir()
    for i in range(2):
        write_png(d / f"{i}.png", 70 + 6 * i, 66, seed=i)
    write_png(d / "tiny.png", 12, 12)
    (d / "broken.png").write_text("not an image")
    return d


def test_eval_writes_full_report(tmp_path, hr_dir, sr_ckpt, regression_file, capsys):
    out = tmp_path / "report"
    rc = main(["eval", str(hr_dir), "-o", str(out), "--model", str(sr_ckpt), "--scales", "2,3.5", "--steps", "1",
               "--seeds", "2", "--max-side", "48", "--modes", "fidelity,detail", "--baseline", str(regression_file)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert {p.name for p in out.iterdir()} == {"metrics.csv", "report.md", "psnr_vs_scale.png",
                                               "perception_distortion.png", "consistency_diversity.png",
                                               "comparison_grid.png"}
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    # 2 images x 2 scales x (3 baselines + the regression + 2 modes x 2 seeds of ours)
    assert len(rows) == 2 * 2 * 8
    assert {r["method"] for r in rows} == {"bicubic", "lanczos", "lanczos+unsharp", "regression", "ours fidelity",
                                           "ours detail"}
    for r in rows:  # every row has the perceptual metrics; VIF needs 41 px, the x2 crops have 48
        assert 0 < float(r["ms_ssim"]) <= 1
        assert float(r["vif"]) > 0 or (r["scale"] == "3.5" and r["vif"] == "nan")
    detail = [r for r in rows if r["method"] == "ours detail"]
    assert all(float(r["diversity"]) > 0 for r in detail)  # eta 1: seeds differ
    report = (out / "report.md").read_text()
    assert "### x3.5" in report and "tiny.png" in report and "broken.png" in report
    assert "arbscale eval" in report and "VIF" in report and "LPIPS" in report and "Regression baseline" in report
    from arbscale_core.pipeline import DETAIL_ETA

    assert "fidelity mode 1 DDIM step, eta 0" in report and f"detail mode 1 DDIM step, eta {DETAIL_ETA:g}" in report
    assert "skipped" in cap.err and "x2: regression" in cap.out and "ours detail" in cap.out


@pytest.fixture
def regression_file(tmp_path):
    """A small LIIF-style regression baseline file, as benchmarks/liif_baseline.py writes them."""
    import json

    import torch
    from safetensors.torch import save_file

    from arbscale_core.regression import LIIFBaseline

    torch.manual_seed(0)
    net = LIIFBaseline(channels=8, blocks=1, hidden=(16,))
    path = tmp_path / "liif.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"shape": json.dumps(net.shape), "steps": "0", "seconds": "0", "parameters": "1",
                        "batch": "1"})
    return path


@pytest.mark.parametrize("case", ["empty", "missing", "unwritable", "bad scales", "bad eta", "bad mode",
                                  "baseline missing", "baseline not one"])
def test_eval_errors(case, tmp_path, sr_ckpt, hr_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = {"bad mode": ["eval", str(hr_dir), "-o", str(tmp_path / "r"), "--modes", "fidelity,sharp"],
            "baseline missing": ["eval", str(hr_dir), "-o", str(tmp_path / "r"), "--baseline", str(tmp_path / "no")],
            "baseline not one": ["eval", str(hr_dir), "-o", str(tmp_path / "r"), "--baseline", str(sr_ckpt)],
            "empty": ["eval", str(empty), "-o", str(tmp_path / "r")],
            "missing": ["eval", str(tmp_path / "nope"), "-o", str(tmp_path / "r")],
            "unwritable": ["eval", str(hr_dir), "-o", "/proc/arbscale_report"],
            "bad scales": ["eval", str(hr_dir), "-o", str(tmp_path / "r"), "--scales", "2,0"],
            "bad eta": ["eval", str(hr_dir), "-o", str(tmp_path / "r"), "--eta", "-1"]}[case]
    rc = main(argv + ["--model", str(sr_ckpt)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err


def test_eval_gen_report(tmp_path, gen_ckpt, capsys):
    out = tmp_path / "gen"
    rc = main(["eval-gen", "-o", str(out), "--model", str(gen_ckpt), "--sizes", "32x24,64x48", "--samples", "2",
               "--steps", "1"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    report = (out / "report.md").read_text()
    assert "FID and LPIPS" in report and "| 64x48 |" in report
    assert (out / "sample1_64x48.png").exists()


def test_metric_helpers_known_values():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 10, np.uint8)
    assert diversity([a, b]) == pytest.approx(10.0)
    assert diversity([a]) == 0.0
    assert lr_consistency(np.full((16, 16, 3), 7, np.uint8), np.full((8, 8, 3), 7, np.uint8)) == float("inf")
    rows = [{"scale": 2, "method": "m", "image": f"i{k}", "psnr_rgb": v, "psnr_y": v, "ssim_y": 1.0,
             "lr_consistency_db": 1.0, "scale_consistency_db": 1.0, "hf_ratio": 1.0, "diversity": float("nan")}
            for k, v in enumerate([30.0, 32.0])]
    mean, ci, n = summarize(rows)[(2, "m")]["psnr_rgb"]
    assert (mean, n) == (31.0, 2) and ci == pytest.approx(1.96 * np.std([30, 32], ddof=1) / np.sqrt(2))
