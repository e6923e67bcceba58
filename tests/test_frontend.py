"""The real ComfyUI frontend opens every UI workflow with no missing node types, converts it to the
same API graph as workflows/api/, and shows our output-size label. Needs COMFYUI_DIR (with its
venv beside it), Python playwright and a Chromium (CHROMIUM, default /usr/bin/chromium); skipped
otherwise. With ARBSCALE_UPDATE_DOCS=1 it rewrites docs/comfyui_upscale_workflow.png."""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api") if COMFYUI_DIR else None
pytestmark = pytest.mark.skipif(not COMFYUI_DIR or not Path(CHROMIUM).exists(),
                                reason="needs COMFYUI_DIR and a Chromium")
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
PACK = "arbscale_pack"


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = tmp_path_factory.mktemp("comfy_run")
    (run / "cn").mkdir()
    (run / "cn" / PACK).symlink_to(ROOT)
    (run / "cu" / "default").mkdir(parents=True)
    (run / "cu" / "default" / "comfy.settings.json").write_text('{"Comfy.TutorialCompleted": true}')
    (run / "input").mkdir()
    shutil.copy(ROOT / "examples" / "building_lr.png", run / "input" / "building_lr.png")
    (run / "paths.yaml").write_text(f"mine:\n  custom_nodes: {run / 'cn'}\n")
    python = os.environ.get("COMFYUI_PYTHON") or str(Path(COMFYUI_DIR).parent / "venv" / "bin" / "python")
    port = _port()
    log = open(run / "comfy.log", "w")
    proc = subprocess.Popen([python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--disable-auto-launch", "--database-url", "sqlite:///:memory:",
                             "--extra-model-paths-config", str(run / "paths.yaml"), "--user-directory",
                             str(run / "cu"), "--input-directory", str(run / "input"), "--output-directory",
                             str(run / "output"), "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK],
                            cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                info = json.load(urllib.request.urlopen(f"{url}/object_info", timeout=2))
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("ComfyUI did not start: " + (run / "comfy.log").read_text()[-3000:])
        yield url, info, run
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(server):
    url = server[0]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        pg = browser.new_page(viewport={"width": 1600, "height": 900})
        pg.goto(url)
        pg.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=60000)
        yield pg
        browser.close()


def test_nodes_registered_by_our_module(server):
    _, info, _ = server
    ours = {k: v for k, v in info.items() if k.startswith("ArbScale")}
    assert len(ours) == 6
    assert all(v["python_module"] == f"custom_nodes.{PACK}" for v in ours.values())


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_opens_without_missing_nodes(page, path):
    wf = json.loads(path.read_text())
    result = page.evaluate("""async (wf) => {
        await window.app.loadGraphData(wf);
        const missing = wf.nodes.map(n => n.type).filter(t => !window.LiteGraph.registered_node_types[t]);
        const prompt = (await window.app.graphToPrompt()).output;
        return {missing, prompt, count: window.app.graph._nodes.length};
    }""", wf)
    assert result["missing"] == []
    assert result["count"] == len(wf["nodes"])
    api = json.loads((ROOT / "workflows" / "api" / path.name).read_text())
    got = result["prompt"]
    assert sorted(got) == sorted(api)
    for node_id, node in api.items():
        assert got[node_id]["class_type"] == node["class_type"]
        assert got[node_id]["inputs"] == node["inputs"], node_id


def test_size_label_and_screenshot(page, tmp_path):
    wf = json.loads((ROOT / "workflows" / "arbscale_upscale.json").read_text())
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", wf)
    page.wait_for_function("""() => {
        const n = window.app.graph._nodes.find(n => n.type === 'LoadImage');
        return n && n.imgs && n.imgs[0] && n.imgs[0].naturalWidth > 0; }""", timeout=30000)
    page.evaluate("() => window.app.graph.setDirtyCanvas(true, true)")
    page.wait_for_timeout(500)
    label = page.evaluate("() => window.app.graph._nodes.find(n => n.type === 'ArbScaleUpscale').arbscaleLabel")
    assert label == "217x150 → 803x555"
    # editing the scale updates the label
    label2 = page.evaluate("""async () => {
        const n = window.app.graph._nodes.find(n => n.type === 'ArbScaleUpscale');
        n.widgets.find(w => w.name === 'scale').value = 2;
        window.app.graph.setDirtyCanvas(true, true);
        await new Promise(r => setTimeout(r, 300));
        const out = n.arbscaleLabel;
        n.widgets.find(w => w.name === 'scale').value = 3.7;
        window.app.graph.setDirtyCanvas(true, true);
        await new Promise(r => setTimeout(r, 300));
        return out; }""")
    assert label2 == "217x150 → 434x300"
    # ARBSCALE_UPDATE_DOCS=1 refreshes the README's screenshot; otherwise the tree stays clean.
    target = ROOT / "docs" if os.environ.get("ARBSCALE_UPDATE_DOCS") else tmp_path
    page.screenshot(path=str(target / "comfyui_upscale_workflow.png"))
    assert (target / "comfyui_upscale_workflow.png").stat().st_size > 10_000
