"""Writes an evaluation report: metrics.csv, report.md, plots and a comparison grid (PNG)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .eval_sr import METRICS
from .fileio import atomic_path

LABELS = {"psnr_rgb": "PSNR", "psnr_y": "PSNR-Y", "ssim_y": "SSIM-Y", "ms_ssim": "MS-SSIM", "vif": "VIF",
          "lr_consistency_db": "LR cons. dB", "scale_consistency_db": "scale cons. dB", "hf_ratio": "HF ratio",
          "diversity": "diversity"}
GRID_BASELINES = ("bicubic", "lanczos+unsharp", "regression")
# Why the usual perceptual metrics are not in the report: each needs a network's weights downloaded
# at run time, which an offline tool cannot do.
OFFLINE_NOTE = ("LPIPS, DISTS and FID are not reported: each compares deep features of a network trained "
                "elsewhere (AlexNet/VGG, Inception), whose weights would have to be downloaded at run time; "
                "ArbScale's evaluation runs offline. MS-SSIM and VIF (torchmetrics) are full-reference "
                "perceptual metrics that need no network.")


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
            cells = [_fmt(s.get(m), 4 if m in ("ssim_y", "ms_ssim", "vif") else 2) for m in METRICS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Means over images with 95 % confidence intervals (1.96·sd/√n; seeds averaged per image first).",
              "PSNR on RGB and Y (BT.601) with a border shave of ceil(scale); SSIM on Y (scikit-image, Gaussian "
              "window). LR consistency: the output downscaled back to the LR size against the LR input. Scale "
              "consistency: the output at 2x the size, downscaled, against the output (first seed). HF ratio: "
              "Laplacian energy of the output over the ground truth's (below 1 = smoother than the truth). "
              "Diversity: mean pairwise absolute pixel difference (0–255) between seeds. MS-SSIM (5 scales; fewer "
              "on small crops) and VIF (pixel-domain visual information fidelity: 1 = the ground truth's "
              "information, above 1 = contrast enhanced) on Y, higher is better.", "", OFFLINE_NOTE, ""]
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
    for method in methods:
        pts = [(s, summary[(s, method)]["diversity"]) for s in scales if "diversity" in summary.get((s, method), {})]
        if pts:
            axes[1].plot([p[0] for p in pts], [p[1][0] for p in pts], marker="o", label=method)
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


def perception_distortion_plot(summary: dict, scales, methods, path: Path,
                               metrics: tuple[str, ...] = ("vif", "ms_ssim", "hf_ratio")) -> None:
    """Perception-distortion planes (Blau & Michaeli 2018): a row per perceptual metric, a column per
    scale; in each, a point per method at its mean (PSNR, metric). Intervals are in the report's
    tables (across images they are wide: they measure how images differ, not methods)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(metrics), len(scales), figsize=(3.4 * len(scales) + 0.6, 3.0 * len(metrics)),
                             squeeze=False)
    for r, metric in enumerate(metrics):
        for c, scale in enumerate(scales):
            ax = axes[r][c]
            for k, method in enumerate(methods):
                st = summary.get((scale, method), {})
                if "psnr_rgb" not in st or metric not in st:
                    continue
                ax.plot([st["psnr_rgb"][0]], [st[metric][0]], marker="os^vDP*X"[k % 8], color=f"C{k}", ms=7,
                        ls="none", label=method)
            if metric == "hf_ratio":  # log scale: the methods sit far below the truth's 1
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if r == 0:
                ax.set_title(f"x{scale:g}")
            if r == len(metrics) - 1:
                ax.set_xlabel("PSNR (dB): less distortion ->", fontsize=8)
            if c == 0:
                ax.set_ylabel(LABELS[metric] + (" (truth: 1)" if metric == "hf_ratio" else " (higher: better)"),
                              fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def comparison_grid(grid: dict, scale: float, path: Path, crop: int = 96) -> None:
    """Rows: images; columns: LR (nearest-upscaled), bicubic, Lanczos+unsharp, the regression (when
    measured), ours in each mode, ground truth, each a centre crop of ``crop`` HR pixels."""
    plt = _pyplot()
    items = [(p, outs[scale]) for p, outs in grid.items() if scale in outs]
    if not items:
        return
    present = set().union(*(outs.keys() for _, outs in items))
    ours = sorted(m for m in present if m.startswith("ours"))
    grid_methods = ["LR", *(m for m in GRID_BASELINES if m in present), *ours, "GT"]
    fig, axes = plt.subplots(len(items), len(grid_methods), figsize=(2.6 * len(grid_methods), 2.8 * len(items)),
                             squeeze=False)
    for row, (p, outs) in enumerate(items):
        gt = outs["GT"]
        h, w = gt.shape[:2]
        c = min(crop, h, w)
        y, x = (h - c) // 2, (w - c) // 2
        for col, method in enumerate(grid_methods):
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
