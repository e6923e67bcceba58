"""Writes an evaluation report: metrics.csv, report.md, plots and a comparison grid (PNG)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .eval_sr import METRICS
from .fileio import atomic_path

LABELS = {"psnr_rgb": "PSNR", "psnr_y": "PSNR-Y", "ssim_y": "SSIM-Y", "lr_consistency_db": "LR cons. dB",
          "scale_consistency_db": "scale cons. dB", "hf_ratio": "HF ratio", "diversity": "diversity"}
GRID_METHODS = ("LR", "bicubic", "lanczos+unsharp", "ours", "GT")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install 'arbscale[eval]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_csv(rows: list[dict], path: Path) -> None:
    cols = ["image", "scale", "method", "seed", *METRICS]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in cols})


def _fmt(stat, digits=2) -> str:
    if stat is None:
        return "–"
    mean, ci, _ = stat
    return f"{mean:.{digits}f}" + ("" if math.isnan(ci) else f" ± {ci:.{digits}f}")


def sr_markdown(summary: dict, scales, methods, header: list[str], skipped) -> str:
    lines = header + [""]
    for scale in scales:
        lines += [f"### x{scale:g}", "", "| method | " + " | ".join(LABELS[m] for m in METRICS) + " |",
                  "|---|" + "---|" * len(METRICS)]
        for method in methods:
            s = summary.get((scale, method), {})
            cells = [_fmt(s.get(m), 4 if m in ("ssim_y",) else 2) for m in METRICS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Means over images with 95 % confidence intervals (1.96·sd/√n; seeds averaged per image first).",
              "PSNR on RGB and Y (BT.601) with a border shave of ceil(scale); SSIM on Y (scikit-image, Gaussian "
              "window). LR consistency: the output downscaled back to the LR size against the LR input. Scale "
              "consistency: the output at 2x the size, downscaled, against the output. HF ratio: Laplacian "
              "energy of the output over the ground truth's (below 1 = smoother than the truth). Diversity: "
              "mean pairwise absolute pixel difference (0–255) between seeds.", ""]
    if skipped:
        lines += ["Skipped images:", ""] + [f"- `{p.name}`: {why}" for p, why in skipped] + [""]
    return "\n".join(lines)


def psnr_plot(summary: dict, scales, methods, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for method in methods:
        for ax, metric in zip(axes, ("psnr_rgb", "lr_consistency_db", "hf_ratio")):
            pts = [(s, summary[(s, method)][metric]) for s in scales if metric in summary.get((s, method), {})]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                            yerr=[0 if math.isnan(p[1][1]) else p[1][1] for p in pts], marker="o", capsize=3,
                            label=method)
    for ax, title in zip(axes, ("PSNR (RGB, dB) vs scale", "LR consistency (dB) vs scale",
                                "High-frequency energy ratio vs scale")):
        ax.set_title(title)
        ax.set_xlabel("scale")
        ax.grid(alpha=0.3)
    axes[2].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def consistency_plot(summary: dict, scales, methods, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in methods:
        pts = [(s, summary[(s, method)]["scale_consistency_db"]) for s in scales
               if "scale_consistency_db" in summary.get((s, method), {})]
        if pts:
            axes[0].plot([p[0] for p in pts], [p[1][0] for p in pts], marker="o", label=method)
    pts = [(s, summary[(s, "ours")]["diversity"]) for s in scales if "diversity" in summary.get((s, "ours"), {})]
    if pts:
        axes[1].plot([p[0] for p in pts], [p[1][0] for p in pts], marker="o", color="C3", label="ours")
    axes[0].set_title("Scale consistency (dB): x2 size, downscaled, vs x1")
    axes[1].set_title("Diversity across seeds (mean |a-b|, 0-255)")
    for ax in axes:
        ax.set_xlabel("scale")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def comparison_grid(grid: dict, scale: float, path: Path, crop: int = 96) -> None:
    """Rows: images; columns: LR (nearest-upscaled), bicubic, Lanczos+unsharp, ours, ground truth,
    each a centre crop of ``crop`` HR pixels shown at 2x."""
    plt = _pyplot()
    items = [(p, outs[scale]) for p, outs in grid.items() if scale in outs]
    if not items:
        return
    fig, axes = plt.subplots(len(items), len(GRID_METHODS), figsize=(2.6 * len(GRID_METHODS), 2.8 * len(items)),
                             squeeze=False)
    for row, (p, outs) in enumerate(items):
        gt = outs["GT"]
        h, w = gt.shape[:2]
        c = min(crop, h, w)
        y, x = (h - c) // 2, (w - c) // 2
        for col, method in enumerate(GRID_METHODS):
            img = outs[method]
            if method == "LR":
                img = np.asarray(Image.fromarray(img).resize((w, h), Image.NEAREST))
            axes[row][col].imshow(img[y:y + c, x:x + c], interpolation="nearest")
            axes[row][col].set_xticks([])
            axes[row][col].set_yticks([])
            if row == 0:
                axes[row][col].set_title(method if method != "LR" else f"LR (x{scale:g}, nearest)")
        axes[row][0].set_ylabel(p.name[:24], fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
