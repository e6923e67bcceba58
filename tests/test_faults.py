"""Bad input, faults and interruption: the matrix of issue #15, through the console script (as
users run it), the library and the node logic. Each refused case: one ``error: ...`` line, exit 2,
nothing written, no temp file, inputs untouched."""
from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from PIL import Image, ImageCms

from conftest import file_hash, micro_model, write_png

EXE = Path(sys.executable).with_name("arbscale")
CLI = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "arbscale_core.cli"]


def arbscale(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): file_hash(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


# ---------------------------------------------------------------------------------------------
# The refusal matrix: every case runs through the console script, 4 at a time.

def _make_files(d: Path, sr_ckpt: Path, gen_ckpt: Path) -> dict:
    img = write_png(d / "in.png", 8, 6)
    f = {"img": img, "tmp": d, "in": d, "sr": sr_ckpt, "gen": gen_ckpt}
    raw = img.read_bytes()
    (d / "trunc.png").write_bytes(raw[: len(raw) // 2])
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (d / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("hello, not an image\n")
    (d / "x.png").mkdir()
    (d / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2,
                                                                                    0, 0, 0))
                                 + png_chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + png_chunk(b"IEND", b""))
    z, row = zlib.compressobj(9), b"\x00" + b"\xff" * 2500  # 1-bit white rows
    solid = b"".join(z.compress(row) for _ in range(20000)) + z.flush()
    (d / "solid.png").write_bytes(b"\x89PNG\r\n\x1a\n"  # a valid 20000x20000 solid white PNG: 50 kB, 400 Mpx
                                  + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0))
                                  + png_chunk(b"IDAT", solid) + png_chunk(b"IEND", b""))
    (d / "empty.safetensors").write_bytes(b"")
    (d / "text.safetensors").write_text("not weights")
    ck = sr_ckpt.read_bytes()
    (d / "trunc.safetensors").write_bytes(ck[: len(ck) // 2])
    header = b'{"__metadata__": {"format": "arbscale", "config": "{not json"}}'
    (d / "garbage.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    from arbscale_core.checkpoint import save_model

    wrong = micro_model("sr", unet_channels=24)
    save_model(wrong, d / "tmp_wrong.safetensors")
    # the file claims the micro config but holds the 24-channel U-Net's weights
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(d / "tmp_wrong.safetensors"), "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    with safe_open(str(sr_ckpt), "pt") as fh:
        meta = fh.metadata()
    save_file(tensors, str(d / "wrong.safetensors"), metadata=meta)
    (d / "tmp_wrong.safetensors").unlink()
    return f


UP = ["upscale", "{img}", "-o", "{tmp}/o.png"]
REFUSED = {
    # image files
    "truncated png": (["upscale", "{in}/trunc.png", "-o", "{tmp}/o.png", "--scale", "2"], "not a readable image"),
    "truncated jpeg": (["upscale", "{in}/trunc.jpg", "-o", "{tmp}/o.png", "--scale", "2"], "not a readable image"),
    "zero-byte file": (["upscale", "{in}/empty.png", "-o", "{tmp}/o.png", "--scale", "2"], "not a readable image"),
    "text named .png": (["upscale", "{in}/text.png", "-o", "{tmp}/o.png", "--scale", "2"], "not a readable image"),
    "folder named x.png": (["upscale", "{in}/x.png", "-o", "{tmp}/o.png", "--scale", "2"], "no images in folder"),
    "decompression bomb": (["upscale", "{in}/bomb.png", "-o", "{tmp}/o.png", "--scale", "2"],
                           "10,000,000,000 pixels, over the input limit of 67,108,864"),
    "20000x20000 solid png": (["upscale", "{in}/solid.png", "-o", "{tmp}/o.png", "--scale", "2"],
                              "400,000,000 pixels, over the input limit of 67,108,864"),
    # scales and sizes
    "scale 1e6": (UP + ["--scale", "1e6"], "over the limit of 2,147,483,648"),
    "scale 1e308": (UP + ["--scale", "1e308"], "over the output limit"),
    "scale empty": (UP + ["--scale", ""], "scale must be a number, got ''"),
    "scale 0": (UP + ["--scale", "0"], "scale must be a finite number > 0"),
    "size 0x0": (UP + ["--size", "0x0"], "size must be positive"),
    "size 100000x100000": (UP + ["--size", "100000x100000"], "too large"),
    "size abc": (UP + ["--size", "abc"], "WIDTHxHEIGHT"),
    "size 10x": (UP + ["--size", "10x"], "WIDTHxHEIGHT"),
    "size -5x40 with =": (UP + ["--size=-5x40"], "WIDTHxHEIGHT"),
    "size -5x40 without =": (UP + ["--size", "-5x40"], "--size: expected one argument"),
    "jpeg side limit": (["upscale", "{img}", "-o", "{tmp}/o.jpg", "--size", "70000x10"],
                        "too large for JPEG, which holds at most 65,535 px a side"),
    # options
    "steps 0": (UP + ["--scale", "2", "--steps", "0"], "--steps must be a positive whole number"),
    "steps -1": (UP + ["--scale", "2", "--steps", "-1"], "--steps must be a positive whole number"),
    "steps 100000": (UP + ["--scale", "2", "--steps", "100000"], "--steps must be a whole number from 1 to 1000"),
    "steps 1.5": (UP + ["--scale", "2", "--steps", "1.5"], "invalid int value: '1.5'"),
    "eta -1": (UP + ["--scale", "2", "--eta=-1"], "--eta must be between 0"),
    "eta 2": (UP + ["--scale", "2", "--eta", "2"], "--eta must be between 0"),
    "eta nan": (UP + ["--scale", "2", "--eta", "nan"], "--eta must be between 0"),
    "seed 2**70": (UP + ["--scale", "2", "--seed", str(2 ** 70)], "--seed must be from 0 to 2**64-1"),
    "seed -2": (UP + ["--scale", "2", "--seed=-2"], "--seed must be from 0 to 2**64-1"),
    "chunk 0": (UP + ["--scale", "2", "--chunk", "0"], "--chunk must be a positive whole number"),
    "chunk -5": (UP + ["--scale", "2", "--chunk=-5"], "--chunk must be a positive whole number"),
    "tile 0": (UP + ["--scale", "2", "--tile", "0"], "--tile"),
    "tile 1": (UP + ["--scale", "2", "--tile", "1"], "--tile must be at least 16"),
    "tile 7": (UP + ["--scale", "2", "--tile", "7"], "--tile must be at least 16"),
    "ensemble 3": (UP + ["--scale", "2", "--ensemble", "3"], "invalid choice: 3"),
    "device cuda absent": (UP + ["--scale", "2", "--device", "cuda"], "CUDA is not available"),
    "device mps absent": (UP + ["--scale", "2", "--device", "mps"], "MPS is not available"),
    "unknown device": (UP + ["--scale", "2", "--device", "tpu9"], "unknown device 'tpu9'"),
    "fp16 on cpu": (UP + ["--scale", "2", "--device", "cpu", "--dtype", "fp16"], "fp16 is not supported on the CPU"),
    "quality 0": (["upscale", "{img}", "-o", "{tmp}/o.jpg", "--scale", "2", "--quality", "0"], "--quality"),
    # outputs
    "missing output folder": (["upscale", "{img}", "-o", "{tmp}/nope/o.png", "--scale", "2"],
                              "output folder does not exist"),
    "output is the input": (["upscale", "{img}", "-o", "{img}", "--scale", "2", "--overwrite"],
                            "would overwrite an input"),
    "existing output": (["upscale", "{img}", "-o", "{tmp}/existing.jpg", "--scale", "2"],
                        "already exists: pass --overwrite to replace, or --skip-existing"),
    "unknown extension": (["upscale", "{img}", "-o", "{tmp}/o.xyz", "--scale", "2"], "needs an image suffix"),
    "overwrite and skip": (UP + ["--scale", "2", "--overwrite", "--skip-existing"], "at most one of"),
    # models
    "model text file": (UP + ["--scale", "2", "--model", "{in}/text.safetensors"], "not a valid safetensors file"),
    "model empty file": (UP + ["--scale", "2", "--model", "{in}/empty.safetensors"], "not a valid safetensors file"),
    "model truncated": (UP + ["--scale", "2", "--model", "{in}/trunc.safetensors"], "trunc.safetensors: "),
    "model garbage metadata": (UP + ["--scale", "2", "--model", "{in}/garbage.safetensors"], "garbage.safetensors: "),
    "model wrong shapes": (UP + ["--scale", "2", "--model", "{in}/wrong.safetensors"], "shape mismatch"),
    "model missing": (UP + ["--scale", "2", "--model", "{tmp}/absent.safetensors"], "model file not found"),
    "generation model to upscale": (UP + ["--scale", "2", "--model", "{gen}"], "is a generation model"),
    "SR model to generate": (["generate", "--size", "16x16", "-o", "{tmp}/g.png", "--model", "{sr}"],
                             "is an SR model; this command needs a generation model"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, sr_ckpt, gen_ckpt) -> dict:
    return _make_files(tmp_path_factory.mktemp("inputs"), sr_ckpt, gen_ckpt)


@pytest.fixture(scope="module")
def refused_runs(tmp_path_factory, bad_files, sr_ckpt, gen_ckpt):
    root = tmp_path_factory.mktemp("refused")
    files = bad_files
    shared = files["in"]
    inputs_before = snapshot(shared)

    def run(case):
        d = root / case.replace(" ", "_").replace("*", "")
        d.mkdir()
        (d / "existing.jpg").write_bytes(b"an earlier output")
        argv = [a.format(**(files | {"tmp": d})) for a in REFUSED[case][0]]
        if "--model" not in argv:
            argv += ["--model", str(gen_ckpt if argv[0] == "generate" else sr_ckpt)]
        before = snapshot(d)
        res = arbscale(*argv)
        return res, before, snapshot(d)

    with ThreadPoolExecutor(4) as pool:
        runs = dict(zip(REFUSED, pool.map(run, REFUSED)))
    assert snapshot(shared) == inputs_before  # no input touched by any case
    return runs


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_one_line_nothing_written(case, refused_runs):
    res, before, after = refused_runs[case]
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and REFUSED[case][1] in lines[0], res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert after == before  # no output, no temp file, inputs untouched


# ---------------------------------------------------------------------------------------------
# Valid inputs in every mode: the right output.

def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _alpha(h, w):
    y, x = np.mgrid[:h, :w]
    return ((x + y) * 255 // (h + w - 2)).astype(np.uint8)  # a diagonal ramp 0..255


def _write_mode(path: Path, mode: str) -> None:
    h, w = 12, 16
    if mode == "I;16":
        g = (np.random.default_rng(0).integers(0, 65536, (h, w))).astype(np.uint16)
        png.Writer(w, h, greyscale=True, bitdepth=16).write(open(path, "wb"), g)
    elif mode == "RGB16":
        a = np.random.default_rng(0).integers(0, 65536, (h, w * 3)).astype(np.uint16)
        png.Writer(w, h, greyscale=False, bitdepth=16).write(open(path, "wb"), a)
    elif mode == "L":
        Image.fromarray(_rgb(h, w)[..., 0]).save(path)
    elif mode == "LA":
        Image.fromarray(np.dstack([_rgb(h, w)[..., 0], _alpha(h, w)]), "LA").save(path)
    elif mode == "RGBA":
        Image.fromarray(np.dstack([_rgb(h, w), _alpha(h, w)]), "RGBA").save(path)
    elif mode == "P+transparency":
        im = Image.fromarray(_rgb(h, w)).quantize(16)
        im.info["transparency"] = 0
        im.save(path, transparency=0)
    elif mode == "CMYK jpeg":
        Image.fromarray(_rgb(h, w)).convert("CMYK").save(path, "JPEG")
    elif mode == "1-bit":
        Image.fromarray(_rgb(h, w)[..., 0] > 128).save(path)
    elif mode == "ICC profile":
        icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
        Image.fromarray(_rgb(h, w)).save(path, icc_profile=icc)


MODES = {  # input mode -> (suffix, output Pillow mode, what the note says or None)
    "I;16": (".png", "I;16", None),
    "RGB16": (".png", "RGB", None),
    "L": (".png", "L", None),
    "LA": (".png", "LA", None),
    "RGBA": (".png", "RGBA", None),
    "P+transparency": (".png", "RGBA", None),
    "CMYK jpeg": (".jpg", "RGB", "CMYK converted to sRGB"),
    "1-bit": (".png", "L", "1-bit image written as 8-bit greyscale"),
    "ICC profile": (".png", "RGB", None),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_image_modes_give_the_right_output(mode, tmp_path, sr_ckpt):
    suffix, out_mode, note = MODES[mode]
    src = tmp_path / f"in{suffix}"
    _write_mode(src, mode)
    before = file_hash(src)
    res = arbscale("upscale", src, "-o", tmp_path / "o.png", "--scale", "2", "--model", sr_ckpt)
    assert res.returncode == 0, res.stderr
    assert file_hash(src) == before
    out = Image.open(tmp_path / "o.png")
    assert out.size == (32, 24) and out.mode == out_mode
    if note:
        assert f"note: {src.name}: {note}" in res.stderr
    else:
        assert "note:" not in res.stderr, res.stderr
    if mode in ("I;16", "RGB16"):
        _, _, rows, info = png.Reader(filename=str(tmp_path / "o.png")).asDirect()
        values = np.vstack([np.asarray(r, np.int64) for r in rows])
        assert info["bitdepth"] == 16
        assert np.any(values % 257 != 0)  # 16 real bits, not 8 bits scaled up
    if mode in ("LA", "RGBA"):
        alpha = np.asarray(out)[..., -1].astype(float)
        want = np.asarray(Image.fromarray(_alpha(12, 16)).resize((32, 24), Image.BICUBIC), float)
        assert np.abs(alpha - want).mean() < 4  # the ramp, upscaled with the image
    if mode == "P+transparency":
        stored = np.asarray(Image.open(src))
        assert np.asarray(out)[..., 3].min() < 128 and (stored == 0).any()
    if mode == "ICC profile":
        assert out.info.get("icc_profile") == Image.open(src).info["icc_profile"]


def test_16_bit_input_to_jpeg_says_it_is_reduced(tmp_path, sr_ckpt):
    src = tmp_path / "in.png"
    _write_mode(src, "RGB16")
    res = arbscale("upscale", src, "-o", tmp_path / "o.jpg", "--scale", "2", "--model", sr_ckpt)
    assert res.returncode == 0, res.stderr
    assert "written as 8 bits a channel: only PNG keeps the input's 16" in res.stderr
    src = tmp_path / "a.png"
    _write_mode(src, "RGBA")
    res = arbscale("upscale", src, "-o", tmp_path / "a.jpg", "--scale", "2", "--model", sr_ckpt)
    assert res.returncode == 0 and "alpha dropped: JPEG has no alpha channel" in res.stderr
    assert Image.open(tmp_path / "a.jpg").mode == "RGB"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_made_upright_as_pillow_does(orientation, tmp_path):
    from PIL import ImageOps

    from arbscale_core.imageops import read_image

    path = tmp_path / "in.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_rgb(10, 14)).save(path, exif=exif, quality=100)
    with Image.open(path) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), float) / 255
    got = read_image(path).rgb[0].permute(1, 2, 0).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-6


# Inputs that are tiny or thin: the bundled SR model (the micro test model's 1-channel groups cannot
# normalise a 1x1 latent) gives the right size.
@pytest.mark.parametrize("width,height,scale", [(1, 1, "4"), (2, 2, "3"), (3, 1000, "2"), (8, 6, "1e-6"),
                                                (8, 6, "0.999"), (8, 6, "1"), (8, 6, "2x")])
def test_tiny_thin_and_odd_scales(width, height, scale, tmp_path):
    from arbscale_core.pipeline import scaled_side

    src = write_png(tmp_path / "in.png", width, height)
    res = arbscale("upscale", src, "-o", tmp_path / "o.png", "--scale", scale)
    assert res.returncode == 0, res.stderr
    s = float(scale.rstrip("x"))
    assert Image.open(tmp_path / "o.png").size == (scaled_side(width, s), scaled_side(height, s))


# ---------------------------------------------------------------------------------------------
# Outputs

def test_existing_output_policy(tmp_path, sr_ckpt):
    src = write_png(tmp_path / "in.png", 8, 6)
    out = tmp_path / "o.png"
    assert arbscale("upscale", src, "-o", out, "--scale", "2", "--model", sr_ckpt).returncode == 0
    first = file_hash(out)
    res = arbscale("upscale", src, "-o", out, "--scale", "3", "--model", sr_ckpt, "--skip-existing")
    assert res.returncode == 0 and "exists, skipped" in res.stderr and file_hash(out) == first
    res = arbscale("upscale", src, "-o", out, "--scale", "3", "--model", sr_ckpt, "--overwrite")
    assert res.returncode == 0 and Image.open(out).size == (24, 18)


def test_jpeg_and_webp_quality(tmp_path, sr_ckpt):
    src = write_png(tmp_path / "in.png", 16, 12)
    sizes = {}
    for suffix in (".jpg", ".webp"):
        for q in (20, 95):
            out = tmp_path / f"q{q}{suffix}"
            res = arbscale("upscale", src, "-o", out, "--scale", "4", "--quality", q, "--model", sr_ckpt)
            assert res.returncode == 0, res.stderr
            assert Image.open(out).format == {".jpg": "JPEG", ".webp": "WEBP"}[suffix]
            sizes[suffix, q] = out.stat().st_size
        assert sizes[suffix, 95] > sizes[suffix, 20]
    # WebP at 100 is lossless: the same pixels as the PNG
    for name in ("o.png", "o.webp"):
        assert arbscale("upscale", src, "-o", tmp_path / name, "--scale", "4", "--quality", "100",
                        "--model", sr_ckpt).returncode == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")),
                          np.asarray(Image.open(tmp_path / "o.webp").convert("RGB")))


def test_folder_batch_with_format(tmp_path, sr_ckpt):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    for i in range(2):
        write_png(tmp_path / "in" / f"p{i}.png", 8, 6, seed=i)
    res = arbscale("upscale", tmp_path / "in", "-o", tmp_path / "out", "--scale", "2", "--format", "jpg",
                   "--model", sr_ckpt)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0_x2.jpg", "p1_x2.jpg"]


def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir()
    if os.geteuid() != 0:
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return res.returncode == 0


def test_read_only_output_folder(tmp_path, sr_ckpt):
    src = write_png(tmp_path / "in.png", 8, 6)
    folder = tmp_path / "ro"
    mounted = _mount_tmpfs(folder, "ro,size=1m")
    if not mounted:
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):
            pytest.skip("cannot make a read-only folder here (root without mount)")
    try:
        res = arbscale("upscale", src, "-o", folder / "o.png", "--scale", "2", "--model", sr_ckpt)
        assert res.returncode == 2
        assert res.stderr.strip().startswith(f"error: cannot write to {folder}") and res.stderr.count("\n") == 1
        assert list(folder.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)])


@pytest.mark.slow
def test_full_disk_leaves_nothing(tmp_path, sr_ckpt):
    """A 1 MB disk: a BMP (size known) is refused up front with the figures; a PNG that does not
    fit fails on write with one line and leaves no temp file."""
    folder = tmp_path / "small"
    if not _mount_tmpfs(folder, "size=1m"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        src = write_png(tmp_path / "in.png", 160, 120)
        res = arbscale("upscale", src, "-o", folder / "o.bmp", "--scale", "6", "--model", sr_ckpt)
        assert res.returncode == 2 and "needs 2.1 MB on disk" in res.stderr and "MB free" in res.stderr, res.stderr
        res = arbscale("upscale", src, "-o", folder / "o.png", "--scale", "10", "--model", sr_ckpt)
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip() == f"error: cannot write {folder / 'o.png'}: No space left on device"
        assert list(folder.iterdir()) == []
    finally:
        subprocess.run(["umount", str(folder)])


def test_memory_refusal_has_the_figures(tmp_path, monkeypatch):
    from arbscale_core import cli
    from arbscale_core.imageops import PixelFormat

    monkeypatch.setattr(cli, "_available_memory", lambda: 10 ** 9)
    with pytest.raises(ValueError, match=r"output 30000x20000 \.jpg needs about 3\.6 GB of memory, 1\.0 GB available"):
        cli.check_output_room(tmp_path / "o.jpg", 20000, 30000, PixelFormat())
    cli.check_output_room(tmp_path / "o.png", 20000, 30000, PixelFormat())  # streamed: no canvas


# ---------------------------------------------------------------------------------------------
# Faults: signals, interrupted batches, concurrent writers, a bad input in a batch

def _default_sigint():
    # a shell's background job starts with SIGINT ignored and Python keeps an inherited SIG_IGN:
    # give the CLI the default an interactive user's Ctrl-C meets, however pytest was started
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(predicate, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_writing_stops_fast_and_leaves_nothing(sig, tmp_path, sr_ckpt):
    """Sent while the output's temp file is open (a 16-bit PNG streams band by band): the process
    ends within seconds, exit 130/143, no output and no temp file."""
    src = tmp_path / "in.png"
    png.Writer(64, 48, greyscale=False, bitdepth=16).write(
        open(src, "wb"), np.random.default_rng(0).integers(0, 65536, (48, 64 * 3)).astype(np.uint16))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(CLI + ["upscale", str(src), "-o", str(out / "o.png"), "--scale", "60", "--steps", "1",
                                   "--chunk", "4096", "--model", str(sr_ckpt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        assert _wait_for(lambda: any(out.iterdir()) or proc.poll() is not None), "no temp file appeared"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.3)
        sent = time.time()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        took = time.time() - sent
    finally:
        proc.kill()
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err
    assert err.strip().splitlines()[-1] == {signal.SIGINT: "error: interrupted", signal.SIGTERM: "error: terminated"}[sig]
    assert list(out.iterdir()) == []
    assert took < 5, took  # measured ~0.1 s here; generous for a loaded CI machine


def test_interrupted_batch_keeps_finished_outputs_and_resumes(tmp_path, sr_ckpt):
    ins, out = tmp_path / "in", tmp_path / "out"
    ins.mkdir()
    out.mkdir()
    for i in range(3):
        write_png(ins / f"p{i}.png", 48, 40, seed=i)
    argv = CLI + ["upscale", str(ins), "-o", str(out), "--scale", "12", "--steps", "1", "--model", str(sr_ckpt)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        assert _wait_for(lambda: (out / "p0_x12.png").exists() or proc.poll() is not None)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    done = {p.name: file_hash(p) for p in out.iterdir()}
    assert proc.returncode == 130 and "p0_x12.png" in done and len(done) < 3
    assert not [n for n in done if n.startswith(".")]  # no temp file
    res = subprocess.run(argv + ["--skip-existing"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["p0_x12.png", "p1_x12.png", "p2_x12.png"]
    assert all(file_hash(out / n) == h for n, h in done.items())  # finished outputs kept as they were
    assert res.stderr.count("exists, skipped") == len(done)


def test_two_writers_never_leave_a_torn_file(tmp_path, sr_ckpt):
    src = write_png(tmp_path / "in.png", 40, 30)
    out = tmp_path / "o.png"
    procs = [subprocess.Popen(CLI + ["upscale", str(src), "-o", str(out), "--scale", s, "--steps", "1",
                                     "--overwrite", "--model", str(sr_ckpt)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in ("8", "9")]
    seen = set()
    while any(p.poll() is None for p in procs):  # whenever the file exists it is whole
        if out.exists():
            with Image.open(out) as im:
                im.load()
                seen.add(im.size)
        time.sleep(0.01)
    assert [p.returncode for p in procs] == [0, 0]
    with Image.open(out) as im:
        im.load()
        assert im.size in {(320, 240), (360, 270)}
    assert seen <= {(320, 240), (360, 270)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "o.png"]


def test_bad_input_in_a_batch_goes_on_and_lists_it(tmp_path, sr_ckpt):
    ins, out = tmp_path / "in", tmp_path / "out"
    ins.mkdir()
    out.mkdir()
    write_png(ins / "a.png", 8, 6)
    (ins / "b.png").write_text("broken download")
    write_png(ins / "c.png", 8, 6, seed=3)
    res = arbscale("upscale", ins, "-o", out, "--scale", "2", "--model", sr_ckpt)
    assert res.returncode == 1
    assert f"error: {ins / 'b.png'}: not a readable image" in res.stderr
    assert res.stderr.strip().splitlines()[-1] == \
        f"error: 1 of 3 inputs failed (the others were written): {ins / 'b.png'}"
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png", "c_x2.png"]


# ---------------------------------------------------------------------------------------------
# The library: named exceptions with the same words

LIB_BAD = {
    "scale 0": (dict(scale=0), "scale must be a finite number > 0"),
    "scale 1e308": (dict(scale=1e308), "over the output limit"),
    "size 0x0": (dict(size=(0, 0)), "size must be positive"),
    "scale and size": (dict(scale=2, size=(4, 4)), "not both or neither"),
    "steps 0": (dict(scale=2, steps=0), "steps must be a whole number from 1 to 1000"),
    "steps 1.5": (dict(scale=2, steps=1.5), "steps must be a whole number"),
    "steps 100000": (dict(scale=2, steps=100000), "from 1 to 1000"),
    "eta 2": (dict(scale=2, eta=2.0), "eta must be between 0"),
    "eta nan": (dict(scale=2, eta=float("nan")), "eta must be between 0"),
    "seed -1": (dict(scale=2, seed=-1), "seed must be a whole number from 0 to 2**64-1"),
    "seed 2**70": (dict(scale=2, seed=2 ** 70), "seed must be"),
    "chunk 0": (dict(scale=2, chunk=0), "chunk must be a whole number of pixels >= 1"),
    "tile 7": (dict(scale=2, tile=7), "tile must be a whole number of at least 16"),
    "ensemble 3": (dict(scale=2, ensemble=3), "ensemble must be one of"),
}


@pytest.mark.parametrize("case", list(LIB_BAD))
def test_library_upscale_refuses_with_a_named_error(case, sr_model):
    from arbscale_core.pipeline import upscale

    kwargs, message = LIB_BAD[case]
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(")):
        upscale(sr_model, torch.rand(1, 3, 6, 8), **kwargs)


@pytest.mark.parametrize("image,message", [
    (torch.randint(0, 255, (1, 3, 6, 8), dtype=torch.uint8), "float in 0..1, got torch.uint8"),
    (torch.rand(1, 3, 6, 8) * 255, "got values from .* to .* \\(divide by 255 first\\?\\)"),
    (torch.full((1, 3, 6, 8), float("nan")), "NaN"),
    (torch.rand(3, 6, 8), "tensor \\[B,C,H,W\\]"),
    (torch.rand(1, 2, 6, 8), "C 1, 3 or 4"),
])
def test_library_refuses_bad_image_tensors(image, message, sr_model):
    from arbscale_core.pipeline import upscale

    with pytest.raises(ValueError, match=message):
        upscale(sr_model, image, scale=2)


def test_library_grey_and_rgba_tensors(sr_model):
    from arbscale_core.pipeline import upscale
    from arbscale_core.pipeline import resize_alpha

    rgb = torch.rand(1, 3, 6, 8)
    alpha = torch.rand(1, 1, 6, 8)
    out = upscale(sr_model, torch.cat([rgb, alpha], 1), scale=2, steps=1)
    assert out.shape == (1, 4, 12, 16)
    assert torch.allclose(out[:, :3], upscale(sr_model, rgb, scale=2, steps=1))
    assert torch.allclose(out[:, 3:], resize_alpha(alpha, 12, 16))
    grey = upscale(sr_model, rgb[:, :1], scale=2, steps=1)
    assert grey.shape == (1, 1, 12, 16)


@pytest.mark.parametrize("name,message", [("empty", "not a valid safetensors file"),
                                          ("text", "not a valid safetensors file"),
                                          ("trunc", "trunc.safetensors: "), ("garbage", "garbage.safetensors: "),
                                          ("wrong", "shape mismatch")])
def test_library_load_model_refuses_bad_files(name, message, bad_files):
    from arbscale_core import CheckpointError, load_model

    files = bad_files
    with pytest.raises(CheckpointError, match=message):
        load_model(files["tmp"] / f"{name}.safetensors")


def test_library_task_mismatch(sr_model, gen_model):
    from arbscale_core.pipeline import generate, upscale

    with pytest.raises(ValueError, match="generation model"):
        upscale(gen_model, torch.rand(1, 3, 6, 8), scale=2)
    with pytest.raises(ValueError, match="SR model"):
        generate(sr_model, (16, 16))
    with pytest.raises(ValueError, match="n must be"):
        generate(gen_model, (16, 16), n=0)


# ---------------------------------------------------------------------------------------------
# Node logic: readable ArbScale errors, alpha and grey IMAGEs

@pytest.mark.parametrize("kwargs,message", [
    (dict(steps=100000), "steps must be a whole number from 1 to 1000"),
    (dict(eta=2.0), "eta must be between 0"),
    (dict(seed=2 ** 70), "seed must be"),
])
def test_node_denoise_readable_errors(kwargs, message, sr_model):
    from nodes import logic

    latent = logic.encode_lr(sr_model, torch.rand(1, 6, 8, 3))
    args = dict(steps=1, eta=0.0, seed=0) | kwargs
    with pytest.raises(ValueError, match="^ArbScale: " + message):
        logic.run_denoise(latent, **args)


@pytest.mark.parametrize("image,message", [(torch.rand(1, 6, 8, 2), "C 1, 3 or 4"),
                                           (torch.rand(1, 6, 8, 3) * 255, "0..1"),
                                           (torch.full((1, 6, 8, 3), float("nan")), "NaN")])
def test_node_bad_images_readable(image, message, sr_model):
    from nodes import logic

    with pytest.raises(ValueError, match="^ArbScale: .*" + message):
        logic.encode_lr(sr_model, image)


def test_node_rgba_and_grey_images(sr_model):
    from nodes import logic
    from arbscale_core.pipeline import resize_alpha

    rgba = torch.rand(1, 6, 8, 4)
    out = logic.run_upscale(sr_model, rgba, 12, 16, steps=1, eta=0.0, seed=0, chunk=4096)
    assert out.shape == (1, 12, 16, 4)
    want = resize_alpha(rgba[..., 3:].permute(0, 3, 1, 2), 12, 16).permute(0, 2, 3, 1)
    assert torch.allclose(out[..., 3:], want, atol=1e-6)
    # the chained nodes carry the alpha through Encode -> Denoise -> Decode
    chained = logic.run_decode(logic.run_denoise(logic.encode_lr(sr_model, rgba), 1, 0.0, 0), 12, 16, 4096)
    assert torch.allclose(chained, out, atol=1e-5)
    grey = logic.run_upscale(sr_model, rgba[..., :1], 12, 16, steps=1, eta=0.0, seed=0, chunk=4096)
    assert grey.shape == (1, 12, 16, 1)


@pytest.mark.parametrize("name,message", [("empty", "not a valid safetensors file"), ("trunc", "trunc.safetensors"),
                                          ("garbage", "garbage.safetensors"), ("wrong", "shape mismatch")])
def test_node_load_bad_model_files_readable(name, message, bad_files):
    from nodes import logic

    files = bad_files
    with pytest.raises(ValueError, match="^ArbScale: .*" + message):
        logic.load(files["tmp"] / f"{name}.safetensors", torch.device("cpu"))
