"""ComfyUI entry point of the ArbScale node pack.

Importable without ComfyUI: the nodes (and their ``comfy`` imports) load only when ComfyUI asks.
The core library is ``arbscale_core``.
"""
