"""ArbScale's ComfyUI nodes. ``comfy_nodes`` is the only module that imports ComfyUI; ``logic``
holds what the nodes do and is tested without ComfyUI."""
