"""The smallest stand-ins for the parts of ComfyUI the node calls, recording what it asks of them.

``install(monkeypatch, models_dir)`` puts modules named ``comfy``,
``comfy.model_management``, ``comfy.utils``, ``comfy.model_patcher``,
``comfy_api.input_impl`` (the VIDEO classes), ``comfy_api.util`` and
``folder_paths`` into ``sys.modules`` (monkeypatch removes them after the
test), so the nodes run their real code paths in CI without a ComfyUI
checkout. ComfyUI's temp and output folders are ``models_dir``'s grandparent's ``temp/`` and ``output/``. Each stand-in does what the node relies on and no more;
tests/test_e2e_comfyui.py checks the same behaviour against the real ComfyUI.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch


class InterruptProcessingException(Exception):
    """ComfyUI's exception for Cancel (comfy.model_management)."""


@dataclass
class VideoComponents:
    """comfy_api.util.VideoComponents: frames (N, H, W, 3) float, their rate, AUDIO or None."""

    images: torch.Tensor
    frame_rate: Fraction
    audio: dict | None = None
    metadata: dict | None = None


class VideoFromFile:
    """comfy_api.input_impl.VideoFromFile (Load Video's output): a path or a BytesIO, read when asked."""

    def __init__(self, file: str | io.BytesIO):
        self._file = file

    def get_stream_source(self) -> str | io.BytesIO:
        if isinstance(self._file, io.BytesIO):
            self._file.seek(0)
        return self._file


class VideoFromComponents:
    """comfy_api.input_impl.VideoFromComponents (Create Video's output): frames, sound and rate in memory."""

    def __init__(self, components: VideoComponents):
        self._components = components

    def get_components(self) -> VideoComponents:
        return VideoComponents(self._components.images, self._components.frame_rate, self._components.audio)


@dataclass
class ComfyRecord:
    """What the node asked of ComfyUI, in order, and the knobs a test turns."""

    calls: list[tuple] = field(default_factory=list)  # (function name, details...)
    progress: list[tuple[int, int]] = field(default_factory=list)  # every ProgressBar.update_absolute
    bars: list[int] = field(default_factory=list)  # totals of the ProgressBars made
    patchers: list[object] = field(default_factory=list)  # every ModelPatcher made (one per model load)
    interrupted: bool = False
    device_is_cpu: bool = True  # False: the node treats its device as a GPU (the out-of-memory retry)
    on_progress: Callable[[int, int], None] | None = None  # runs after each progress update

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


def install(monkeypatch, models_dir: Path) -> ComfyRecord:
    record = ComfyRecord()
    cpu = torch.device("cpu")

    mm = ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException

    def throw_exception_if_processing_interrupted():
        if record.interrupted:
            record.interrupted = False  # ComfyUI clears the flag as it raises
            raise InterruptProcessingException()

    def interrupt_current_processing(value=True):
        record.interrupted = value

    def processing_interrupted():
        return record.interrupted

    class LoadedModel:
        def __init__(self, model):
            self.model = model

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False):
        record.calls.append(("load_models_gpu", tuple(models), memory_required, force_full_load))

    def free_memory(memory_required, device, keep_loaded=()):
        record.calls.append(("free_memory", memory_required, device, tuple(m.model for m in keep_loaded)))

    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.interrupt_current_processing = interrupt_current_processing
    mm.processing_interrupted = processing_interrupted
    mm.unload_all_models = lambda: record.calls.append(("unload_all_models",))
    mm.LoadedModel = LoadedModel
    mm.load_models_gpu = load_models_gpu
    mm.free_memory = free_memory
    mm.soft_empty_cache = lambda force=False: record.calls.append(("soft_empty_cache",))
    mm.get_torch_device = lambda: cpu
    mm.unet_offload_device = lambda: cpu
    mm.intermediate_device = lambda: cpu
    mm.is_device_cpu = lambda device: record.device_is_cpu

    utils = ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total):
            self.total = total
            record.bars.append(total)

        def update_absolute(self, value, total=None, preview=None):
            throw_exception_if_processing_interrupted()  # as ComfyUI's progress hook does first
            record.progress.append((value, total if total is not None else self.total))
            if record.on_progress is not None:
                record.on_progress(value, total)

    utils.ProgressBar = ProgressBar

    model_patcher = ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            record.patchers.append(self)

    model_patcher.ModelPatcher = ModelPatcher

    folder_paths = ModuleType("folder_paths")
    folder_paths.models_dir = str(models_dir.parent)
    folder_paths.get_temp_directory = lambda: str(models_dir.parent.parent / "temp")
    folder_paths.get_output_directory = lambda: str(models_dir.parent.parent / "output")
    folders: dict[str, list[str]] = {"ddcolor": [str(models_dir)]}
    folder_paths.get_folder_paths = lambda name: list(folders.get(name, []))
    folder_paths.add_model_folder_path = lambda name, path, is_default=False: folders.setdefault(name, []).insert(0, path)
    folder_paths.get_filename_list = lambda name: sorted(
        str(p.relative_to(models_dir)) for p in models_dir.rglob("*") if p.is_file()
    )

    comfy = ModuleType("comfy")
    comfy.__path__ = []  # a package, so `import comfy.utils` resolves the submodules below
    comfy.model_management, comfy.utils, comfy.model_patcher = mm, utils, model_patcher

    input_impl = ModuleType("comfy_api.input_impl")
    input_impl.VideoFromFile, input_impl.VideoFromComponents = VideoFromFile, VideoFromComponents
    api_util = ModuleType("comfy_api.util")
    api_util.VideoComponents = VideoComponents
    comfy_api = ModuleType("comfy_api")
    comfy_api.__path__ = []
    comfy_api.input_impl, comfy_api.util = input_impl, api_util
    for name, module in {
        "comfy": comfy,
        "comfy.model_management": mm,
        "comfy.utils": utils,
        "comfy.model_patcher": model_patcher,
        "comfy_api": comfy_api,
        "comfy_api.input_impl": input_impl,
        "comfy_api.util": api_util,
        "folder_paths": folder_paths,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return record
