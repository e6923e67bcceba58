"""``arbscale`` command line: upscale, generate, info. User errors print one ``error: ...`` line."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from pathlib import Path

from .imageops import IMAGE_SUFFIXES

MODE_CHOICES = ("fidelity", "detail")  # pipeline.MODES, without importing torch to build the parser

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODELS = {"sr": WEIGHTS_DIR / "arbscale_sr_tiny.safetensors",
                  "gen": WEIGHTS_DIR / "arbscale_gen_tiny.safetensors"}
# Every file shipped in weights/, with what it is for (ComfyUI's Load Model tooltip; the model card
# has the figures).
BUNDLED_MODELS = {
    "arbscale_sr_tiny.safetensors": "super-resolution at any scale, two modes: fidelity (1 step, closest to the "
                                    "photo, +1.6 dB PSNR over bicubic at x4) and detail (sampled grain and texture, "
                                    "each seed its own; less faithful)",
    "arbscale_gen_tiny.safetensors": "texture generation from noise (Empty Latent): a tiny model, noisy "
                                     "ground- and stone-like textures",
}


class UserError(Exception):
    """A problem with what the user asked for; shown as one line, no traceback."""

    exit_code = 2


class BatchError(UserError):
    """Some inputs of a batch failed (each said as it happened); the others were written."""

    exit_code = 1


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so every atomic write removes its temporary file."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        if message.endswith("expected one argument"):
            message += " (a value starting with '-' needs the form --option=VALUE)"
        raise UserError(f"{self.prog}: {message}")


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"size must look like WIDTHxHEIGHT (e.g. 1920x1080), got {text!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if w <= 0 or h <= 0:
        raise UserError(f"size must be positive, got {text!r}")
    return w, h


def parse_scale(text: str) -> float:
    from .pipeline import check_scale

    try:
        return check_scale(text)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _positive_int(name: str, value: int) -> int:
    if value <= 0:
        raise UserError(f"{name} must be a positive whole number, got {value}")
    return value


def check_sampling(args) -> None:
    """--steps, --eta, --seed and --chunk, shared by every command that samples (the model's own
    limits, such as its timesteps, are checked once it is loaded: ``sampling``)."""
    if args.steps is not None:
        _positive_int("--steps", args.steps)
    _positive_int("--chunk", args.chunk)
    if args.eta is not None and not 0 <= args.eta <= 1:
        raise UserError(f"--eta must be between 0 (deterministic) and 1 (DDPM-like), got {args.eta}")
    if args.seed == -1:  # a fresh random seed, said so the result can be made again
        import secrets

        args.seed = secrets.randbits(64)
        print(f"seed: {args.seed}", file=sys.stderr)
    from .pipeline import MAX_SEED

    if not 0 <= args.seed <= MAX_SEED:
        raise UserError(f"--seed must be from 0 to 2**64-1 (or -1 for a random one), got {args.seed}")


def sampling(args, model) -> None:
    """Fill in steps and eta (SR: those of args.mode; else the model's default steps, eta 0) where
    not given, and check steps, eta and seed against the model."""
    from .pipeline import DEFAULT_ETA, check_sampling as check, mode_sampling

    if model.config.task == "sr":
        args.steps, args.eta = mode_sampling(model, args.mode, args.steps, args.eta)
    elif args.eta is None:
        args.eta = DEFAULT_ETA
    try:
        args.steps, args.eta, args.seed = check(model, args.steps, args.eta, args.seed)
    except ValueError as exc:
        raise UserError(f"--{exc}") from None


def resolve_model_path(arg: str | None, task: str) -> Path:
    if arg:
        return Path(arg)
    path = DEFAULT_MODELS[task]
    if not path.is_file():
        raise UserError(f"no bundled {task} weights at {path} (they ship with a later release); "
                        f"pass --model PATH")
    return path


def load(model_arg: str | None, task: str, device_arg: str, dtype_arg: str = "fp32"):
    """(model, device, autocast dtype) for a command, every problem as a UserError."""
    from .checkpoint import CheckpointError, load_model
    from .device import resolve_device, resolve_dtype

    try:
        device = resolve_device(device_arg)
        dtype = resolve_dtype(dtype_arg, device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    path = resolve_model_path(model_arg, task)
    try:
        model = load_model(path, device)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    if model.config.task != task:
        kind = {"sr": "an SR", "gen": "a generation"}
        raise UserError(f"{path} is {kind[model.config.task]} model; this command needs {kind[task]} model")
    return model, device, dtype


def collect_inputs(items: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"no images in folder {p}")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise UserError(f"input not found: {p}")
    return paths


def check_writable(targets: list[Path]) -> None:
    """Fail before any work when an output folder cannot take a file."""
    import tempfile

    for folder in {t.parent for t in targets}:
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".arbscale-check-"):
                pass
        except OSError as exc:
            raise UserError(f"cannot write to {folder}: {exc.strerror or exc}") from None


def check_existing(targets: list[Path], args) -> None:
    """The overwrite policy: an existing output is an error unless --overwrite (replace it) or
    --skip-existing (keep it, skip its input) says what to do."""
    if args.overwrite and args.skip_existing:
        raise UserError("give at most one of --overwrite and --skip-existing")
    existing = [t for t in targets if t.exists()]
    if existing and not (args.overwrite or args.skip_existing):
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise UserError(f"output {existing[0]}{more} already exists: pass --overwrite to replace, or "
                        f"--skip-existing to keep it")
    for t in existing:
        if t.is_dir():
            raise UserError(f"output {t} is a folder")


def plan_outputs(inputs: list[Path], out: str, tag: str, suffix: str = ".png") -> list[Path]:
    """One output path per input: OUT itself for a single input that is not a folder, otherwise
    OUT/<stem>_<tag><suffix>. The folder must exist; an output may never overwrite an input."""
    from .imageops import CONTAINERS

    out_path = Path(out)
    if len(inputs) == 1 and not out_path.is_dir():
        if not out_path.parent.is_dir():
            raise UserError(f"output folder does not exist: {out_path.parent}")
        targets = [out_path]
    else:
        if not out_path.is_dir():
            raise UserError(f"output folder does not exist: {out_path} (several inputs need an existing folder)")
        targets = [out_path / f"{p.stem}_{tag}{suffix}" for p in inputs]
        if len(set(targets)) < len(targets):
            raise UserError(f"two inputs share a name and would write the same output in {out_path}")
    resolved = {p.resolve() for p in inputs}
    for t in targets:
        if t.resolve() in resolved:
            raise UserError(f"output {t} would overwrite an input")
        if t.suffix.lower() not in CONTAINERS:
            raise UserError(f"output {t} needs an image suffix: {', '.join(sorted(CONTAINERS))}")
    check_writable(targets)
    return targets


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing in logs and pipes
    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, file=sys.stderr,
                disable=None)


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def cmd_upscale(args) -> int:
    if (args.scale is None) == (args.size is None):
        raise UserError("give exactly one of --scale or --size")
    scale = parse_scale(args.scale) if args.scale is not None else None
    size = parse_size(args.size) if args.size is not None else None
    check_sampling(args)
    check_output_options(args)
    _positive_int("--tile", args.tile)
    from .pipeline import MIN_TILE

    if args.tile < MIN_TILE:
        raise UserError(f"--tile must be at least {MIN_TILE} (smaller tiles see too little of the image), "
                        f"got {args.tile}")
    inputs = collect_inputs(args.inputs)
    tag = f"x{scale:g}" if scale is not None else f"{size[0]}x{size[1]}"
    targets = plan_outputs(inputs, args.output, tag, args.suffix)
    batch = len(inputs)
    rank, world = _rank_world()
    if world > 1:  # under torchrun: this rank's share of the inputs, every world-th one
        inputs, targets = inputs[rank::world], targets[rank::world]
        _rank_resources(args)
    check_existing(targets, args)  # this rank's only: the others may already be writing theirs
    if not inputs:
        return 0
    model, _, dtype = load(args.model, "sr", args.device, args.dtype)
    sampling(args, model)
    failed = []
    for p, target in zip(inputs, targets):
        if args.skip_existing and target.exists():
            print(f"{p}: {target} exists, skipped", file=sys.stderr)
            continue
        try:
            h, w = _upscale_one(model, p, target, scale, size, args, dtype)
        except ValueError as exc:  # this input (unreadable, too large...): the batch goes on
            if batch == 1:
                raise UserError(str(exc)) from None
            print(f"error: {exc}", file=sys.stderr)
            failed.append(p)
            continue
        print(f"{p} -> {target} ({w}x{h})")
    if failed:
        names = ", ".join(str(p) for p in failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        raise BatchError(f"{len(failed)} of {len(inputs)} inputs failed (the others were written): {names}")
    return 0


def _rank_world() -> tuple[int, int]:
    """(rank, world size) when started by torchrun (its RANK / WORLD_SIZE), else (0, 1)."""
    try:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        raise UserError("RANK and WORLD_SIZE must be whole numbers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK {rank} is not below WORLD_SIZE {world}")
    return rank, world


def _rank_resources(args) -> None:
    """One GPU per local rank (--device auto with CUDA), or on CPUs an equal share of the cores."""
    import torch

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if args.device == "auto" and torch.cuda.is_available():
        args.device = f"cuda:{local_rank % torch.cuda.device_count()}"
    elif args.device in ("auto", "cpu"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))


def check_output_options(args) -> None:
    if not 1 <= args.quality <= 100:
        raise UserError(f"--quality must be from 1 to 100, got {args.quality}")
    args.suffix = "." + args.format.lower().lstrip(".") if getattr(args, "format", None) else ".png"


def _upscale_one(model, path: Path, target: Path, scale, size, args, dtype) -> tuple[int, int]:
    """Upscale one input file into ``target``; ValueError for a problem with this input."""
    from .imageops import BandResize, STREAM_PIXELS, output_format, read_image
    from .pipeline import denoise, encode_condition, output_size, sr_guide

    src = read_image(path)
    try:
        h, w = output_size(*src.rgb.shape[-2:], scale=scale, size=size)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    fmt, notes = output_format(src.format, target, w, h)
    check_output_room(target, h, w, fmt, in_memory=args.ensemble > 1)
    for text in (*src.notes, *notes):
        _note(f"{path.name}: {text}")
    if args.ensemble > 1:
        if h * w > STREAM_PIXELS:
            raise ValueError(f"{path}: --ensemble needs the output in memory; {w}x{h} is over "
                             f"{STREAM_PIXELS} pixels (use --ensemble 1)")
        _upscale_ensemble_to_file(model, src, h, w, target, fmt, args, dtype, path.name)
        return h, w
    bar = _progress_bar(args.steps, f"{path.name}: denoise")
    cond = encode_condition(model, src.rgb)
    latent = denoise(model, cond, steps=args.steps, eta=args.eta, seed=args.seed,
                     dtype=dtype, callback=lambda i, n, x0: bar.update(1), tile=args.tile)
    bar.close()
    alpha = BandResize(src.alpha, h, w) if fmt.alpha else None
    _decode_to_file(model, latent, h, w, target, fmt, args, dtype, f"{path.name}: decode {w}x{h}",
                    guide=sr_guide(model, src.rgb, cond, consistency=args.consistency,
                                   detail=args.mode == "detail"), alpha=alpha)
    return h, w


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _streams(target: Path, h: int, w: int, fmt) -> bool:
    """Whether this output is written band by band (PNG: large or 16-bit) instead of from a canvas."""
    from .imageops import STREAM_PIXELS

    return target.suffix.lower() == ".png" and (h * w > STREAM_PIXELS or fmt.bits == 16)


def check_output_room(target: Path, h: int, w: int, fmt, in_memory: bool = False) -> None:
    """Refuse up front an output whose canvas would not fit in the memory available, or whose
    known (uncompressed) file size would not fit on its disk. ValueError with the figures."""
    import shutil

    if in_memory or not _streams(target, h, w, fmt):
        # the canvas plus the encoder's copy of it (Pillow); the ensemble holds float32 outputs
        need = h * w * (3 * 4 * 3 if in_memory else fmt.channels * fmt.bits // 8 * 2)
        free = _available_memory()
        if need > free:
            raise ValueError(f"output {w}x{h} {target.suffix} needs about {need / 1e9:.1f} GB of memory, "
                             f"{free / 1e9:.1f} GB available: write a .png (streamed band by band) or a smaller size")
    if target.suffix.lower() in (".bmp", ".tif", ".tiff"):  # uncompressed: the file size is known
        need = h * (w * (fmt.channels + (fmt.mode == "LA")) + 3) + 1024
        free = shutil.disk_usage(target.parent).free
        if need > free:
            raise ValueError(f"output {target} needs {need / 1e6:.1f} MB on disk, {target.parent} has "
                             f"{free / 1e6:.1f} MB free")


def _upscale_ensemble_to_file(model, src, h: int, w: int, target: Path, fmt, args, dtype, name: str) -> None:
    from .imageops import pixels_from_rgb, save_image
    from .pipeline import resize_alpha, upscale_tensor

    bar = _progress_bar(args.steps * args.ensemble, f"{name}: denoise x{args.ensemble}")
    out = upscale_tensor(model, src.rgb, h, w, steps=args.steps, eta=args.eta, seed=args.seed, chunk=args.chunk,
                         dtype=dtype, callback=lambda i, n, x0: bar.update(1), consistency=args.consistency,
                         ensemble=args.ensemble, tile=args.tile, detail=args.mode == "detail")
    bar.close()
    alpha = resize_alpha(src.alpha, h, w) if fmt.alpha else None
    try:
        save_image(pixels_from_rgb(out, alpha, fmt)[0], target, fmt, args.quality)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None


def _decode_to_file(model, latent, h: int, w: int, target: Path, fmt, args, dtype, desc: str,
                    guide=None, alpha=None) -> None:
    """Decode one latent [1,C,h,w] into ``target`` in ``fmt``: PNGs that are large or 16-bit
    stream band by band (memory: one band); everything else goes through a canvas. ``alpha``: a
    BandResize of the input's alpha, or None."""
    from .imageops import pixels_from_rgb, save_image, save_png_rows
    from .pipeline import decode_bands

    bar = _progress_bar(h, desc)
    bar.unit = "row"

    def progress(done, total):
        bar.update(done - bar.n)

    def pixel_bands():
        for y0, y1, band in decode_bands(model, latent, h, w, args.chunk, dtype, guide=guide, progress=progress):
            yield y0, y1, pixels_from_rgb(band, alpha.band(y0, y1) if alpha is not None else None, fmt)[0]

    try:
        if _streams(target, h, w, fmt):
            save_png_rows(target, h, w, (band for _, _, band in pixel_bands()), fmt)
        else:
            save_image(_canvas(pixel_bands(), h, w, fmt), target, fmt, args.quality)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        bar.close()


def _canvas(bands, h: int, w: int, fmt):
    """The whole image [h,w,C] assembled from (y0, y1, pixels) bands."""
    import numpy as np

    canvas = np.empty((h, w, fmt.channels), dtype=np.uint16 if fmt.bits == 16 else np.uint8)
    for y0, y1, band in bands:
        canvas[y0:y1] = band
    return canvas


def cmd_generate(args) -> int:
    from .imageops import PixelFormat, output_format
    from .pipeline import denoise, generation_latent_size, size_problem

    w, h = parse_size(args.size)
    if size_problem(w, h):
        raise UserError(size_problem(w, h))
    n = _positive_int("-n", args.n)
    check_sampling(args)
    check_output_options(args)
    out = Path(args.output)
    if out.is_dir():
        targets = [out / f"generated_s{args.seed}_{i}{args.suffix}" for i in range(n)]
    else:
        if not out.parent.is_dir():
            raise UserError(f"output folder does not exist: {out.parent}")
        targets = [out] if n == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]
    try:
        fmt, _ = output_format(PixelFormat(), targets[0], w, h)
        check_output_room(targets[0], h, w, fmt)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    check_existing(targets, args)
    check_writable(targets)
    model, _, dtype = load(args.model, "gen", args.device, args.dtype)
    sampling(args, model)
    lh, lw = generation_latent_size(model, h, w)
    bar = _progress_bar(args.steps, "denoise")
    latent = denoise(model, latent_shape=(n, model.config.latent_channels, lh, lw), steps=args.steps,
                     eta=args.eta, seed=args.seed, dtype=dtype, callback=lambda i, t, x0: bar.update(1))
    bar.close()
    for i, target in enumerate(targets):
        if args.skip_existing and target.exists():
            print(f"{target} exists, skipped", file=sys.stderr)
            continue
        _decode_to_file(model, latent[i:i + 1], h, w, target, fmt, args, dtype, f"decode {w}x{h}")
        print(f"-> {target} ({w}x{h})")
    return 0


def cmd_info(args) -> int:
    from .checkpoint import CheckpointError, load_model
    from .model import parameter_counts

    try:
        model = load_model(args.model_file)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    cfg = json.loads(model.config.to_json())
    print(f"model: {args.model_file}")
    print(f"task: {model.config.task}  (downsample f={model.config.downsample}, latent channels "
          f"{model.config.latent_channels}, latent scale {model.config.latent_scale:.4g})")
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in parameter_counts(model).items()))
    print("config: " + json.dumps(cfg, sort_keys=True))
    print("training: " + json.dumps(getattr(model, "training_info", {}), sort_keys=True))
    return 0


def _report_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"report folder {out} is a file")
    if not out.parent.is_dir():
        raise UserError(f"output folder does not exist: {out.parent}")
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create report folder {out}: {exc.strerror or exc}") from None
    check_writable([out / "metrics.csv"])
    return out


def _parse_scales(text: str) -> list[float]:
    scales = [parse_scale(part) for part in text.split(",") if part.strip()]
    if not scales:
        raise UserError("--scales needs at least one scale, e.g. 2,3,4")
    return scales


def cmd_eval(args) -> int:
    import shlex

    from . import eval_report, eval_sr
    from .train.data import list_images

    scales = _parse_scales(args.scales)
    check_sampling(args)
    _positive_int("--seeds", args.seeds)
    _positive_int("--max-side", args.max_side)
    hr_dir = Path(args.hr_dir)
    if not hr_dir.is_dir():
        raise UserError(f"HR folder not found: {hr_dir}")
    paths = list_images(hr_dir)
    if not paths:
        raise UserError(f"no images in {hr_dir}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODE_CHOICES]
    if not modes or bad or len(set(modes)) != len(modes):
        raise UserError(f"--modes takes a comma-separated list of {', '.join(MODE_CHOICES)}, got {args.modes!r}")
    regression = baseline_meta = None
    if args.baseline:
        from .regression import load_baseline

        try:
            regression, baseline_meta = load_baseline(args.baseline)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    out = _report_dir(args.output)
    model, _, _ = load(args.model, "sr", args.device)
    mode_settings = {}
    for mode in modes:  # checks --steps / --eta against the model, as each mode resolves them
        per_mode = argparse.Namespace(steps=args.steps, eta=args.eta, seed=args.seed, mode=mode)
        sampling(per_mode, model)
        mode_settings[mode] = (per_mode.steps, per_mode.eta)
    opts = eval_sr.SREvalOptions(scales=tuple(scales), modes=tuple(modes), steps=args.steps, eta=args.eta,
                                 seeds=args.seeds, max_side=args.max_side, limit=args.limit,
                                 consistency=args.consistency, ensemble=args.ensemble)
    from tqdm import tqdm

    total = len(paths[: args.limit]) * len(scales)
    with tqdm(total=total, desc="eval", unit="image-scale", file=sys.stderr, disable=None) as bar:
        rows, skipped, grid = eval_sr.run(model, paths, opts, progress=lambda: bar.update(1), regression=regression)
    for p, why in skipped:
        print(f"skipped {p}: {why}", file=sys.stderr)
    if not rows:
        raise UserError(f"no usable images in {hr_dir} ({len(skipped)} skipped)")
    summary = eval_sr.summarize(rows)
    ours = [eval_sr.ours_method(m) for m in modes]
    methods = ["bicubic", "lanczos", "lanczos+unsharp"] + ([eval_sr.REGRESSION] if regression else []) + ours
    model_path = resolve_model_path(args.model, "sr")
    regression_text = (f"Regression baseline (`{Path(args.baseline).name}`, LIIF-style, residual over bicubic): "
                       f"{baseline_meta.get('parameters', '?')} parameters, {baseline_meta.get('steps', '?')} steps "
                       f"of batch {baseline_meta.get('batch', '?')} in {baseline_meta.get('seconds', '?')} s."
                       if regression else "")
    header = ["# ArbScale SR evaluation", "",
              f"Command: `arbscale {' '.join(shlex.quote(a) for a in args.argv)}`",
              f"Model: `{model_path.name}` ({model.config.task}, latent {model.config.latent_channels}ch, "
              f"training: {json.dumps(getattr(model, 'training_info', {}), sort_keys=True)})",
              f"Images: {len({r['image'] for r in rows})} from `{hr_dir}` (centre crops of at most "
              f"{args.max_side}px, sides divisible by the scale); LR by antialiased bicubic (PIL).",
              "Ours: " + "; ".join(f"{m} mode {st} DDIM step{'s' * (st != 1)}, eta {e:g}"
                                    for m, (st, e) in mode_settings.items())
              + f"; {args.seeds} seed(s), LR-consistency projection {'on' if args.consistency else 'off'}, "
              f"self-ensemble of {args.ensemble}.", regression_text, "",
              "![PSNR vs scale](psnr_vs_scale.png)", "",
              "![perception-distortion](perception_distortion.png)", "",
              "![consistency and diversity](consistency_diversity.png)", "", "![comparison](comparison_grid.png)"]
    eval_report.write_csv(rows, out / "metrics.csv")
    text = eval_report.sr_markdown(summary, scales, methods, header, skipped)
    from .fileio import atomic_path

    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(text)
    eval_report.psnr_plot(summary, scales, methods, out / "psnr_vs_scale.png")
    eval_report.perception_distortion_plot(summary, scales, methods, out / "perception_distortion.png")
    eval_report.consistency_plot(summary, scales, methods, out / "consistency_diversity.png")
    grid_scale = 4.0 if 4.0 in scales else scales[len(scales) // 2]
    eval_report.comparison_grid(grid, grid_scale, out / "comparison_grid.png")
    for scale in scales:
        bic = summary.get((scale, "bicubic"), {})
        cells = [f"{m} {summary[(scale, m)]['psnr_rgb'][0]:.2f} dB"
                 for m in methods[3:] if "psnr_rgb" in summary.get((scale, m), {})]
        if cells and "psnr_rgb" in bic:
            print(f"x{scale:g}: " + ", ".join(cells) + f"; bicubic {bic['psnr_rgb'][0]:.2f} dB")
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_eval_gen(args) -> int:
    from . import eval_gen
    from .fileio import atomic_path
    from .imageops import save_image

    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes:
        raise UserError("--sizes needs at least one WIDTHxHEIGHT")
    _positive_int("--samples", args.samples)
    check_sampling(args)
    out = _report_dir(args.output)
    model, _, _ = load(args.model, "gen", args.device)
    sampling(args, model)
    from tqdm import tqdm

    with tqdm(total=args.samples, desc="eval-gen", file=sys.stderr, disable=None) as bar:
        rows, extra = eval_gen.run(model, sizes, args.samples, args.steps, args.eta, progress=lambda: bar.update(1))
    lines = ["# ArbScale generation evaluation", "",
             f"Model: `{resolve_model_path(args.model, 'gen').name}`; {args.samples} samples, {args.steps} DDIM steps, "
             f"eta {args.eta}; each decoded at " + ", ".join(f"{w}x{h}" for w, h in sizes) + ".", "",
             "| size | self-SSIM vs smallest size (mean) |", "|---|---|"]
    for w, h in sizes:
        vals = [r["self_ssim"] for r in rows if (r["width"], r["height"]) == (w, h)]
        lines.append(f"| {w}x{h} | {sum(vals) / len(vals):.4f} |")
    lines += ["", f"Diversity (mean pairwise |a-b| at {sizes[0][0]}x{sizes[0][1]}, 0-255): {extra['diversity']:.2f}",
              "", eval_gen.OFFLINE_NOTE, ""]
    for seed, decoded in extra["images"].items():
        if seed < 4:
            for (w, h), img in decoded.items():
                save_image(img, out / f"sample{seed}_{w}x{h}.png")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _default_steps_text() -> str:
    from .pipeline import DEFAULT_STEPS

    return (f"the model file's own, else {DEFAULT_STEPS['sr']} for SR and {DEFAULT_STEPS['gen']} for generation; "
            "the bundled SR model: 1")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="arbscale", description="Arbitrary-scale super-resolution and generation "
                                             "(latent diffusion + implicit neural decoder).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp, task):
        sp.add_argument("--steps", type=int, help=f"DDIM steps (default: SR, the mode's; else {_default_steps_text()})")
        sp.add_argument("--eta", type=float, help="DDIM eta: 0 deterministic, 1 DDPM-like (default: the mode's; "
                                                  "generation: 0)")
        sp.add_argument("--seed", type=int, default=0, help="0 to 2**64-1; -1: a random one (printed)")
        sp.add_argument("--chunk", type=int, default=65536, help="pixels decoded at a time (memory)")
        sp.add_argument("--model", help=f"model file (default: bundled {DEFAULT_MODELS[task].name})")
        sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
        sp.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 (autocast)")

    def output_options(sp):
        sp.add_argument("--overwrite", action="store_true", help="replace outputs that already exist "
                        "(by default an existing output is an error)")
        sp.add_argument("--skip-existing", action="store_true", help="keep outputs that already exist and skip "
                        "their inputs (re-running an interrupted batch)")
        sp.add_argument("--quality", type=int, default=95, help="JPEG and WebP quality 1-100 (default 95; WebP "
                        "at 100: lossless); PNG is always lossless")
        sp.add_argument("--format", choices=("png", "jpg", "webp", "bmp", "tif"),
                        help="file type of outputs named in a folder (default png); a file OUT names its own")

    def consistency_flag(sp):
        sp.add_argument("--no-consistency", dest="consistency", action="store_false",
                        help="skip the LR-consistency projection (by default the output is corrected so that, "
                             "brought back to the input's size, it gives the input)")
        sp.add_argument("--ensemble", type=int, default=1, choices=(1, 2, 4, 8),
                        help="geometric self-ensemble: average this many runs on flipped/transposed copies "
                             "(higher PSNR for that many times the work; default 1)")

    up = sub.add_parser("upscale", help="upscale images by any factor or to any size")
    up.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders")
    up.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (one input) or folder")
    up.add_argument("--scale", help="scale factor, e.g. 4 or 3.7")
    up.add_argument("--size", help="output size WIDTHxHEIGHT")
    up.add_argument("--tile", type=int, default=256,
                    help="denoise latents over this many cells a side (for the shipped models: LR pixels) "
                         "in overlapping tiles of at most this size, bounding memory (default 256)")
    up.add_argument("--mode", choices=MODE_CHOICES, default="fidelity",
                    help="fidelity (default): the model's few-step estimate, deterministic, the best PSNR; detail: "
                         "DDIM with eta > 0 over several steps, each seed its own sharper detail (less faithful). "
                         "--steps and --eta override the mode's")
    common(up, "sr")
    consistency_flag(up)
    output_options(up)
    up.set_defaults(func=cmd_upscale)

    gen = sub.add_parser("generate", help="generate images at any size")
    gen.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder")
    gen.add_argument("--size", required=True, help="output size WIDTHxHEIGHT")
    gen.add_argument("-n", type=int, default=1, help="number of images")
    common(gen, "gen")
    output_options(gen)
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("eval", help="SR metrics on a folder of HR images, with baselines, plots and a grid")
    ev.add_argument("hr_dir", metavar="HR_DIR")
    ev.add_argument("-o", "--output", required=True, metavar="REPORT_DIR")
    ev.add_argument("--scales", default="2,3,4,6.5,8")
    ev.add_argument("--limit", type=int, help="at most this many images")
    ev.add_argument("--seeds", type=int, default=1, help="seeds per image (diversity needs 2+)")
    ev.add_argument("--max-side", type=int, default=384, help="centre-crop HR images to at most this size "
                    "(384: LR crops of 48, 32 and 24 px at x8, x12 and x16)")
    ev.add_argument("--modes", default="fidelity",
                    help="ours in these modes, comma-separated: fidelity, detail (default fidelity)")
    ev.add_argument("--baseline", metavar="FILE",
                    help="also measure the LIIF-style regression baseline in these weights (benchmarks/liif_baseline.py)")
    common(ev, "sr")
    consistency_flag(ev)
    ev.set_defaults(func=cmd_eval)

    eg = sub.add_parser("eval-gen", help="self-SSIM across sizes and diversity of a generation model")
    eg.add_argument("-o", "--output", required=True, metavar="REPORT_DIR")
    eg.add_argument("--sizes", default="128x128,256x256,512x512")
    eg.add_argument("--samples", type=int, default=8)
    common(eg, "gen")
    eg.set_defaults(func=cmd_eval_gen)

    info = sub.add_parser("info", help="show a model file's config, parameters and training info")
    info.add_argument("model_file", metavar="MODEL")
    info.set_defaults(func=cmd_info)
    return p


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _main(argv: list[str] | None) -> int:
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # outputs being written are removed (atomic writes); finished ones stay
        print("error: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # e.g. `arbscale info M | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
