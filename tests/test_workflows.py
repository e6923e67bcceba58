"""The pack's template layout as ComfyUI serves it: one template folder (it serves only the first of
example_workflows/, example/, examples/, workflow/, workflows/ that exists), UI-format files there
with a thumbnail beside each, the API graphs elsewhere, and all of them as scripts/build_workflows.py
writes them."""
import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_FOLDERS = ["example_workflows", "example", "examples", "workflow", "workflows"]
spec = importlib.util.spec_from_file_location("build_workflows", ROOT / "scripts" / "build_workflows.py")
build_workflows = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_workflows)
BUILT = build_workflows.build()


def test_exactly_one_template_folder():
    assert [f for f in TEMPLATE_FOLDERS if (ROOT / f).exists()] == ["example_workflows"]


def test_template_folder_holds_ui_templates_and_their_thumbnails_only():
    files = sorted(p.name for p in (ROOT / "example_workflows").iterdir())
    assert files == sorted([f"{name}.json" for name in BUILT] + [f"{name}.jpg" for name in BUILT])
    for name in BUILT:
        ui = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
        assert {"nodes", "links"} <= set(ui)
        with Image.open(ROOT / "example_workflows" / f"{name}.jpg") as thumb:
            assert thumb.format == "JPEG" and min(thumb.size) >= 256


@pytest.mark.parametrize("name", sorted(BUILT))
def test_committed_workflows_are_the_builders_output(name):
    ui, api = BUILT[name]
    assert (ROOT / "example_workflows" / f"{name}.json").read_text() == build_workflows.dumps(ui)
    assert (ROOT / "api_workflows" / f"{name}.json").read_text() == build_workflows.dumps(api)
    assert all("class_type" in node for node in api.values())


def test_no_note_reaches_the_api_graph_and_links_match():
    for name, (ui, api) in BUILT.items():
        notes = {str(n["id"]) for n in ui["nodes"] if n["type"] == "Note"}
        assert notes and not notes & set(api), name  # every template explains itself in a Note
        for link_id, src, src_slot, dst, dst_slot, _ in ui["links"]:
            dst_node = next(n for n in ui["nodes"] if n["id"] == dst)
            name_in = dst_node["inputs"][dst_slot]["name"]
            assert api[str(dst)]["inputs"][name_in] == [str(src), src_slot]


def test_layouts_do_not_overlap_in_the_file():
    """What the frontend test checks on screen, here on the file's own numbers: nodes, with their
    title bar and pack badge above (30 + 24 px), do not overlap."""
    for name, (ui, _) in BUILT.items():
        boxes = [(n["pos"][0], n["pos"][1] - 54, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
                 for n in ui["nodes"]]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (name, a, b)


def test_registry_entry_points_at_files_in_the_repo():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy, urls = meta["tool"]["comfy"], meta["project"]["urls"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    repo = urls["Repository"].rstrip("/")
    owner_name = repo.split("github.com/", 1)[1]
    prefix = f"https://raw.githubusercontent.com/{owner_name}/main/"
    assert comfy["Icon"].startswith(prefix)
    icon = ROOT / comfy["Icon"][len(prefix):]
    with Image.open(icon) as im:  # a real, square image in the repository
        assert im.format == "PNG" and im.size[0] == im.size[1] >= 128
    assert urls["Documentation"].startswith(repo) and urls["Bug Tracker"] == repo + "/issues"
    for path in comfy["includes"]:
        assert (ROOT / path).exists()
