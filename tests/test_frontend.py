"""The real ComfyUI frontend, driven as a person would: each template opens by clicking it in the
Templates browser, with no missing node types, laid out so every node is on screen (1600x1000, zoom
1) clear of the others and of the frontend's own panels, and converts to the API graph in
api_workflows/; our output-size label fits its node and colours refusals. Needs COMFYUI_DIR (with
its venv beside it), Python playwright and a Chromium (CHROMIUM, default /usr/bin/chromium);
skipped otherwise. Screenshots go to ARBSCALE_SCREENSHOTS (default: the test's tmp folder); with
ARBSCALE_UPDATE_DOCS=1 the README's screenshot docs/comfyui_upscale_workflow.png is rewritten."""
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
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
VIEWPORT = {"width": 1600, "height": 1000}
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
    shutil.copy(ROOT / "assets" / "building_lr.png", run / "input" / "building_lr.png")
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
        pg = browser.new_page(viewport=VIEWPORT)
        pg.goto(url)
        pg.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=60000)
        errors = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.arbscale_errors = errors
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ.get("ARBSCALE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_nodes_registered_by_our_module(server):
    _, info, _ = server
    ours = {k: v for k, v in info.items() if k.startswith("ArbScale")}
    assert len(ours) == 6
    assert all(v["python_module"] == f"custom_nodes.{PACK}" for v in ours.values())


def test_templates_served_with_thumbnails(server):
    url = server[0]
    listed = json.load(urllib.request.urlopen(f"{url}/api/workflow_templates"))
    assert sorted(listed[PACK]) == sorted(p.stem for p in WORKFLOWS)
    for path in WORKFLOWS:
        served = json.load(urllib.request.urlopen(f"{url}/api/workflow_templates/{PACK}/{path.name}"))
        assert served == json.loads(path.read_text())
        with urllib.request.urlopen(f"{url}/api/workflow_templates/{PACK}/{path.stem}.jpg") as thumb:
            assert thumb.headers["Content-Type"] == "image/jpeg" and len(thumb.read()) > 5000


def _open_from_templates_browser(pg, name):
    pg.keyboard.press("Escape")
    pg.get_by_text("Templates", exact=True).first.click()
    pg.get_by_role("option", name=PACK).click()
    card = pg.locator(f'[data-testid="template-workflow-{name}"]')
    card.wait_for(timeout=15000)
    # the card shows its thumbnail, loaded from the pack
    pg.wait_for_function("""(name) => [...document.querySelectorAll(`[data-testid="template-workflow-${name}"] img`)]
        .some(img => img.complete && img.naturalWidth > 0)""", arg=name, timeout=15000)
    card.click()
    pg.locator('[data-testid^="template-workflow-"]').first.wait_for(state="detached", timeout=15000)


# What is on screen where each node is drawn: its title bar, its body, and the pack badge over its
# title (about 22 px). Every sample point must hit the graph canvas itself (or the node's own text
# box), not a panel over it.
LAYOUT_JS = """() => {
    const app = window.app, ds = app.canvas.ds, canvas = app.canvas.canvas;
    const title = window.LiteGraph.NODE_TITLE_HEIGHT, badge = 24;
    const box = canvas.getBoundingClientRect();
    const rects = app.graph._nodes.map(n => {
        const [x, y] = ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - title - badge]);
        return {id: n.id, type: n.type, title: n.title, x: x + box.left, y: y + box.top,
                w: n.size[0] * ds.scale, h: (n.size[1] + title + badge) * ds.scale,
                size: [...n.size], min: [...n.computeSize()]};
    });
    const hidden = [];
    for (const r of rects) {
        for (const fx of [0.02, 0.5, 0.98]) for (const fy of [0.02, 0.5, 0.98]) {
            const px = r.x + fx * r.w, py = r.y + fy * r.h;
            const el = document.elementFromPoint(px, py);
            // a node's own DOM widget (the text box of a Note or prompt) is drawn over the canvas
            const own = el && el.tagName === 'TEXTAREA' && el.classList.contains('comfy-multiline-input');
            if (el !== canvas && !own) hidden.push([r.id, Math.round(px), Math.round(py), el ? el.tagName + '.' + el.className : 'off screen']);
        }
    }
    return {rects, hidden, scale: ds.scale};
}"""


def _overlaps(a, b):
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_template_opens_from_browser(page, server, shots, path):
    wf = json.loads(path.read_text())
    _open_from_templates_browser(page, path.stem)
    page.wait_for_function("(n) => window.app.graph._nodes.length === n", arg=len(wf["nodes"]), timeout=15000)
    result = page.evaluate("""async () => {
        const nodes = window.app.graph._nodes;
        const missing = nodes.map(n => n.type).filter(t => !window.LiteGraph.registered_node_types[t]);
        const prompt = (await window.app.graphToPrompt()).output;
        return {missing, prompt, types: nodes.map(n => [n.id, n.type])};
    }""")
    assert result["missing"] == []
    assert sorted(map(tuple, result["types"])) == sorted((n["id"], n["type"]) for n in wf["nodes"])
    # no "missing nodes / models" dialog over the graph
    assert not page.get_by_text("missing", exact=False).locator("visible=true").count()
    api = json.loads((ROOT / "api_workflows" / path.name).read_text())
    got = result["prompt"]
    assert sorted(got) == sorted(api)
    for node_id, node in api.items():
        assert got[node_id]["class_type"] == node["class_type"]
        assert got[node_id]["inputs"] == node["inputs"], node_id

    if any(n["type"] == "LoadImage" for n in wf["nodes"]):
        page.wait_for_function("""() => window.app.graph._nodes.filter(n => n.type === 'LoadImage')
            .every(n => n.imgs && n.imgs[0] && n.imgs[0].naturalWidth > 0)""", timeout=30000)
    page.evaluate("() => window.app.graph.setDirtyCanvas(true, true)")
    page.wait_for_timeout(500)
    layout = page.evaluate(LAYOUT_JS)
    page.screenshot(path=str(shots / f"template_{path.stem}.png"))
    assert layout["scale"] == 1
    assert layout["hidden"] == [], "node parts under a panel or off screen"
    rects = layout["rects"]
    for r in rects:
        assert r["size"][0] >= r["min"][0] - 0.5 and r["size"][1] >= r["min"][1] - 0.5, r
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert not _overlaps(a, b), (a["title"], b["title"])
    labels = page.evaluate("""() => window.app.graph._nodes.filter(n => n.arbscaleLabel)
        .map(n => [n.arbscaleLabel, n.arbscaleLabelKind])""")
    assert all(kind in ("ok", "info") for _, kind in labels), labels
    if path.stem == "arbscale_upscale":
        assert labels == [["217x150 → 803x555", "ok"]]


def _label_state(page, type_, values):
    return page.evaluate("""async ([type, values]) => {
        const n = window.app.graph._nodes.find(n => n.type === type);
        for (const [k, v] of Object.entries(values)) n.widgets.find(w => w.name === k).value = v;
        window.app.graph.setDirtyCanvas(true, true);
        await new Promise(r => setTimeout(r, 300));
        return [n.arbscaleLabel, n.arbscaleLabelKind, [...n.size]]; }""", [type_, values])


def test_size_label_states_and_screenshot(page, shots):
    _open_from_templates_browser(page, "arbscale_upscale")
    page.wait_for_function("""() => {
        const n = window.app.graph._nodes.find(n => n.type === 'LoadImage');
        return n && n.imgs && n.imgs[0] && n.imgs[0].naturalWidth > 0; }""", timeout=30000)
    assert _label_state(page, "ArbScaleUpscale", {"scale": 2})[:2] == ["217x150 → 434x300", "ok"]
    # the server's own rule and words for a refusal, in the refusal colour; the node grows to show it
    text, kind, size = _label_state(page, "ArbScaleUpscale", {"width": 65536, "height": 65536})
    assert kind == "refused"
    assert text == ("refused: output 65536x65536 is too large: 4,294,967,296 pixels, over the limit of "
                    "2,147,483,648")
    page.screenshot(path=str(shots / "label_refused.png"))
    text, kind, _ = _label_state(page, "ArbScaleUpscale", {"width": 40000, "height": 40000})
    assert kind == "warn" and text == "217x150 → 40000x40000 (IMAGE 19.2 GB of RAM)"
    text, kind, _ = _label_state(page, "ArbScaleUpscale", {"width": 0, "height": 0, "scale": 3.7})
    assert (text, kind) == ("217x150 → 803x555", "ok")
    # Run it as a person does (the Run button) and wait for the saved image to show in Save Image.
    page.get_by_role("button", name="Run").first.click()
    page.wait_for_function("""() => { const n = window.app.graph._nodes.find(n => n.type === 'SaveImage');
        return n && n.imgs && n.imgs[0] && n.imgs[0].naturalWidth === 803 && n.imgs[0].naturalHeight === 555; }""",
                           timeout=120000)
    page.evaluate("() => window.app.graph.setDirtyCanvas(true, true)")
    page.wait_for_timeout(500)
    assert _label_state(page, "ArbScaleUpscale", {})[:2] == ["217x150 → 803x555", "ok"]
    # ARBSCALE_UPDATE_DOCS=1 refreshes the README's screenshot; otherwise the tree stays clean.
    target = ROOT / "docs" if os.environ.get("ARBSCALE_UPDATE_DOCS") else shots
    page.screenshot(path=str(target / "comfyui_upscale_workflow.png"))
    assert (target / "comfyui_upscale_workflow.png").stat().st_size > 10_000


@pytest.mark.parametrize("node_type", ["ArbScaleLoadModel", "ArbScaleEncodeLR", "ArbScaleEmptyLatent",
                                       "ArbScaleLatentDenoise", "ArbScaleImplicitDecode", "ArbScaleUpscale"])
def test_fresh_node_fits_title_and_label(page, node_type):
    got = page.evaluate("""(type) => {
        const n = window.LiteGraph.createNode(type);
        window.app.graph.add(n);
        n.pos = [100, 100];
        const ctx = window.app.canvas.ctx;
        ctx.save();
        ctx.font = `${window.LiteGraph.NODE_TEXT_SIZE}px Arial`;
        const title = ctx.measureText(n.title).width;
        ctx.restore();
        window.app.canvas.draw(true, true);
        const last = n.widgets?.length ? n.widgets[n.widgets.length - 1] : null;
        const lastBottom = last ? (last.last_y ?? last.y) + window.LiteGraph.NODE_WIDGET_HEIGHT : 0;
        const out = {title, width: n.size[0], height: n.size[1], lastBottom, label: n.arbscaleLabel ?? null};
        window.app.graph.remove(n);
        return out; }""", node_type)
    assert got["width"] >= got["title"] + 40, got  # the whole title, past the collapse dot
    if node_type in ("ArbScaleImplicitDecode", "ArbScaleUpscale"):
        assert got["label"] == "output: connect an image"
        assert got["height"] - 6 - 12 >= got["lastBottom"], got  # the label's text sits below the last widget


def test_load_model_lists_every_bundled_model(server):
    _, info, _ = server
    spec = info["ArbScaleLoadModel"]["input"]["required"]["model_name"]
    options = spec[1].get("options") or spec[0]
    bundled = sorted(p.name for p in (ROOT / "arbscale_core" / "weights").glob("*.safetensors"))
    assert sorted(o for o in options if o.startswith("bundled/")) == [f"bundled/{n}" for n in bundled]
    for name in bundled:  # the tooltip the frontend shows says what each one is
        assert f"bundled/{name}: " in spec[1]["tooltip"]


def test_no_page_errors_from_the_pack(page):
    ours = [e for e in page.arbscale_errors if "arbscale" in e.lower() or "extensions/" in e]
    assert ours == []
