"""Writes the shared workflows: UI format in workflows/*.json (ComfyUI templates) and API format in
workflows/api/*.json, from one description per graph so the two never drift apart.

    python workflows/build.py
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
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
    "ArbScaleLatentDenoise": (["steps", "eta", "seed"], [("latent", "ARBSCALE_LATENT")],
                              [("latent", "ARBSCALE_LATENT")]),
    "ArbScaleImplicitDecode": (["scale", "width", "height", "chunk", "lr_consistency"], [("latent", "ARBSCALE_LATENT")],
                               [("image", "IMAGE")]),
    "ArbScaleUpscale": (["scale", "width", "height", "steps", "eta", "seed", "chunk", "lr_consistency", "ensemble"],
                        [("model", "ARBSCALE_MODEL"), ("image", "IMAGE")], [("image", "IMAGE")]),
}
SEED_WIDGETS = {"seed"}


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
        inputs = {w: n["widgets"][w] for w in widgets if w != "upload"}
        inputs.update({name: [str(src), slot] for name, (src, slot) in n.get("inputs", {}).items()})
        api[str(n["id"])] = {"class_type": n["type"], "inputs": inputs, "_meta": {"title": n.get("title", n["type"])}}
    ui = {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
          "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [60, 90]}}, "version": 0.4}
    return ui, api


def load_image(i, pos):
    return {"id": i, "type": "LoadImage", "pos": pos, "size": [300, 330],
            "widgets": {"image": "building_lr.png", "upload": "image"}}


WORKFLOWS = {
    "arbscale_upscale": [
        load_image(1, [0, 0]),
        {"id": 2, "type": "ArbScaleLoadModel", "pos": [0, 380], "widgets": {"model_name": MODEL}},
        {"id": 3, "type": "ArbScaleUpscale", "pos": [360, 0], "size": [320, 340],
         "widgets": {"scale": 3.7, "width": 0, "height": 0, "steps": 0, "eta": 0.0, "seed": 0, "chunk": CHUNK,
                      "lr_consistency": True, "ensemble": "1"},
         "inputs": {"model": (2, 0), "image": (1, 0)}},
        {"id": 4, "type": "SaveImage", "pos": [720, 0], "size": [400, 400], "widgets": {"filename_prefix": "arbscale_x3.7"},
         "inputs": {"images": (3, 0)}},
    ],
    "arbscale_one_latent_many_scales": [
        load_image(1, [0, 0]),
        {"id": 2, "type": "ArbScaleLoadModel", "pos": [0, 380], "widgets": {"model_name": MODEL}},
        {"id": 3, "type": "ArbScaleEncodeLR", "pos": [360, 0], "inputs": {"model": (2, 0), "image": (1, 0)}},
        {"id": 4, "type": "ArbScaleLatentDenoise", "pos": [360, 120], "widgets": {"steps": 0, "eta": 0.0, "seed": 0},
         "inputs": {"latent": (3, 0)}},
        {"id": 5, "type": "ArbScaleImplicitDecode", "pos": [720, 0], "title": "Decode x2",
         "widgets": {"scale": 2.0, "width": 0, "height": 0, "chunk": CHUNK, "lr_consistency": True},
         "inputs": {"latent": (4, 0)}},
        {"id": 6, "type": "ArbScaleImplicitDecode", "pos": [720, 200], "title": "Decode x4.5",
         "widgets": {"scale": 4.5, "width": 0, "height": 0, "chunk": CHUNK, "lr_consistency": True},
         "inputs": {"latent": (4, 0)}},
        {"id": 7, "type": "ArbScaleImplicitDecode", "pos": [720, 400], "title": "Decode to 1000x400",
         "widgets": {"scale": 1.0, "width": 1000, "height": 400, "chunk": CHUNK, "lr_consistency": True},
         "inputs": {"latent": (4, 0)}},
        {"id": 8, "type": "SaveImage", "pos": [1080, 0], "widgets": {"filename_prefix": "arbscale_x2"},
         "inputs": {"images": (5, 0)}},
        {"id": 9, "type": "SaveImage", "pos": [1080, 200], "widgets": {"filename_prefix": "arbscale_x4.5"},
         "inputs": {"images": (6, 0)}},
        {"id": 10, "type": "SaveImage", "pos": [1080, 400], "widgets": {"filename_prefix": "arbscale_1000x400"},
         "inputs": {"images": (7, 0)}},
    ],
    "arbscale_generate_texture": [
        {"id": 1, "type": "ArbScaleLoadModel", "pos": [0, 0], "widgets": {"model_name": GEN_MODEL}},
        {"id": 2, "type": "ArbScaleEmptyLatent", "pos": [360, 0],
         "widgets": {"width": 640, "height": 360, "batch_size": 1}, "inputs": {"model": (1, 0)}},
        {"id": 3, "type": "ArbScaleLatentDenoise", "pos": [360, 200], "widgets": {"steps": 20, "eta": 0.0, "seed": 7},
         "inputs": {"latent": (2, 0)}},
        {"id": 4, "type": "ArbScaleImplicitDecode", "pos": [720, 0],
         "widgets": {"scale": 1.0, "width": 0, "height": 0, "chunk": CHUNK, "lr_consistency": True},
         "inputs": {"latent": (3, 0)}},
        {"id": 5, "type": "SaveImage", "pos": [1080, 0], "widgets": {"filename_prefix": "arbscale_texture"},
         "inputs": {"images": (4, 0)}},
    ],
    "arbscale_after_stable_diffusion": [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [0, 0], "widgets": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        {"id": 2, "type": "CLIPTextEncode", "pos": [360, 0], "size": [400, 160], "title": "Positive",
         "widgets": {"text": "a cosy mountain cabin at dusk, detailed, photograph"}, "inputs": {"clip": (1, 1)}},
        {"id": 3, "type": "CLIPTextEncode", "pos": [360, 200], "size": [400, 160], "title": "Negative",
         "widgets": {"text": "blurry, low quality"}, "inputs": {"clip": (1, 1)}},
        {"id": 4, "type": "EmptyLatentImage", "pos": [360, 400], "widgets": {"width": 512, "height": 512, "batch_size": 1}},
        {"id": 5, "type": "KSampler", "pos": [800, 0], "size": [320, 270],
         "widgets": {"seed": 0, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0},
         "inputs": {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}},
        {"id": 6, "type": "VAEDecode", "pos": [1160, 0], "inputs": {"samples": (5, 0), "vae": (1, 2)}},
        {"id": 7, "type": "ArbScaleLoadModel", "pos": [1160, 120], "widgets": {"model_name": MODEL}},
        {"id": 8, "type": "ArbScaleUpscale", "pos": [1520, 0], "size": [320, 340],
         "widgets": {"scale": 2.5, "width": 0, "height": 0, "steps": 0, "eta": 0.0, "seed": 0, "chunk": CHUNK,
                      "lr_consistency": True, "ensemble": "1"},
         "inputs": {"model": (7, 0), "image": (6, 0)}},
        {"id": 9, "type": "SaveImage", "pos": [1880, 0], "size": [400, 400], "widgets": {"filename_prefix": "sd_arbscale"},
         "inputs": {"images": (8, 0)}},
    ],
}


def main() -> None:
    (HERE / "api").mkdir(exist_ok=True)
    for name, nodes in WORKFLOWS.items():
        ui, api = graph(nodes)
        (HERE / f"{name}.json").write_text(json.dumps(ui, indent=1) + "\n")
        (HERE / "api" / f"{name}.json").write_text(json.dumps(api, indent=1) + "\n")
        print(f"wrote workflows/{name}.json and workflows/api/{name}.json")


if __name__ == "__main__":
    main()
