import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arbscale_core.cli import main

from conftest import file_hash, write_png


def run_cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_upscale_file_non_integer(tmp_path, sr_ckpt, capsys):
    src = write_png(tmp_path / "in.png", 17, 11)
    dst = tmp_path / "out.png"
    rc, out, err = run_cli(["upscale", src, "-o", dst, "--scale", "3.7", "--steps", "2", "--model", sr_ckpt], capsys)
    assert rc == 0, err
    assert Image.open(dst).size == (63, 41)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_upscale_modes(tmp_path, sr_ckpt, capsys):
    """--mode detail samples (seeds differ) and equals its steps and eta given by hand; fidelity is the
    default; --steps / --eta override a mode's."""
    from arbscale_core.pipeline import DETAIL_ETA, DETAIL_STEPS

    src = write_png(tmp_path / "in.png", 14, 10)
    outs = {}
    for name, extra in (("default", []), ("fidelity", ["--mode", "fidelity"]), ("detail0", ["--mode", "detail"]),
                        ("detail1", ["--mode", "detail", "--seed", "1"]),
                        ("manual", ["--steps", str(DETAIL_STEPS), "--eta", str(DETAIL_ETA)]),
                        ("override", ["--mode", "detail", "--steps", "2", "--eta", "0"]),
                        ("override_manual", ["--steps", "2", "--eta", "0"])):
        dst = tmp_path / f"{name}.png"
        rc, out, err = run_cli(["upscale", src, "-o", dst, "--scale", "2", "--model", sr_ckpt, *extra], capsys)
        assert rc == 0, err
        outs[name] = np.asarray(Image.open(dst)).astype(int)
    assert (outs["default"] == outs["fidelity"]).all()
    assert (outs["detail0"] == outs["manual"]).all()
    assert np.abs(outs["detail0"] - outs["detail1"]).mean() > 0
    assert (outs["override"] == outs["override_manual"]).all()
    rc, _, err = run_cli(["upscale", src, "-o", tmp_path / "x.png", "--scale", "2", "--mode", "sharp"], capsys)
    assert rc == 2 and err.strip().startswith("error: ") and "fidelity" in err


def test_upscale_folder_to_size(tmp_path, sr_ckpt, capsys):
    src = tmp_path / "src"
    src.mkdir()
    write_png(src / "a.png", 10, 8)
    write_png(src / "b.png", 6, 12, seed=1)
    (src / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = run_cli(["upscale", src, "-o", out, "--size", "30x20", "--steps", "1", "--model", sr_ckpt,
                          "--chunk", "50"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a_30x20.png", "b_30x20.png"]
    assert all(Image.open(p).size == (30, 20) for p in out.iterdir())


def test_upscale_consistency_flag(tmp_path, sr_ckpt, capsys):
    """By default the output, brought back to the input's size, gives the input; --no-consistency
    leaves the model's own output."""
    import numpy as np

    src = write_png(tmp_path / "in.png", 12, 10)
    errors = {}
    for flag in ([], ["--no-consistency"]):
        dst = tmp_path / f"out{len(flag)}.png"
        rc, _, err = run_cli(["upscale", src, "-o", dst, "--scale", "3", "--steps", "1", "--model", sr_ckpt, *flag],
                             capsys)
        assert rc == 0, err
        back = Image.open(dst).resize((12, 10), Image.BICUBIC, reducing_gap=None)
        errors[bool(flag)] = np.abs(np.asarray(back, float) - np.asarray(Image.open(src), float)).mean()
    assert errors[False] < errors[True] / 4, errors


def test_upscale_ensemble_matches_core(tmp_path, sr_ckpt, capsys, monkeypatch):
    import numpy as np
    import torch

    import arbscale_core.imageops as imageops
    from arbscale_core.checkpoint import load_model
    from arbscale_core.imageops import load_image, to_uint8
    from arbscale_core.pipeline import upscale_tensor

    src = write_png(tmp_path / "in.png", 9, 7)
    dst = tmp_path / "out.png"
    rc, _, err = run_cli(["upscale", src, "-o", dst, "--scale", "2.5", "--steps", "1", "--ensemble", "4",
                          "--model", sr_ckpt], capsys)
    assert rc == 0, err
    expected = upscale_tensor(load_model(sr_ckpt), load_image(src), 18, 23, steps=1, ensemble=4)
    assert np.array_equal(np.asarray(Image.open(dst)), to_uint8(expected * 2 - 1)[0])
    assert not torch.equal(expected, upscale_tensor(load_model(sr_ckpt), load_image(src), 18, 23, steps=1))
    monkeypatch.setattr(imageops, "STREAM_PIXELS", 100)
    rc, _, err = run_cli(["upscale", src, "-o", tmp_path / "big.png", "--scale", "2.5", "--ensemble", "2",
                          "--model", sr_ckpt], capsys)
    assert rc == 2 and "--ensemble needs the output in memory" in err and not (tmp_path / "big.png").exists()
    rc, _, err = run_cli(["upscale", src, "-o", dst, "--scale", "2", "--ensemble", "3", "--model", sr_ckpt], capsys)
    assert rc == 2 and "ensemble" in err


def test_generate_and_info(tmp_path, gen_ckpt, sr_ckpt, capsys):
    dst = tmp_path / "tex.png"
    rc, _, err = run_cli(["generate", "-o", dst, "--size", "40x24", "-n", "2", "--steps", "2", "--model", gen_ckpt],
                         capsys)
    assert rc == 0, err
    assert [Image.open(tmp_path / f"tex_{i}.png").size for i in range(2)] == [(40, 24), (40, 24)]
    rc, out, _ = run_cli(["info", sr_ckpt], capsys)
    assert rc == 0
    assert "task: sr" in out and "parameters:" in out and "random init for tests" in out


BAD = {
    "missing input": (["upscale", "{tmp}/nope.png", "-o", "{tmp}/o.png", "--scale", "2"], "input not found"),
    "not an image": (["upscale", "{txt}", "-o", "{tmp}/o.png", "--scale", "2"], "not a readable image"),
    "scale zero": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "0"], "scale must be"),
    "scale negative": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "-3"], "scale must be"),
    "scale nan": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "nan"], "scale must be"),
    "scale inf": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "inf"], "scale must be"),
    "scale text": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "big"], "scale must be a number"),
    "size malformed": (["upscale", "{img}", "-o", "{tmp}/o.png", "--size", "12by4"], "WIDTHxHEIGHT"),
    "size zero": (["upscale", "{img}", "-o", "{tmp}/o.png", "--size", "0x40"], "size must be positive"),
    "size negative": (["upscale", "{img}", "-o", "{tmp}/o.png", "--size=-5x40"], "WIDTHxHEIGHT"),
    "both scale and size": (["upscale", "{img}", "-o", "{tmp}/o.png", "--size", "5x5", "--scale", "2"], "exactly one"),
    "no output folder": (["upscale", "{img}", "-o", "{tmp}/missing/o.png", "--scale", "2"], "output folder does not exist"),
    "several inputs, no folder": (["upscale", "{img}", "{img2}", "-o", "{tmp}/o.png", "--scale", "2"],
                                  "output folder does not exist"),
    "bad model": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "2", "--model", "{txt}"],
                  "not a valid safetensors file"),
    "gen model for upscale": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "2", "--model", "{gen}"],
                              "generation model"),
    "overwrite input": (["upscale", "{img}", "-o", "{img}", "--scale", "2"], "would overwrite an input"),
    "steps zero": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "2", "--steps", "0"], "--steps"),
    "eta negative": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "2", "--eta", "-1"], "--eta"),
    "unknown device": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "2", "--device", "tpu9"], "device"),
    "fp16 on cpu": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "2", "--device", "cpu", "--dtype", "fp16"],
                    "fp16"),
    "huge size": (["upscale", "{img}", "-o", "{tmp}/o.png", "--size", "100000x100000"], "too large"),
    "zero tile": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "2", "--tile", "0"], "--tile"),
    "unknown option": (["upscale", "{img}", "-o", "{tmp}/o.png", "--scale", "2", "--frobnicate"], "unrecognized"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_error_nothing_written(case, tmp_path, sr_ckpt, gen_ckpt, capsys):
    img = write_png(tmp_path / "in.png", 8, 6)
    img2 = write_png(tmp_path / "in2.png", 8, 6, seed=2)
    txt = tmp_path / "notes.png"
    txt.write_text("not an image")
    argv, message = BAD[case]
    fields = dict(tmp=tmp_path, img=img, img2=img2, txt=txt, gen=gen_ckpt)
    argv = [a.format(**fields) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(sr_ckpt)]
    before = {p: file_hash(p) for p in tmp_path.iterdir() if p.is_file()}
    rc, out, err = run_cli(argv, capsys)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    after = {p: file_hash(p) for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # no output, no temp file, inputs untouched


def test_unwritable_output(tmp_path, sr_ckpt, capsys):
    target = Path("/proc/arbscale_out.png")
    if os.access("/proc", os.W_OK) and not Path("/proc/self").exists():
        pytest.skip("no unwritable folder to try")
    img = write_png(tmp_path / "in.png", 8, 6)
    before = file_hash(img)
    rc, _, err = run_cli(["upscale", img, "-o", target, "--scale", "2", "--steps", "1", "--model", sr_ckpt], capsys)
    assert rc != 0
    assert err.strip().startswith("error: cannot write to /proc") and len(err.strip().splitlines()) == 1, err
    assert not target.exists() and file_hash(img) == before


def test_console_script_no_traceback(tmp_path):
    """The installed entry point: user errors never show a traceback."""
    exe = Path(sys.executable).with_name("arbscale")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "arbscale_core.cli"]
    res = subprocess.run(cmd + ["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "y.png"), "--scale", "2"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: input not found: {tmp_path / 'x.png'}"


def test_missing_default_model_says_so(tmp_path, capsys, monkeypatch):
    import arbscale_core.cli as cli

    monkeypatch.setitem(cli.DEFAULT_MODELS, "sr", tmp_path / "absent.safetensors")
    img = write_png(tmp_path / "in.png", 8, 6)
    rc, _, err = run_cli(["upscale", img, "-o", tmp_path / "o.png", "--scale", "2"], capsys)
    assert rc == 2 and "no bundled sr weights" in err and "--model" in err


def test_outputs_get_normal_permissions(tmp_path, sr_ckpt, capsys):
    src = write_png(tmp_path / "in.png", 8, 6)
    dst = tmp_path / "out.png"
    assert run_cli(["upscale", src, "-o", dst, "--scale", "2", "--steps", "1", "--model", sr_ckpt], capsys)[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("command", ["upscale", "generate"])
def test_large_png_streams_row_by_row_same_pixels(command, tmp_path, sr_ckpt, gen_ckpt, capsys, monkeypatch):
    """Past STREAM_PIXELS a PNG is written from decoded bands without a canvas; the pixels must be
    the ones the canvas path writes, and no full-size array may be allocated."""
    import numpy as np

    import arbscale_core.cli as cli
    import arbscale_core.imageops as imageops

    if command == "upscale":
        src = write_png(tmp_path / "in.png", 13, 9)
        argv = ["upscale", src, "--scale", "4.5", "--model", sr_ckpt]
    else:
        argv = ["generate", "--size", "61x43", "--model", gen_ckpt]
    argv += ["--steps", "2", "--chunk", "200"]
    rc, _, err = run_cli(argv + ["-o", tmp_path / "canvas.png"], capsys)
    assert rc == 0, err

    monkeypatch.setattr(imageops, "STREAM_PIXELS", 100)

    def no_canvas(*args, **kwargs):
        raise AssertionError("the streaming path must not build a canvas")

    monkeypatch.setattr(cli, "_canvas", no_canvas)
    rc, _, err = run_cli(argv + ["-o", tmp_path / "streamed.png"], capsys)
    assert rc == 0, err
    a = np.asarray(Image.open(tmp_path / "canvas.png"))
    b = np.asarray(Image.open(tmp_path / "streamed.png"))
    assert a.shape == b.shape and a.shape[0] > 30
    assert np.array_equal(a, b)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_streamed_png_failure_leaves_no_file(tmp_path):
    import numpy as np

    from arbscale_core.imageops import save_png_rows

    def bands():
        yield np.zeros((2, 5, 3), np.uint8)
        raise RuntimeError("decode failed half way")

    target = tmp_path / "out.png"
    with pytest.raises(RuntimeError):
        save_png_rows(target, 4, 5, bands())
    assert list(tmp_path.iterdir()) == []


def test_lr_reading_model_file_upscales_as_the_core(tmp_path, capsys):
    """A model whose decoder reads the LR image (config lr_features) works from its file alone:
    the CLI output is the core's, with and without the projection, and info lists its LR encoder."""
    import numpy as np
    import torch

    from arbscale_core.checkpoint import save_model
    from arbscale_core.imageops import from_uint8, to_uint8
    from arbscale_core.pipeline import upscale

    from conftest import micro_model

    model = micro_model("sr", lr_features=4, lr_blocks=1)
    torch.nn.init.normal_(model.implicit.first_lr.weight, std=0.2)
    ckpt = tmp_path / "lr.safetensors"
    save_model(model, ckpt)
    src = write_png(tmp_path / "in.png", 12, 10)
    lr = from_uint8(np.asarray(Image.open(src)))
    for flag in ([], ["--no-consistency"]):
        dst = tmp_path / f"out{len(flag)}.png"
        rc, _, err = run_cli(["upscale", src, "-o", dst, "--scale", "2.5", "--steps", "1", "--model", ckpt, *flag],
                             capsys)
        assert rc == 0, err
        ref = to_uint8(upscale(model, lr, scale=2.5, steps=1, consistency=not flag) * 2 - 1)[0]
        assert np.abs(np.asarray(Image.open(dst), int) - ref.astype(int)).max() <= 1
    rc, out, _ = run_cli(["info", ckpt], capsys)
    assert rc == 0 and "lr_encoder" in out and '"lr_features": 4' in out


def _exif_rotated_jpeg(path):
    from PIL import Image
    im = Image.fromarray((np.random.default_rng(0).random((20, 40, 3)) * 255).astype("uint8"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to view
    im.save(path, exif=exif)
    return path


def test_exif_orientation_gives_an_upright_output(tmp_path, sr_ckpt, capsys):
    from PIL import Image
    src = _exif_rotated_jpeg(tmp_path / "phone.jpg")
    rc, _, err = run_cli(["upscale", src, "-o", tmp_path / "o.png", "--scale", "2", "--model", sr_ckpt], capsys)
    assert rc == 0, err
    assert Image.open(tmp_path / "o.png").size == (40, 80)  # stored 40x20, shown 20x40


@pytest.mark.parametrize("case", ["bomb header", "too many pixels"])
def test_huge_inputs_refused_before_decoding(case, tmp_path, sr_ckpt, capsys):
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    side = 100000 if case == "bomb header" else 8200
    path = tmp_path / "big.png"  # a header claiming side x side; the data need not be there
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))
    rc, _, err = run_cli(["upscale", path, "-o", tmp_path / "o.png", "--scale", "2", "--model", sr_ckpt], capsys)
    assert rc == 2
    line = err.strip()
    assert line.startswith("error: ") and "over the input limit of 67,108,864" in line and "\n" not in line
    assert f"{side * side:,} pixels" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]


def test_torchrun_shards_a_folder_across_ranks(tmp_path, sr_ckpt):
    """torchrun with 2 CPU ranks: every input written exactly once, the same pixels as one process."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        write_png(src / f"im{i}.png", 9 + i, 8, seed=i)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    common = ["upscale", str(src), "--scale", "2", "--model", str(sr_ckpt), "--steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "arbscale_core.cli", *common, "-o", str(one)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "arbscale_core.cli", *common, "-o", str(two)],
                           capture_output=True, text=True, env=env, timeout=300)
    assert ranks.returncode == 0, ranks.stdout + ranks.stderr
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir()) == \
        [f"im{i}_x2.png" for i in range(5)]
    for p in one.iterdir():
        assert file_hash(p) == file_hash(two / p.name)
    lines = [line for line in ranks.stdout.splitlines() if " -> " in line]
    assert len(lines) == 5  # each input once, over both ranks
