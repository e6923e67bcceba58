"""ComfyUI V3 nodes: thin wrappers over ``logic`` (and through it ``arbscale_core``)."""
from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import ComfyExtension, io

from arbscale_core.cli import BUNDLED_MODELS, WEIGHTS_DIR
from arbscale_core.pipeline import DEFAULT_STEPS, ENSEMBLE_SIZES

from . import logic

FOLDER = "arbscale"
BUNDLED_PREFIX = "bundled/"
if FOLDER not in folder_paths.folder_names_and_paths:
    folder_paths.folder_names_and_paths[FOLDER] = ([os.path.join(folder_paths.models_dir, FOLDER)], {".safetensors"})

ArbModel = io.Custom("ARBSCALE_MODEL")
ArbLatent = io.Custom("ARBSCALE_LATENT")
CATEGORY = "ArbScale"


def model_choices() -> list[str]:
    bundled = [BUNDLED_PREFIX + name for name in BUNDLED_MODELS if (WEIGHTS_DIR / name).is_file()]
    return bundled + folder_paths.get_filename_list(FOLDER)


MODEL_TOOLTIP = "\n".join([f"{BUNDLED_PREFIX}{name}: {what}" for name, what in BUNDLED_MODELS.items()]
                          + [f"other names: your own files in models/{FOLDER}"])


def resolve_model_path(name: str) -> str:
    if name.startswith(BUNDLED_PREFIX):
        file_name = name[len(BUNDLED_PREFIX):]
        if file_name in BUNDLED_MODELS and (WEIGHTS_DIR / file_name).is_file():
            return str(WEIGHTS_DIR / file_name)
        raise ValueError(f"ArbScale: bundled model {name!r} is not installed")
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise ValueError(f"ArbScale: model {name!r} not found in models/{FOLDER}")
    return path


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    if mm.should_use_bf16(device):
        return torch.bfloat16
    if mm.should_use_fp16(device):
        return torch.float16
    return None


def combo_check(name: str, value, options: list) -> bool | str:
    if value in options:
        return True
    shown = ", ".join(map(str, options[:8])) + (", ..." if len(options) > 8 else "")
    return f"ArbScale: {name} {value!r} is not one of the choices ({shown})"


def check_output_memory(batch: int, height: int, width: int) -> None:
    logic.check_image_memory(batch, height, width, mm.get_free_memory(torch.device("cpu")))


class _Progress:
    """ComfyUI progress bar + interrupt check as logic.Hooks."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)

    def hooks(self) -> logic.Hooks:
        return logic.Hooks(progress=lambda done, total: self.bar.update_absolute(done, total),
                           check_interrupt=mm.throw_exception_if_processing_interrupted)


def _on_device(model):
    device = mm.get_torch_device()
    return model.to(device), device


def _offload(model) -> None:
    model.to(mm.unet_offload_device())
    mm.soft_empty_cache()


SCALE = dict(default=4.0, min=0.01, max=1000.0, step=0.01,
             tooltip="output = input x scale (ignored when width or height is set)")
WIDTH = dict(default=0, min=0, max=logic.MAX_SIDE, step=1, tooltip="0 = from scale (or from height, keeping aspect)")
HEIGHT = dict(default=0, min=0, max=logic.MAX_SIDE, step=1, tooltip="0 = from scale (or from width, keeping aspect)")
def sampling_inputs() -> list:
    """steps, eta, seed: the same widgets on Latent Denoise and Upscale."""
    return [io.Int.Input("steps", default=0, min=0, max=1000,
                         tooltip=f"DDIM steps; 0 = the mode's (SR) or the model file's default (bundled SR model: 1; "
                                 f"otherwise {DEFAULT_STEPS['sr']})"),
            io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01,
                           tooltip="DDIM eta, 0 deterministic to 1 DDPM-like: for generation models and the custom mode"),
            io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True)]


MODE = dict(options=logic.SAMPLING_MODES, default="fidelity",
            tooltip="SR: fidelity = the model's few-step estimate, deterministic, the best PSNR; detail = DDIM "
                    "with eta > 0 over several steps, each seed its own sharper detail (less faithful); in these "
                    "two, steps > 0 overrides the mode's and eta is not used. custom = the steps and eta widgets. "
                    "Generation models always use the widgets.")
ENSEMBLE_CHOICES = [str(n) for n in ENSEMBLE_SIZES]
CONSISTENCY = dict(default=True, tooltip="SR: correct the output so that, brought back to the input's size, it "
                                         "gives the input (iterative back-projection; no effect on generation)")
CHUNK = dict(default=65536, min=1024, max=16777216, step=1024, tooltip="pixels decoded at a time (memory)")


class ArbScaleLoadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ArbScaleLoadModel", display_name="ArbScale Load Model", category=CATEGORY,
                         description="Load an ArbScale model (models/arbscale or the bundled weights).",
                         inputs=[io.Combo.Input("model_name", options=model_choices(), tooltip=MODEL_TOOLTIP)],
                         outputs=[ArbModel.Output(display_name="model")])

    @classmethod
    def validate_inputs(cls, model_name) -> bool | str:
        # V3 combos are not checked against their options by ComfyUI itself: refuse here, at validation.
        return combo_check("model_name", model_name, model_choices())

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        return io.NodeOutput(logic.load(resolve_model_path(model_name), torch.device("cpu")))


class ArbScaleEncodeLR(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ArbScaleEncodeLR", display_name="ArbScale Encode LR", category=CATEGORY,
                         description="Resize the low-resolution image to the condition size and encode it.",
                         inputs=[ArbModel.Input("model"), io.Image.Input("image")],
                         outputs=[ArbLatent.Output(display_name="latent")])

    @classmethod
    def execute(cls, model, image) -> io.NodeOutput:
        model, _ = _on_device(model)
        try:
            return io.NodeOutput(logic.encode_lr(model, image))
        finally:
            _offload(model)


class ArbScaleEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ArbScaleEmptyLatent", display_name="ArbScale Empty Latent", category=CATEGORY,
                         description="Start a generation at a given output size (a generation model).",
                         inputs=[ArbModel.Input("model"),
                                 io.Int.Input("width", default=512, min=1, max=logic.MAX_SIDE),
                                 io.Int.Input("height", default=512, min=1, max=logic.MAX_SIDE),
                                 io.Int.Input("batch_size", default=1, min=1, max=64)],
                         outputs=[ArbLatent.Output(display_name="latent")])

    @classmethod
    def execute(cls, model, width, height, batch_size) -> io.NodeOutput:
        return io.NodeOutput(logic.empty_latent(model, width, height, batch_size))


class ArbScaleLatentDenoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ArbScaleLatentDenoise", display_name="ArbScale Latent Denoise", category=CATEGORY,
                         description="DDIM in latent space (its cost does not depend on the output size).",
                         inputs=[ArbLatent.Input("latent"), *sampling_inputs(), io.Combo.Input("mode", **MODE)],
                         outputs=[ArbLatent.Output(display_name="latent")])

    @classmethod
    def validate_inputs(cls, mode="fidelity") -> bool | str:
        return combo_check("mode", mode, logic.SAMPLING_MODES)

    @classmethod
    def execute(cls, latent, steps, eta, seed, mode="fidelity") -> io.NodeOutput:
        model, device = _on_device(latent.model)
        steps, eta = logic.resolve_sampling(model, mode, steps, eta)
        try:
            out = logic.run_denoise(latent, steps, eta, seed, _Progress(steps).hooks(), autocast_dtype(device),
                                    detail=mode == "detail")
        finally:
            _offload(model)
        out.latent = out.latent.cpu()
        return io.NodeOutput(out)


class ArbScaleImplicitDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ArbScaleImplicitDecode", display_name="ArbScale Implicit Decode", category=CATEGORY,
                         description="Decode a denoised latent at any scale or size (one latent, many sizes).",
                         inputs=[ArbLatent.Input("latent"), io.Float.Input("scale", **SCALE),
                                 io.Int.Input("width", **WIDTH), io.Int.Input("height", **HEIGHT),
                                 io.Int.Input("chunk", **CHUNK), io.Boolean.Input("lr_consistency", **CONSISTENCY)],
                         outputs=[io.Image.Output(display_name="image")])

    @classmethod
    def execute(cls, latent, scale, width, height, chunk, lr_consistency=True) -> io.NodeOutput:
        h, w = logic.target_size(latent.source_hw, scale, width, height)
        check_output_memory(latent.latent_shape[0] if latent.latent_shape else 1, h, w)
        model, device = _on_device(latent.model)
        try:
            image = logic.run_decode(latent, h, w, chunk, _Progress(h).hooks(), autocast_dtype(device),
                                     consistency=lr_consistency)
        finally:
            _offload(model)
        return io.NodeOutput(image, ui={"arbscale_size": [f"{w}x{h}"]})


class ArbScaleUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ArbScaleUpscale", display_name="ArbScale Upscale", category=CATEGORY,
                         description="All in one: encode, denoise and decode at any scale or size.",
                         inputs=[ArbModel.Input("model"), io.Image.Input("image"), io.Float.Input("scale", **SCALE),
                                 io.Int.Input("width", **WIDTH), io.Int.Input("height", **HEIGHT),
                                 *sampling_inputs(), io.Int.Input("chunk", **CHUNK),
                                 io.Boolean.Input("lr_consistency", **CONSISTENCY),
                                 io.Combo.Input("ensemble", options=ENSEMBLE_CHOICES, default="1",
                                                tooltip="geometric self-ensemble: average this many runs on "
                                                        "flipped/transposed copies (more PSNR, that many times the work)"),
                                 io.Combo.Input("mode", **MODE)],
                         outputs=[io.Image.Output(display_name="image")])

    @classmethod
    def validate_inputs(cls, ensemble="1", mode="fidelity") -> bool | str:
        ok = combo_check("ensemble", ensemble, ENSEMBLE_CHOICES)
        return ok if ok is not True else combo_check("mode", mode, logic.SAMPLING_MODES)

    @classmethod
    def execute(cls, model, image, scale, width, height, steps, eta, seed, chunk, lr_consistency=True,
                ensemble="1", mode="fidelity") -> io.NodeOutput:
        steps, eta = logic.resolve_sampling(model, mode, steps, eta)
        source_hw = (image.shape[1], image.shape[2])
        h, w = logic.target_size(source_hw, scale, width, height)
        check_output_memory(image.shape[0], h, w)
        model, device = _on_device(model)
        progress = _Progress(100)
        try:
            image_out = logic.run_upscale(model, image, h, w, steps, eta, seed, chunk, progress.hooks(),
                                          autocast_dtype(device), consistency=lr_consistency,
                                          ensemble=int(ensemble), detail=mode == "detail")
        finally:
            _offload(model)
        return io.NodeOutput(image_out, ui={"arbscale_size": [f"{w}x{h}"]})


NODES = [ArbScaleLoadModel, ArbScaleEncodeLR, ArbScaleEmptyLatent, ArbScaleLatentDenoise, ArbScaleImplicitDecode,
         ArbScaleUpscale]


class ArbScaleExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
