"""Writes assets/icon.png (the ComfyUI registry icon, [tool.comfy] Icon): the example photo, coarse
pixels on the left turning into the model's x4 output on the right, under the pack's name.

    python scripts/make_icon.py
"""
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from arbscale_core.checkpoint import load_model
from arbscale_core.cli import DEFAULT_MODELS
from arbscale_core.imageops import load_image
from arbscale_core.pipeline import upscale_tensor

ROOT = Path(__file__).resolve().parents[1]
SIDE = 256

lr = load_image(ROOT / "assets" / "building_lr.png")[..., 40:104, 60:124]  # a 64x64 crop of the facade
with torch.no_grad():
    sr = upscale_tensor(load_model(DEFAULT_MODELS["sr"]), lr, SIDE, SIDE)
sharp = Image.fromarray((sr[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy())
coarse = Image.fromarray((lr[0].permute(1, 2, 0) * 255).round().byte().numpy()).resize((16, 16), Image.BOX)
icon = sharp.copy()
icon.paste(coarse.resize((SIDE, SIDE), Image.NEAREST).crop((0, 0, SIDE // 2, SIDE)), (0, 0))
draw = ImageDraw.Draw(icon)
draw.rectangle((0, SIDE - 64, SIDE, SIDE), fill=(20, 24, 32))
font = ImageFont.truetype("DejaVuSans-Bold.ttf", 38)
draw.text((SIDE // 2, SIDE - 32), "ArbScale", fill=(143, 209, 143), font=font, anchor="mm")
icon.save(ROOT / "assets" / "icon.png", optimize=True)
print("wrote assets/icon.png")
