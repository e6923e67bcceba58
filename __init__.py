"""ComfyUI entry point of the ArbScale node pack.

Importable without ComfyUI: the nodes (and their ``comfy`` imports) load only when ComfyUI calls
``comfy_entrypoint``. The core library is ``arbscale_core``.
"""
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
# A pack cloned into custom_nodes is not pip-installed: make arbscale_core importable. Appended,
# never prepended, so ComfyUI's own top-level ``nodes`` module keeps precedence over our folder.
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.comfy_nodes import ArbScaleExtension

    return ArbScaleExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
