"""Import this repository as ComfyUI imports a custom node pack: by folder path, as a package.

ComfyUI runs ``spec_from_file_location(<name>, <pack>/__init__.py)`` and
executes it, so the pack's relative imports (``.nodes``, ``.ddcolor``) resolve
inside the pack. Tests do the same, without ComfyUI.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
PACK_MODULE = "comfyui_ddcolor_pack"


def load_pack() -> ModuleType:
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(PACK_MODULE, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACK_MODULE]
        raise
    return module
