"""ComfyUI entry point of the DDColor node pack.

ComfyUI imports this folder as a package named after the folder, so everything
inside is imported relatively (``.nodes``, ``.ddcolor``). Importing it builds
no model, touches no network and installs nothing; the only effect is adding
``models/ddcolor`` to ComfyUI's model folders.

Each node is declared once (``nodes/schema.py``). On a ComfyUI with the
versioned node API the pack exports ``comfy_entrypoint`` only; elsewhere
``NODE_CLASS_MAPPINGS`` only: ComfyUI's loader reads the mappings first and
would ignore the entry point of a pack that exported both.
"""

from .nodes import colorize, colorize_video, finetune
from .nodes.models import register_models_folder
from .nodes.schema import classic_mappings, versioned_api, versioned_entrypoint

# Every node of the pack, in the order ComfyUI lists them: adding a node is one line here.
NODES = [colorize.NODE, colorize_video.NODE, finetune.NODE]

register_models_folder()

_API = versioned_api()
if _API is not None:
    comfy_entrypoint = versioned_entrypoint(NODES, _API)
    __all__ = ["comfy_entrypoint"]
else:
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = classic_mappings(NODES)
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
