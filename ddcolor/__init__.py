"""DDColor image colorization (ICCV 2023) in plain PyTorch: exact, fp16-safe, memory-lean.

Public interface::

    model = ddcolor.load_model("ddcolor_modelscope", device="cuda", precision="fp16")
    colored = ddcolor.colorize(model, images, size=512)   # (B, H, W, 3) in [0, 1]
    state = ddcolor.TemporalState()                        # video: one per clip
    for chunk in clip:                                     # consecutive frames
        colored = ddcolor.colorize(model, chunk, temporal=ddcolor.RECOMMENDED_STRENGTH, state=state)

    import ddcolor.video                                   # a video file, streamed (PyAV)
    ddcolor.video.colorize_video(model, ddcolor.video.VideoReader("film.mp4"), Path("film_color.mp4"), size=512, temporal=0.9)

What is public, and the rule the application keeps: the names in ``__all__``
below, and three modules imported on their own because they pull in more or
serve one purpose: ``ddcolor.video`` (video files, PyAV), ``ddcolor.finetune``
(training; its ``__all__``) and ``ddcolor.output`` (8-bit pixels and atomic
file writes). The command line (``ddcolor.cli``) and the ComfyUI nodes
(``nodes/``) import nothing else from the library, and the library never
imports them; tests/test_imports.py reads every import and checks both, and
that no module imports another in a cycle.
"""

from .checkpoint import (
    CHECKPOINT_EXTENSIONS,
    DEFAULT_MODEL,
    PUBLISHED,
    SOURCES,
    CheckpointError,
    DownloadError,
    default_models_dir,
    download,
    download_sources,
    downloads_off,
    find_checkpoint,
    published_entry,
)
from .loading import load_model
from .model import SIZE_MULTIPLE, DDColor, DDColorConfig
from .pipeline import activation_bytes, colorize, snap_size
from .precision import (
    PRECISIONS,
    TRAINING_PRECISIONS,
    PrecisionPlan,
    fast_precisions,
    fp32_modules,
    precision_plan,
    resolve_precision,
)
from .temporal import RECOMMENDED_STRENGTH, TemporalState

__all__ = [
    "activation_bytes",
    "CHECKPOINT_EXTENSIONS",
    "DEFAULT_MODEL",
    "PUBLISHED",
    "PRECISIONS",
    "RECOMMENDED_STRENGTH",
    "SIZE_MULTIPLE",
    "SOURCES",
    "TRAINING_PRECISIONS",
    "CheckpointError",
    "DDColor",
    "DDColorConfig",
    "DownloadError",
    "colorize",
    "default_models_dir",
    "download",
    "download_sources",
    "downloads_off",
    "fast_precisions",
    "find_checkpoint",
    "fp32_modules",
    "load_model",
    "precision_plan",
    "PrecisionPlan",
    "published_entry",
    "resolve_precision",
    "snap_size",
    "TemporalState",
]

# Modules the application may import besides this package's names (tests/test_imports.py).
PUBLIC_MODULES = ("ddcolor.video", "ddcolor.finetune", "ddcolor.output")
