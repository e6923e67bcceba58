"""The frontend's size display agrees with the nodes' size logic (runs web/size.js in Node.js)."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from test_node_logic import logic

ROOT = Path(__file__).resolve().parents[1]
CASES = [((10, 20), 1.5, 0, 0), ((10, 20), 9.0, 100, 0), ((10, 20), 9.0, 0, 30), ((10, 20), 9.0, 7, 3),
         ((9, 13), 2.5, 0, 0), ((217, 150), 3.7, 0, 0), ((1, 1), 0.3, 0, 0), ((64, 48), 200.0, 0, 0),
         ((33, 17), 0.5, 0, 0), ((5, 7), 1.0, 0, 11), ((10, 20), 1.0, 25, 0), ((20, 10), 1.0, 0, 25)]


needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js not installed")


def run_size_js(tmp_path, names: str, cases, expression: str):
    """Evaluate ``expression`` (over ``cases``) in Node.js with ``names`` imported from web/size.js."""
    script = tmp_path / "run.mjs"
    script.write_text(
        f"import {{ {names} }} from {json.dumps((ROOT / 'web' / 'size.js').as_uri())};\n"
        f"const cases = {json.dumps(cases)};\n"
        f"console.log(JSON.stringify({expression}));\n")
    return json.loads(subprocess.run(["node", str(script)], capture_output=True, text=True, check=True).stdout)


@needs_node
def test_js_output_size_matches_python(tmp_path):
    out = run_size_js(tmp_path, "outputSize", CASES, "cases.map(([[h, w], s, W, H]) => outputSize([w, h], s, W, H))")
    for (source, scale, width, height), js in zip(CASES, out):
        h, w = logic.target_size(source, scale, width, height)
        assert js == [w, h], (source, scale, width, height)


SIZE_CASES = [(65536, 65536), (32768, 65536), (32769, 65536), (0, 5), (70000, 10), (1, 1)]


@needs_node
def test_js_refusal_messages_match_python(tmp_path):
    from arbscale_core.pipeline import size_problem

    out = run_size_js(tmp_path, "sizeProblem, outputSize", SIZE_CASES,
                      "{problems: cases.map(([w, h]) => sizeProblem(w, h)), "
                      "viaSize: outputSize([10, 10], 1, 65536, 65536), badScale: outputSize([10, 10], 0, 0, 0)}")
    assert out["problems"] == [size_problem(w, h) for w, h in SIZE_CASES]
    assert out["problems"][0] is not None and out["problems"][1] is None and out["problems"][2] is not None
    with pytest.raises(ValueError) as err:
        logic.target_size((10, 10), 1.0, 65536, 65536)
    assert str(err.value) == "ArbScale: " + out["viaSize"]
    with pytest.raises(ValueError) as err:
        logic.target_size((10, 10), 0)
    assert str(err.value).startswith("ArbScale: " + out["badScale"].rsplit(" got ", 1)[0])
