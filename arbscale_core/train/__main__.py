"""Command line for the three training stages (see the model card for the commands we ran)."""
from __future__ import annotations

import argparse
import sys

from ..checkpoint import CheckpointError
from .stages import STAGES
from .trainer import TrainArgs, train


def parse(argv: list[str] | None = None) -> TrainArgs:
    p = argparse.ArgumentParser(prog="python -m arbscale_core.train",
                                description="Train ArbScale (stage: autoencoder, diffusion or align). "
                                            "Resumes from OUT/state.* when present.")
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--data", nargs="+", required=True, help="image folders")
    p.add_argument("--val", help="validation image folder")
    p.add_argument("--out", required=True, help="run folder: state, log.csv, model.safetensors")
    p.add_argument("--init", help="model file from the previous stage")
    p.add_argument("--decoder-init", help="decoder stage: take the feature and implicit decoders from this "
                                          "model file (default: from --init)")
    p.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    p.add_argument("--task", default="sr", choices=("sr", "gen"))
    d = TrainArgs.__dataclass_fields__
    for name in ("steps", "batch", "crop", "warmup", "seed", "log_every", "val_every", "save_every",
                 "val_steps", "image_limit", "queries", "threads", "rec_min_t", "default_steps",
                 "detail_steps"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=d[name].default)
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget: stop when it is spent (or at --steps), the LR schedule ending with it")
    for name in ("lr", "weight_decay", "ema", "clip", "max_rel_scale", "snr_max", "snr_min", "t_max_frac", "lambda_dm", "lambda_rec", "x0_weight",
                 "hr_latent_frac", "detail_eta"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=d[name].default)
    p.add_argument("--lr-scale-range", type=float, nargs=2, default=[3.0, 5.0],
                   help="LR downscale factors for the SR condition (min max)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field (JSON value), e.g. --config unet_channels=32")
    p.add_argument("--tune-decoder", action="store_true",
                   help="align: also train the feature and implicit decoders (the paper keeps them frozen)")
    p.add_argument("--detail-head", action="store_true",
                   help="decoder stage: add a detail head (a copy of --init's LR-reading decoder) and train only it, "
                        "on true latents, for the detail mode")
    p.add_argument("--anchor", action="store_true",
                   help="SR: decode adds back the autoencoder's error on the condition image (config anchor)")
    p.add_argument("--save-dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    ns = p.parse_args(argv)
    kwargs = {k: v for k, v in vars(ns).items()}
    kwargs["lr_scale_range"] = tuple(kwargs["lr_scale_range"])
    kwargs["config"] = dict(_override(item, p) for item in ns.config)
    return TrainArgs(**kwargs)


def _override(item: str, parser: argparse.ArgumentParser) -> tuple[str, object]:
    import json

    key, sep, value = item.partition("=")
    if not sep:
        parser.error(f"--config takes KEY=VALUE, got {item!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key, tuple(parsed) if isinstance(parsed, list) else parsed


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        path = train(args)
    except (ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if path is not None:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
