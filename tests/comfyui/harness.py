"""Runs inside a real ComfyUI (in-process executor) and prints one JSON line of results.

    python tests/comfyui/harness.py COMFYUI_DIR PACK_DIR WORK_DIR SR_MODEL GEN_MODEL

Used by tests/test_comfyui.py (one process per run: ComfyUI's registries are global).
"""
import asyncio
import json
import shutil
import sys
from pathlib import Path

comfy_dir, pack_dir, work, sr_model, gen_model = sys.argv[1:6]
sys.path.insert(0, comfy_dir)
import utils.extra_config  # noqa: E402,F401  (first: see ComfyUI's own main.py)
import comfy.cli_args  # noqa: E402

vars(comfy.cli_args.args).update(vars(comfy.cli_args.parser.parse_args(["--cpu"])))
import comfy.model_management  # noqa: E402
import comfy.utils  # noqa: E402
import execution  # noqa: E402
import folder_paths  # noqa: E402
import nodes  # noqa: E402
from PIL import Image  # noqa: E402

work = Path(work)
(work / "input").mkdir(parents=True, exist_ok=True)
(work / "output").mkdir(exist_ok=True)
(work / "models").mkdir(exist_ok=True)
folder_paths.set_input_directory(str(work / "input"))
folder_paths.set_output_directory(str(work / "output"))
shutil.copy(Path(pack_dir) / "assets" / "building_lr.png", work / "input" / "building_lr.png")
shutil.copy(sr_model, work / "models" / "test_sr.safetensors")
shutil.copy(gen_model, work / "models" / "test_gen.safetensors")


class Server:
    client_id = "t"
    last_node_id = None
    last_prompt_id = None
    sockets_metadata = {}

    def __init__(self):
        self.events = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, {k: v for k, v in data.items() if isinstance(v, (str, int, float, type(None)))}))


def with_models(graph):
    for node in graph.values():
        if node["class_type"] == "ArbScaleLoadModel":
            gen = "gen" in node["inputs"]["model_name"]
            node["inputs"]["model_name"] = "test_gen.safetensors" if gen else "test_sr.safetensors"
        for key in ("steps",):
            if key in node["inputs"]:
                node["inputs"][key] = 3
    return graph


async def run_prompt(graph, prompt_id):
    server = Server()
    ok, err, outs, node_errors = await execution.validate_prompt(prompt_id, graph, None)
    if not ok:
        return {"valid": False, "error": err, "node_errors": str(node_errors)[:2000]}
    ex = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC)
    await ex.execute_async(graph, prompt_id, {"client_id": "t"}, outs)
    saved = []
    for node_out in ex.history_result.get("outputs", {}).values():
        for img in node_out.get("images", []):
            path = work / "output" / img["subfolder"] / img["filename"]
            saved.append([img["filename"], list(Image.open(path).size)])
    return {"valid": True, "success": ex.success, "saved": sorted(saved),
            "events": [e for e, _ in server.events],
            "errors": [d for e, d in server.events if e == "execution_error"]}


async def main():
    result = {}
    await nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)
    result["loaded"] = await nodes.load_custom_node(pack_dir, module_parent="custom_nodes")
    folder_paths.add_model_folder_path("arbscale", str(work / "models"))
    result["node_ids"] = sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("ArbScale"))
    result["web_dir"] = nodes.EXTENSION_WEB_DIRS.get(Path(pack_dir).name)
    api = Path(pack_dir) / "api_workflows"
    for i, name in enumerate(["arbscale_upscale", "arbscale_one_latent_many_scales", "arbscale_generate_texture"]):
        graph = with_models(json.loads((api / f"{name}.json").read_text()))
        result[name] = await run_prompt(graph, f"p{i}")

    # The Upscale node's options through a real prompt: ensemble of 2, projection off.
    graph = with_models(json.loads((api / "arbscale_upscale.json").read_text()))
    graph["3"]["inputs"].update(ensemble="2", lr_consistency=False)
    result["upscale_options"] = await run_prompt(graph, "options")
    graph["3"]["inputs"]["ensemble"] = "3"
    result["bad_ensemble"] = await run_prompt(graph, "badensemble")
    graph = with_models(json.loads((api / "arbscale_upscale.json").read_text()))
    graph["2"]["inputs"]["model_name"] = "no_such_model.safetensors"
    result["unknown_model"] = await run_prompt(graph, "unknownmodel")
    load = nodes.NODE_CLASS_MAPPINGS["ArbScaleLoadModel"].INPUT_TYPES()["required"]["model_name"]
    result["model_options"] = [load[0] if isinstance(load[0], list) else load[1].get("options"), load[1].get("tooltip")]

    # Bad input: a scale of 0 reaches the node through the API (the UI's min would stop it).
    graph = with_models(json.loads((api / "arbscale_upscale.json").read_text()))
    graph["3"]["inputs"]["scale"] = 0.0
    result["bad_scale"] = await run_prompt(graph, "bad")

    # A file that is not a model, and an absurd size: readable execution errors, server unharmed.
    (work / "models" / "bad.safetensors").write_bytes(b"definitely not safetensors")
    graph = with_models(json.loads((api / "arbscale_upscale.json").read_text()))
    graph["2"]["inputs"]["model_name"] = "bad.safetensors"
    result["bad_model"] = await run_prompt(graph, "badmodel")
    graph = with_models(json.loads((api / "arbscale_upscale.json").read_text()))
    graph["3"]["inputs"].update(width=65536, height=65536)
    result["absurd_size"] = await run_prompt(graph, "absurd")
    # Within the pixel limit but its IMAGE would not fit in RAM: refused before any work.
    for key, (w, h) in {"huge_upscale": (40000, 40000), "huge_decode": (46000, 46000)}.items():
        graph = with_models(json.loads((api / "arbscale_upscale.json" if key == "huge_upscale"
                                        else api / "arbscale_one_latent_many_scales.json").read_text()))
        graph["3" if key == "huge_upscale" else "5"]["inputs"].update(width=w, height=h)
        seen = []  # progress of the refusing node: none, it does no work
        refusing = "3" if key == "huge_upscale" else "5"
        comfy.utils.set_progress_bar_global_hook(
            lambda value, total, preview, prompt_id=None, node_id=None: seen.append(value) if node_id == refusing else None)
        result[key] = await run_prompt(graph, key)
        result[key]["progress"] = seen
    import psutil
    result["free_ram"] = psutil.virtual_memory().available

    # Interrupt: the progress hook asks for an interrupt at the first denoise step.
    progress = []

    def hook(value, total, preview, prompt_id=None, node_id=None):
        progress.append([value, total, node_id])
        if total == 50 and value >= 1:
            comfy.model_management.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(hook)
    graph = with_models(json.loads((api / "arbscale_one_latent_many_scales.json").read_text()))
    graph["4"]["inputs"]["steps"] = 50
    run = await run_prompt(graph, "interrupt")
    comfy.model_management.interrupt_current_processing(False)
    run["denoise_progress"] = [v for v, t, n in progress if t == 50]
    result["interrupt"] = run
    print("RESULT " + json.dumps(result))


asyncio.run(main())
