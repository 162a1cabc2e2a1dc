"""DDColor image colorization (ICCV 2023) in plain PyTorch: exact, fp16-safe, memory-lean.

Public interface::

    model = ddcolor.load_model("ddcolor_modelscope", device="cuda", precision="fp16")
    colored = ddcolor.colorize(model, images, size=512)   # (B, H, W, 3) in [0, 1]
    state = ddcolor.TemporalState()                        # video: one per clip
    for chunk in clip:                                     # consecutive frames
        colored = ddcolor.colorize(model, chunk, temporal=ddcolor.temporal.RECOMMENDED_STRENGTH, state=state)

    import ddcolor.video                                   # a video file, streamed (PyAV)
    ddcolor.video.colorize_video(model, ddcolor.video.VideoReader("film.mp4"), Path("film_color.mp4"), size=512, temporal=0.9)
"""

from .checkpoint import PUBLISHED, CheckpointError, DownloadError, download
from .loading import load_model
from .model import SIZE_MULTIPLE, DDColor, DDColorConfig
from .pipeline import activation_bytes, colorize, snap_size
from .precision import PRECISIONS, fp32_modules
from .temporal import TemporalState

__all__ = [
    "activation_bytes",
    "PUBLISHED",
    "PRECISIONS",
    "SIZE_MULTIPLE",
    "CheckpointError",
    "DDColor",
    "DDColorConfig",
    "DownloadError",
    "download",
    "colorize",
    "fp32_modules",
    "load_model",
    "snap_size",
    "TemporalState",
]
