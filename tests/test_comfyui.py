"""Integration with a real ComfyUI: needs COMFYUI_DIR (a ComfyUI checkout); skipped without it.

The harness runs in ComfyUI's own Python (COMFYUI_PYTHON, default COMFYUI_DIR/../venv/bin/python).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arbscale_core.checkpoint import save_model

from conftest import micro_model

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("comfy")
    sr, gen = tmp / "sr.safetensors", tmp / "gen.safetensors"
    save_model(micro_model("sr"), sr)
    save_model(micro_model("gen"), gen)
    python = os.environ.get("COMFYUI_PYTHON") or str(Path(COMFYUI_DIR).parent / "venv" / "bin" / "python")
    if not Path(python).exists():
        python = sys.executable
    proc = subprocess.run([python, str(ROOT / "tests" / "comfyui" / "harness.py"), COMFYUI_DIR, str(ROOT),
                           str(tmp / "work"), str(sr), str(gen)], capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"harness failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_pack_loads_and_registers_nodes(result):
    assert result["loaded"]
    assert result["node_ids"] == sorted(["ArbScaleLoadModel", "ArbScaleEncodeLR", "ArbScaleEmptyLatent",
                                         "ArbScaleLatentDenoise", "ArbScaleImplicitDecode", "ArbScaleUpscale"])
    assert result["web_dir"] and result["web_dir"].endswith("web")


def test_upscale_workflow(result):
    run = result["arbscale_upscale"]
    assert run["valid"] and run["success"], run
    assert [size for _, size in run["saved"]] == [[803, 555]]  # 217x150 x 3.7


def test_upscale_node_options(result):
    run = result["upscale_options"]
    assert run["valid"] and run["success"], run
    assert [size for _, size in run["saved"]] == [[803, 555]]
    bad = result["bad_ensemble"]  # not one of the combo's options: refused at validation, before running
    assert not bad["valid"], bad
    assert "ensemble '3' is not one of the choices (1, 2, 4, 8)" in bad["node_errors"], bad


def test_unknown_model_refused_at_validation(result):
    bad = result["unknown_model"]
    assert not bad["valid"], bad
    assert "model_name 'no_such_model.safetensors' is not one of the choices" in bad["node_errors"], bad


def test_load_model_lists_every_bundled_model_with_a_description(result):
    options, tooltip = result["model_options"]
    bundled = sorted(p.name for p in (ROOT / "arbscale_core" / "weights").glob("*.safetensors"))
    assert sorted(o for o in options if o.startswith("bundled/")) == [f"bundled/{n}" for n in bundled]
    assert "test_sr.safetensors" in options  # and the user's own files in models/arbscale
    for name in bundled:
        line = next(line for line in tooltip.splitlines() if line.startswith(f"bundled/{name}: "))
        assert len(line) > len(f"bundled/{name}: ") + 20


@pytest.mark.parametrize("case", ["huge_upscale", "huge_decode"])
def test_output_too_big_for_ram_refused_before_work(result, case):
    run = result[case]
    assert run["valid"] and not run["success"], run
    message = run["errors"][0]["exception_message"]
    assert message.startswith("ArbScale: a ") and "GB of RAM" in message and "GB is free" in message, message
    assert "band by band" in message
    assert run["progress"] == []


def test_one_latent_many_scales_workflow(result):
    run = result["arbscale_one_latent_many_scales"]
    assert run["valid"] and run["success"], run
    assert sorted(size for _, size in run["saved"]) == sorted([[434, 300], [977, 675], [1000, 400]])


def test_generate_texture_workflow(result):
    run = result["arbscale_generate_texture"]
    assert run["valid"] and run["success"], run
    assert sorted(size for _, size in run["saved"]) == [[256, 256], [768, 768]]


def test_bad_scale_is_a_readable_error(result):
    run = result["bad_scale"]
    if not run["valid"]:  # ComfyUI's own min check caught it: also a readable error
        assert "scale" in run["node_errors"]
        return
    assert not run["success"]
    assert "scale must be" in run["errors"][0]["exception_message"]


@pytest.mark.parametrize("case,message", [("bad_model", "not a valid safetensors file"),
                                          ("absurd_size", "65536x65536 is too large: 4,294,967,296 pixels, "
                                                          "over the limit of 2,147,483,648")])
def test_bad_inputs_are_readable_errors(result, case, message):
    run = result[case]
    assert run["valid"] and not run["success"]
    assert message in run["errors"][0]["exception_message"]
    assert run["errors"][0]["exception_message"].startswith("ArbScale: ")


def test_interrupt_stops_within_two_steps(result):
    run = result["interrupt"]
    assert "execution_interrupted" in run["events"]
    assert not run["saved"]
    assert max(run["denoise_progress"]) <= 3, run["denoise_progress"]


def test_registry_validation_passes():
    comfy = Path(COMFYUI_DIR).parent / "venv" / "bin" / "comfy"
    if not comfy.exists():
        pytest.skip("comfy-cli not installed in ComfyUI's venv")
    proc = subprocess.run([str(comfy), "--no-json", "node", "validate"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PATH": f"{comfy.parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All validation checks passed" in proc.stdout


def test_modes_through_the_upscale_node(result):
    for key in ("mode_fidelity", "mode_detail_s0", "mode_detail_s1"):
        assert result[key]["valid"] and result[key]["success"], result[key]
        assert [size for _, size in result[key]["saved"]] == [[803, 555]]
    assert result["mode_detail_s0"]["pixels"] != result["mode_detail_s1"]["pixels"]  # each seed its own sample
    assert result["mode_detail_s0"]["pixels"] != result["mode_fidelity"]["pixels"]
    bad = result["mode_bad"]
    assert not bad["valid"] and "mode 'sharp' is not one of the choices (fidelity, detail, custom)" in bad["node_errors"]


@pytest.mark.parametrize("key", ["rgba_upscale", "rgba_chain"])
def test_rgba_image_keeps_its_alpha(result, key):
    """LoadImage + JoinImageWithAlpha give a 4-channel IMAGE; both node paths return 4 channels, the
    alpha resized with the image (a gradient: compared with PIL's bicubic resize of it)."""
    run = result[key]
    assert run["valid"] and run["success"], run
    assert [size for _, size in run["saved"]] == [[434, 300]]
    assert run["mode"] == "RGBA"
    assert run["alpha_mean_abs_diff"] < 2.0, run


@pytest.mark.parametrize("key,message", [
    ("model_empty", "not a valid safetensors file"), ("model_text", "not a valid safetensors file"),
    ("model_truncated", "not a valid safetensors file"), ("model_badjson", "badjson.safetensors: "),
    ("model_wrongshape", "shape mismatch"), ("gen_to_upscale", "generation model"), ("sr_to_generate", "SR model")])
def test_broken_or_wrong_model_files_are_readable_errors(result, key, message):
    run = result[key]
    assert run["valid"] and not run["success"], run
    text = run["errors"][0]["exception_message"]
    assert text.startswith("ArbScale: ") and message in text and "\n" not in text.strip(), text
    assert not run["saved"]
