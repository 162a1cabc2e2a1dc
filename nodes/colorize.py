"""The ``DDColor-ddcolorize`` node (DDColor Colorize): a thin ComfyUI adapter over ``ddcolor.colorize``.

Declared once as ``NODE`` (see ``schema.py``), registered with either of ComfyUI's node APIs.

ComfyUI modules (``comfy.*``, ``folder_paths``) are imported inside functions,
so the pack imports, and its contract tests run, without a ComfyUI.
"""

from __future__ import annotations

import logging
import time

from ..ddcolor import (
    DEFAULT_MODEL,
    PRECISIONS,
    PUBLISHED,
    RECOMMENDED_STRENGTH,
    activation_bytes,
    colorize,
    load_model,
    precision_plan,
    resolve_precision,
    snap_size,
)
from .models import FOLDER_NAME, ModelCache, cache_key, checkpoint_files, download_progress, locate_checkpoint, model_choices
from .schema import COMBO, Input, NodeSpec, Output

log = logging.getLogger("ddcolor")

# The model (wrapped in a ComfyUI ModelPatcher) used by the last prompt.
_LOADED = ModelCache()

DESCRIPTION = (
    "Colorizes black-and-white photos with DDColor (ICCV 2023). The photo keeps its own size and "
    "lightness; the network predicts colors at the working size and they are scaled back up. "
    "Color input is colorized from its lightness; an alpha channel passes through. Batches (video "
    "frames) run in chunks with a progress bar and can be cancelled between chunks; temporal keeps the "
    "colors of a clip's frames steady over time."
)
TOOLTIPS = {
    "image": "Photos to colorize: any size, grayscale or color (only the lightness is used).",
    "precision": (
        "fp16: half the memory, fastest on NVIDIA GPUs; sensitive layers stay fp32, so colors match fp32 closely. "
        "bf16: coarser than fp16, a little further from fp32's colors. fp32: the reference. auto: the fastest faithful "
        "choice for your device. On a CPU with bf16 units (AMX or AVX-512 bf16), fp16 and auto run as mixed (bf16 only "
        "in the encoder's heaviest layers, as faithful as fp16) and bf16 as bf16; on a CPU without them (AVX2 only), "
        "fp16, bf16 and auto all run as fp32. On Apple GPUs and on NVIDIA GPUs before Ampere (RTX 20, GTX, T4, V100) "
        "bf16 runs as fp16. The log says which precision runs."
    ),
    "size": (
        "Working resolution the network sees (a square, multiple of 32); the output keeps the input's size. "
        "Portraits 460-680, buildings and wide scenes 960-1280. Larger means finer color detail, more memory "
        "and time. Values that are not a multiple of 32 are rounded."
    ),
    "model": (
        "Checkpoint. The four published DDColor models are downloaded into models/ddcolor on first use; "
        "other checkpoint files found in models/ddcolor are listed too. "
        + "; ".join(f"{entry.name}: {entry.description}" for entry in PUBLISHED.values())
        + "."
    ),
    "temporal": (
        "Flicker removal for video. Use it only when the batch is the consecutive frames of one clip "
        "(Load Video, VideoHelperSuite): colors are carried along the motion from frame to frame, so they "
        "stop flickering; scene cuts, new objects and occlusions fall back to the frame's own colors. "
        "0 (default): every image on its own, for unrelated photos. The video preset uses "
        + f"{RECOMMENDED_STRENGTH:g}; higher is steadier, lower follows each frame more closely. "
        "The whole batch is treated as one clip, in order."
    ),
    "output": "The colorized photos, same size and batch as the input (RGB, or RGBA when the input has alpha).",
}


def colorize_images(image, precision, size, model=DEFAULT_MODEL, temporal=0.0):
    # model and temporal have defaults: prompts saved before those widgets existed leave them out.
    import comfy.model_management as mm
    import comfy.utils

    patcher, working_size = prepare_model(model, precision, size)
    bar = comfy.utils.ProgressBar(image.shape[0])

    def progress(done: int, total: int) -> None:
        bar.update_absolute(done, total)
        mm.throw_exception_if_processing_interrupted()

    def run():
        # The whole batch is one call, so a clip's temporal state spans it; the
        # engine writes into one output tensor and moves only a chunk at a time.
        return colorize(patcher.model, image, size=working_size, progress=progress, temporal=temporal)

    try:
        colored = run()
        retry = False
    except MemoryError:
        if mm.is_device_cpu(patcher.load_device):
            raise
        retry = True
    # Retried outside the except block: the traceback held there keeps the failed
    # attempt's output (as large as the whole batch) alive.
    if retry:
        log.warning("ddcolor: out of memory; unloading other models and retrying")
        _unload_other_models(patcher)
        colored = run()
    # A no-op when the engine already wrote to the intermediate device (a CPU input):
    # no second copy of a long clip.
    return (colored.to(mm.intermediate_device()),)


def model_inputs(*, model_optional: bool = False) -> list[Input]:
    """precision, size and model: the widgets every DDColor node has, in this order."""
    return [
        Input("precision", COMBO, TOOLTIPS["precision"], choices=PRECISIONS, default="fp16"),
        # No control_after_generate: it would add a hidden widget value.
        Input("size", "INT", TOOLTIPS["size"], default=512, min=256, max=2048, step=32),
        Input("model", COMBO, TOOLTIPS["model"], choices=model_choices(checkpoint_files()), default=DEFAULT_MODEL,
              optional=model_optional),
    ]


def temporal_input(default: float, tooltip: str, *, optional: bool = False) -> Input:
    return Input("temporal", "FLOAT", tooltip, default=default, min=0.0, max=1.0, step=0.05, optional=optional)


NODE = NodeSpec(
    node_id="DDColor-ddcolorize",
    display_name="DDColor Colorize",
    category="image/color",
    description=DESCRIPTION,
    inputs=lambda: [
        Input("image", "IMAGE", TOOLTIPS["image"]),
        # model and temporal are optional (and last), so prompts and workflows saved
        # before they existed (two or three widget values) load and run unchanged.
        *model_inputs(model_optional=True),
        temporal_input(0.0, TOOLTIPS["temporal"], optional=True),
    ],
    outputs=[Output("image", "IMAGE", TOOLTIPS["output"])],
    function=colorize_images,
)


def prepare_model(choice: str, precision: str, size: int):
    """The loaded model's ModelPatcher, on its device with room for one image's
    activations, and the working size rounded to the grid. Raises ComfyUI's
    interrupt first if Cancel was pressed before the node started."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()
    # ComfyUI checks only min/max: 460 from the API or a JSON file arrives as 460.
    working_size = snap_size(size)
    patcher = _load(choice, precision)
    # Frees other models' VRAM for the weights plus one image's activations.
    # A full load: DDColor's plain layers cannot run partly offloaded.
    mm.load_models_gpu([patcher], memory_required=activation_bytes(patcher.model, working_size), force_full_load=True)
    return patcher, working_size


def _load(choice: str, precision: str):
    """The ModelPatcher for ``choice`` in ``precision``, reusing the one loaded last if it matches."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import folder_paths

    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    # Resolve for the device the model runs on, not the one it is built on.
    resolved, reason = resolve_precision(precision, load_device)
    path = locate_checkpoint(choice, folder_paths.get_folder_paths(FOLDER_NAME), download_progress())

    def build():
        if reason:  # said once per load, not on every prompt that reuses the model
            log.warning("ddcolor: %s", reason)
        start = time.perf_counter()
        model = load_model(path, device=offload_device, precision=resolved, strict_precision=True)
        log.info(
            "ddcolor: loaded %s (%s, %s) for %s in %.1f s",
            path.name, model.config.variant, precision_plan(model).precision, load_device, time.perf_counter() - start,
        )
        return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)

    return _LOADED.get(cache_key(path, resolved, load_device), build)


def _unload_other_models(patcher) -> None:
    """Push every other model off our device (they reload when next needed), keeping ours."""
    import comfy.model_management as mm

    # keep_loaded compares LoadedModel entries, not patchers.
    mm.free_memory(float("inf"), patcher.load_device, keep_loaded=[mm.LoadedModel(patcher)])
    mm.soft_empty_cache()
