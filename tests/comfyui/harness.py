"""Runs inside a real ComfyUI (in-process executor) and prints one JSON line of results.

    python tests/comfyui/harness.py COMFYUI_DIR PACK_DIR WORK_DIR SR_MODEL GEN_MODEL

Used by tests/test_comfyui.py (one process per run: ComfyUI's registries are global).
"""
import asyncio
import hashlib
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
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

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

    # Modes: detail samples (two seeds differ), fidelity is the default, an unknown mode is refused
    # at validation.
    def upscale_graph(**inputs):
        graph = with_models(json.loads((api / "arbscale_upscale.json").read_text()))
        graph["3"]["inputs"].update(inputs)
        return graph

    for key, inputs in {"mode_fidelity": dict(mode="fidelity", steps=0), "mode_detail_s0": dict(mode="detail", steps=2),
                        "mode_detail_s1": dict(mode="detail", steps=2, seed=1),
                        "mode_bad": dict(mode="sharp")}.items():
        graph = upscale_graph(**inputs)
        graph["4"]["inputs"]["filename_prefix"] = key
        result[key] = await run_prompt(graph, key)
        if result[key].get("saved"):
            name = result[key]["saved"][0][0]
            result[key]["mean"] = float(np.asarray(Image.open(work / "output" / name)).mean())
            result[key]["pixels"] = hashlib.sha256(Image.open(work / "output" / name).tobytes()).hexdigest()

    # An RGBA IMAGE (LoadImage's mask joined back as alpha) keeps its alpha through Upscale and
    # through Encode -> Denoise -> Decode; a grey (1-channel) IMAGE stays grey.
    rgba = Image.open(work / "input" / "building_lr.png").convert("RGBA")
    alpha = Image.linear_gradient("L").resize(rgba.size)
    rgba.putalpha(alpha)
    rgba.save(work / "input" / "rgba.png")
    for key, chain in {"rgba_upscale": "upscale", "rgba_chain": "chain"}.items():
        graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "rgba.png"}},
                 "2": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["1", 0], "alpha": ["1", 1]}},
                 "3": {"class_type": "ArbScaleLoadModel", "inputs": {"model_name": "test_sr.safetensors"}}}
        if chain == "upscale":
            graph["4"] = {"class_type": "ArbScaleUpscale", "inputs": {
                "model": ["3", 0], "image": ["2", 0], "scale": 2.0, "width": 0, "height": 0, "steps": 2, "eta": 0.0,
                "seed": 0, "chunk": 65536, "lr_consistency": True, "ensemble": "1", "mode": "fidelity"}}
        else:
            graph["5"] = {"class_type": "ArbScaleEncodeLR", "inputs": {"model": ["3", 0], "image": ["2", 0]}}
            graph["6"] = {"class_type": "ArbScaleLatentDenoise", "inputs": {"latent": ["5", 0], "steps": 2, "eta": 0.0,
                                                                            "seed": 0, "mode": "fidelity"}}
            graph["4"] = {"class_type": "ArbScaleImplicitDecode", "inputs": {
                "latent": ["6", 0], "scale": 2.0, "width": 0, "height": 0, "chunk": 65536, "lr_consistency": True}}
        graph["9"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": key}}
        result[key] = await run_prompt(graph, key)
        if result[key].get("saved"):
            out = Image.open(work / "output" / result[key]["saved"][0][0])
            big_alpha = alpha.resize(out.size, Image.BICUBIC)
            diff = np.abs(np.asarray(out.getchannel("A"), dtype=float)
                                           - np.asarray(big_alpha, dtype=float))
            result[key].update(mode=out.mode, alpha_mean_abs_diff=float(diff.mean()))

    # Broken model files in models/arbscale: each a readable error naming the problem, nothing saved.
    good = (work / "models" / "test_sr.safetensors").read_bytes()
    tensors = load_file(str(work / "models" / "test_sr.safetensors"))
    broken = {"empty.safetensors": b"", "text.safetensors": b"hello, this is a text file\n",
              "truncated.safetensors": good[: len(good) // 2]}
    for name, data in broken.items():
        (work / "models" / name).write_bytes(data)
    save_file(tensors, str(work / "models" / "badjson.safetensors"), metadata={"format": "arbscale", "config": "{not json"})
    first = sorted(tensors)[0]
    wrong = dict(tensors, **{first: torch.zeros(3, 1)})
    with safe_open(str(work / "models" / "test_sr.safetensors"), "pt") as fh:
        meta = fh.metadata()
    save_file(wrong, str(work / "models" / "wrongshape.safetensors"), metadata=meta)
    for name in [*broken, "badjson.safetensors", "wrongshape.safetensors"]:
        graph = with_models(json.loads((api / "arbscale_upscale.json").read_text()))
        graph["2"]["inputs"]["model_name"] = name
        result[f"model_{name.split('.')[0]}"] = await run_prompt(graph, f"model_{name}")
    # The wrong kind of model: a generation model to upscale, an SR model to generate.
    graph = with_models(json.loads((api / "arbscale_upscale.json").read_text()))
    graph["2"]["inputs"]["model_name"] = "test_gen.safetensors"
    result["gen_to_upscale"] = await run_prompt(graph, "gen_to_upscale")
    graph = with_models(json.loads((api / "arbscale_generate_texture.json").read_text()))
    graph["1"]["inputs"]["model_name"] = "test_sr.safetensors"
    result["sr_to_generate"] = await run_prompt(graph, "sr_to_generate")

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
