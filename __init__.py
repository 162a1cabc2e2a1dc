"""ComfyUI entry point of the DDColor node pack.

ComfyUI imports this folder as a package named after the folder, so everything
inside is imported relatively (``.nodes``, ``.ddcolor``). Importing it builds
no model, touches no network and installs nothing; the only effect is adding
``models/ddcolor`` to ComfyUI's model folders.

The classic mappings below are what every ComfyUI release loads (a module that
exports them has any V3 ``comfy_entrypoint`` ignored).
"""

from .nodes import colorize, finetune
from .nodes.models import register_models_folder

register_models_folder()

NODE_CLASS_MAPPINGS = {
    colorize.NODE_NAME: colorize.DDColorColorize,
    finetune.NODE_NAME: finetune.DDColorFinetune,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    colorize.NODE_NAME: colorize.DISPLAY_NAME,
    finetune.NODE_NAME: finetune.DISPLAY_NAME,
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
