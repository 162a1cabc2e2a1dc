"""Drive the node inside a real ComfyUI process, without the server, and print what happened as JSON.

Run by test_e2e_comfyui.py with ComfyUI's interpreter (COMFYUI_PYTHON)::

    python tests/comfyui_inprocess.py COMFYUI_PATH BASE_DIR CHECKPOINT OTHER_CHECKPOINT

BASE_DIR must hold custom_nodes/<pack link>, models/ddcolor/ddcolor_modelscope.pth
(CHECKPOINT) and models/ddcolor/other.pth (OTHER_CHECKPOINT). What is checked
here needs ComfyUI's own objects (its loaded-model list, progress hook,
interrupt flag), which the HTTP API does not show.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import weakref


def main() -> None:
    comfy_root, base = sys.argv[1], sys.argv[2]
    sys.argv = ["main.py", "--cpu", "--base-directory", base]
    sys.path.insert(0, comfy_root)
    os.chdir(comfy_root)
    import comfy.options

    comfy.options.enable_args_parsing()
    warnings = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    logging.getLogger().addHandler(Collect())
    logging.getLogger().setLevel(logging.INFO)

    import torch

    import comfy.model_management as mm
    import comfy.utils
    import nodes

    pack_dir = os.path.join(base, "custom_nodes", os.listdir(os.path.join(base, "custom_nodes"))[0])
    assert asyncio.run(nodes.load_custom_node(pack_dir)), "the pack did not load"
    from comfy_api.latest import io

    node_class = nodes.NODE_CLASS_MAPPINGS["DDColor-ddcolorize"]
    colorize_module = sys.modules[node_class.__module__]
    pack = sys.modules[pack_dir.replace(".", "_x_")]  # the name ComfyUI's loader gives a pack folder
    facts = {
        # Registered through the versioned node API, and only through it.
        "versioned": issubclass(node_class, io.ComfyNode),
        "exports": sorted(name for name in ("comfy_entrypoint", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS") if hasattr(pack, name)),
    }
    types = node_class.INPUT_TYPES()
    names = [*types["required"], *types.get("optional", {})]

    def colorize(*values):
        """The node run as ComfyUI's executor runs a versioned node: inputs by name, a NodeOutput back."""
        return node_class.EXECUTE_NORMALIZED(**dict(zip(names, values))).result

    def ours():
        """Our model patchers in ComfyUI's list of loaded models."""
        return [m for m in mm.current_loaded_models if m.model is not None and type(m.model.model).__name__ == "DDColor"]

    progress = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: progress.append([value, total]))
    image = torch.rand(3, 90, 120, 3)

    (out,) = colorize(image, "fp16", 256)
    patcher = colorize_module._LOADED._value
    facts["output_shape"] = list(out.shape)
    facts["progress"] = progress[:]
    facts["loaded_after_run"] = [m.model is patcher for m in ours()]
    facts["runs_on"] = str(next(patcher.model.parameters()).device)

    # ComfyUI may unload it (another model needs the memory); the next run brings it back.
    mm.unload_all_models()
    facts["loaded_after_unload_all"] = len(ours())
    colorize(image[:1], "fp16", 288)
    facts["same_patcher_after_reload"] = colorize_module._LOADED._value is patcher
    facts["loaded_after_reload"] = len(ours())

    # After an out-of-memory error the node pushes other models out and keeps its own.
    import comfy.model_patcher

    other = comfy.model_patcher.ModelPatcher(torch.nn.Linear(64, 64), load_device=mm.get_torch_device(), offload_device=torch.device("cpu"))
    mm.load_models_gpu([other])
    colorize_module._unload_other_models(patcher)
    facts["after_unload_others"] = sorted(type(m.model.model).__name__ for m in mm.current_loaded_models if m.model is not None)
    del other

    # A clip with temporal stabilization: one progress step per frame, the whole clip in one call.
    progress.clear()
    (out,) = colorize(torch.rand(6, 48, 64, 3), "fp16", 256, "ddcolor_modelscope", 0.6)
    facts["temporal_shape"] = list(out.shape)
    facts["temporal_progress"] = progress[:]

    # RGBA: alpha passes through.
    rgba = torch.rand(1, 40, 50, 4)
    (out,) = colorize(rgba, "fp32", 256)
    facts["alpha_kept"] = bool(torch.equal(out[..., 3], rgba[..., 3]))

    # Another model replaces the old one: one DDColor in ComfyUI's list, the old one freed.
    old_model = weakref.ref(patcher.model)
    del patcher
    colorize(image[:1], "fp16", 256, "other.pth")
    gc.collect()
    facts["loaded_after_switch"] = len(ours())
    facts["old_model_freed"] = old_model() is None

    # Interrupt between chunks: the flag set during the first chunk stops the batch after it.
    progress.clear()

    def interrupt_after_first(value, total, preview, node_id=None):
        progress.append([value, total])
        mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(interrupt_after_first)
    try:
        colorize(torch.rand(4, 64, 64, 3), "fp16", 256, "other.pth")
        facts["interrupt"] = "not raised"
    except mm.InterruptProcessingException:
        facts["interrupt"] = "raised"
    finally:
        mm.interrupt_current_processing(False)
    facts["progress_before_interrupt"] = progress[:]

    facts["leak_warnings"] = [w for w in warnings if "leak" in w.lower()]
    facts["precision_notes"] = sum("is slow or unsupported on" in w for w in warnings)
    print("FACTS " + json.dumps(facts))


if __name__ == "__main__":
    main()
