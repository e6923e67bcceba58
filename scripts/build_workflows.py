"""Writes the shared workflows: UI format in example_workflows/*.json (the ComfyUI templates, the
only template folder ComfyUI should find in the pack) and API format in api_workflows/*.json, from one
description per graph so the two never drift apart.

    python scripts/build_workflows.py            # tests/test_workflows.py checks the files are current
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UI_DIR, API_DIR = ROOT / "example_workflows", ROOT / "api_workflows"
MODEL = "bundled/arbscale_sr_tiny.safetensors"
GEN_MODEL = "bundled/arbscale_gen_tiny.safetensors"
CHUNK = 65536

# Per node type: (widget names in order, input sockets, output sockets) as the frontend sees them.
# Seed widgets are followed by the frontend's "control_after_generate" value in widgets_values.
TYPES = {
    "LoadImage": (["image", "upload"], [], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "SaveImage": (["filename_prefix"], [("images", "IMAGE")], []),
    "PreviewImage": ([], [("images", "IMAGE")], []),
    "CheckpointLoaderSimple": (["ckpt_name"], [], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": (["text"], [("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": (["width", "height", "batch_size"], [], [("LATENT", "LATENT")]),
    "KSampler": (["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
                 [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")], [("LATENT", "LATENT")]),
    "VAEDecode": ([], [("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "ArbScaleLoadModel": (["model_name"], [], [("model", "ARBSCALE_MODEL")]),
    "ArbScaleEncodeLR": ([], [("model", "ARBSCALE_MODEL"), ("image", "IMAGE")], [("latent", "ARBSCALE_LATENT")]),
    "ArbScaleEmptyLatent": (["width", "height", "batch_size"], [("model", "ARBSCALE_MODEL")],
                            [("latent", "ARBSCALE_LATENT")]),
    "ArbScaleLatentDenoise": (["steps", "eta", "seed", "mode"], [("latent", "ARBSCALE_LATENT")],
                              [("latent", "ARBSCALE_LATENT")]),
    "ArbScaleImplicitDecode": (["scale", "width", "height", "chunk", "lr_consistency"], [("latent", "ARBSCALE_LATENT")],
                               [("image", "IMAGE")]),
    "ArbScaleUpscale": (["scale", "width", "height", "steps", "eta", "seed", "chunk", "lr_consistency", "ensemble",
                         "mode"],
                        [("model", "ARBSCALE_MODEL"), ("image", "IMAGE")], [("image", "IMAGE")]),
    "Note": (["text"], [], []),  # frontend-only: in the UI file, not in the API graph
}
UI_ONLY = {"Note"}
SEED_WIDGETS = {"seed"}
VIEW_OFFSET = (20, 60)  # graph (0, 0) on the canvas: room above for titles and pack badges


def graph(nodes: list[dict]) -> tuple[dict, dict]:
    """nodes: {id, type, widgets: {name: value}, inputs: {name: (node_id, slot)}, pos, title?}."""
    links, ui_nodes, api = [], [], {}
    by_id = {n["id"]: n for n in nodes}
    out_links: dict[tuple[int, int], list[int]] = {}
    for n in nodes:
        for name, (src, slot) in n.get("inputs", {}).items():
            link_id = len(links) + 1
            in_names = [s[0] for s in TYPES[n["type"]][1]]
            links.append([link_id, src, slot, n["id"], in_names.index(name), TYPES[by_id[src]["type"]][2][slot][1]])
            out_links.setdefault((src, slot), []).append(link_id)
    for order, n in enumerate(nodes):
        widgets, ins, outs = TYPES[n["type"]]
        values = []
        for w in widgets:
            values.append(n["widgets"][w])
            if w in SEED_WIDGETS:
                values.append("fixed")
        in_link = {(l[3], l[4]): l[0] for l in links}
        ui_nodes.append({
            "id": n["id"], "type": n["type"], "pos": n["pos"], "size": n.get("size", [320, 60 + 26 * len(widgets)]),
            "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": name, "type": t, "link": in_link.get((n["id"], i))} for i, (name, t) in enumerate(ins)],
            "outputs": [{"name": name, "type": t, "links": out_links.get((n["id"], i), []), "slot_index": i}
                        for i, (name, t) in enumerate(outs)],
            "properties": {"Node name for S&R": n["type"]},
            "widgets_values": values,
            **({"title": n["title"]} if "title" in n else {}),
        })
        if n["type"] in UI_ONLY:
            ui_nodes[-1].update(color="#432", bgcolor="#653")
            continue
        inputs = {w: n["widgets"][w] for w in widgets if w != "upload"}
        inputs.update({name: [str(src), slot] for name, (src, slot) in n.get("inputs", {}).items()})
        api[str(n["id"])] = {"class_type": n["type"], "inputs": inputs, "_meta": {"title": n.get("title", n["type"])}}
    ui = {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
          "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": list(VIEW_OFFSET)}}, "version": 0.4}
    return ui, api


def load_image(i, pos):
    return {"id": i, "type": "LoadImage", "pos": pos, "size": [260, 330],
            "widgets": {"image": "building_lr.png", "upload": "image"}}


def note(i, pos, size, text):
    return {"id": i, "type": "Note", "pos": pos, "size": size, "widgets": {"text": text}}


def decode(i, pos, title, latent, scale=1.0, width=0, height=0):
    return {"id": i, "type": "ArbScaleImplicitDecode", "pos": pos, "size": [300, 176], "title": title,
            "widgets": {"scale": scale, "width": width, "height": height, "chunk": CHUNK, "lr_consistency": True},
            "inputs": {"latent": latent}}


def save(i, pos, size, prefix, images):
    return {"id": i, "type": "SaveImage", "pos": pos, "size": size, "widgets": {"filename_prefix": prefix},
            "inputs": {"images": images}}


# Layouts fit a 1600x1000 window at zoom 1 (the view each template opens with, extra.ds below), clear of
# the frontend's side bar, top bar and minimap; tests/test_frontend.py checks that on screen.
WORKFLOWS = {
    "arbscale_upscale": [
        load_image(1, [0, 0]),
        {"id": 2, "type": "ArbScaleLoadModel", "pos": [0, 395], "size": [400, 58], "widgets": {"model_name": MODEL}},
        note(5, [0, 515], [400, 190],
             "Upscale by any factor (3.7 here), or set width / height (one keeps the aspect).\n\n"
             "mode: fidelity (default: 1 step, faithful, the best PSNR) or detail (sampled: each seed its own "
             "sharper detail, less faithful).\n\nThe label under the node shows the output size."),
        {"id": 3, "type": "ArbScaleUpscale", "pos": [430, 0], "size": [320, 356],
         "widgets": {"scale": 3.7, "width": 0, "height": 0, "steps": 0, "eta": 0.0, "seed": 0, "chunk": CHUNK,
                     "lr_consistency": True, "ensemble": "1", "mode": "fidelity"},
         "inputs": {"model": (2, 0), "image": (1, 0)}},
        save(4, [780, 0], [420, 420], "arbscale_x3.7", (3, 0)),
    ],
    "arbscale_one_latent_many_scales": [
        load_image(1, [0, 0]),
        {"id": 2, "type": "ArbScaleLoadModel", "pos": [0, 395], "size": [400, 58], "widgets": {"model_name": MODEL}},
        {"id": 3, "type": "ArbScaleEncodeLR", "pos": [290, 0], "size": [290, 50],
         "inputs": {"model": (2, 0), "image": (1, 0)}},
        {"id": 4, "type": "ArbScaleLatentDenoise", "pos": [290, 115], "size": [290, 166],
         "widgets": {"steps": 0, "eta": 0.0, "seed": 0, "mode": "fidelity"}, "inputs": {"latent": (3, 0)}},
        note(11, [0, 515], [580, 130],
             "Denoise once, decode many times: the diffusion runs at the input's size, so each extra "
             "output size costs only its decode.\n\nEach Decode sets a scale, or a width and/or height."),
        decode(5, [610, 0], "Decode x2", (4, 0), scale=2.0),
        decode(6, [610, 230], "Decode x4.5", (4, 0), scale=4.5),
        decode(7, [610, 460], "Decode to 1000x400", (4, 0), width=1000, height=400),
        save(8, [940, 0], [260, 176], "arbscale_x2", (5, 0)),
        save(9, [940, 230], [260, 176], "arbscale_x4.5", (6, 0)),
        save(10, [940, 460], [260, 176], "arbscale_1000x400", (7, 0)),
    ],
    "arbscale_generate_texture": [
        {"id": 1, "type": "ArbScaleLoadModel", "pos": [0, 0], "size": [400, 58], "widgets": {"model_name": GEN_MODEL}},
        note(7, [0, 120], [400, 270],
             "The bundled generation model is tiny (4.7 M parameters, about an hour of CPU training on "
             "game textures): it makes noisy ground- and stone-like textures, not finished images.\n\n"
             "What it shows: one generated latent decodes at any size and stays the same picture "
             "(256 and 768 px here). Load your own generation model for real work."),
        {"id": 2, "type": "ArbScaleEmptyLatent", "pos": [430, 0], "size": [300, 106],
         "widgets": {"width": 256, "height": 256, "batch_size": 1}, "inputs": {"model": (1, 0)}},
        {"id": 3, "type": "ArbScaleLatentDenoise", "pos": [430, 175], "size": [300, 166],
         "widgets": {"steps": 20, "eta": 0.0, "seed": 7, "mode": "custom"}, "inputs": {"latent": (2, 0)}},
        decode(4, [760, 0], "Decode at 256x256", (3, 0), scale=1.0),
        decode(6, [760, 240], "Decode x3 (768x768)", (3, 0), scale=3.0),
        save(5, [1090, 0], [300, 380], "arbscale_texture", (4, 0)),
        save(8, [1090, 440], [300, 150], "arbscale_texture_x3", (6, 0)),
    ],
    "arbscale_after_stable_diffusion": [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [0, 0], "size": [345, 98],
         "widgets": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        {"id": 4, "type": "EmptyLatentImage", "pos": [0, 165], "size": [345, 106],
         "widgets": {"width": 512, "height": 512, "batch_size": 1}},
        note(10, [0, 340], [345, 200],
             "Any generator's IMAGE can feed ArbScale: here Stable Diffusion 1.5 (put its checkpoint in "
             "models/checkpoints), then x2.5 with the bundled SR model.\n\nThe SR model runs at the "
             "generated image's size; only the decode grows with the scale."),
        {"id": 2, "type": "CLIPTextEncode", "pos": [370, 0], "size": [340, 150], "title": "Positive",
         "widgets": {"text": "a cosy mountain cabin at dusk, detailed, photograph"}, "inputs": {"clip": (1, 1)}},
        {"id": 3, "type": "CLIPTextEncode", "pos": [370, 215], "size": [340, 150], "title": "Negative",
         "widgets": {"text": "blurry, low quality"}, "inputs": {"clip": (1, 1)}},
        {"id": 5, "type": "KSampler", "pos": [740, 0], "size": [300, 262],
         "widgets": {"seed": 0, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0},
         "inputs": {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}},
        {"id": 6, "type": "VAEDecode", "pos": [740, 330], "size": [300, 46], "inputs": {"samples": (5, 0), "vae": (1, 2)}},
        {"id": 7, "type": "ArbScaleLoadModel", "pos": [740, 445], "size": [400, 58], "widgets": {"model_name": MODEL}},
        {"id": 8, "type": "ArbScaleUpscale", "pos": [1170, 0], "size": [300, 356],
         "widgets": {"scale": 2.5, "width": 0, "height": 0, "steps": 0, "eta": 0.0, "seed": 0, "chunk": CHUNK,
                     "lr_consistency": True, "ensemble": "1", "mode": "fidelity"},
         "inputs": {"model": (7, 0), "image": (6, 0)}},
        save(9, [1170, 425], [300, 150], "sd_arbscale", (8, 0)),
    ],
}


def build() -> dict[str, tuple[dict, dict]]:
    return {name: graph(nodes) for name, nodes in WORKFLOWS.items()}


def dumps(data: dict) -> str:
    return json.dumps(data, indent=1) + "\n"


def main() -> None:
    API_DIR.mkdir(exist_ok=True)
    for name, (ui, api) in build().items():
        (UI_DIR / f"{name}.json").write_text(dumps(ui))
        (API_DIR / f"{name}.json").write_text(dumps(api))
        print(f"wrote example_workflows/{name}.json and api_workflows/{name}.json")


if __name__ == "__main__":
    main()
