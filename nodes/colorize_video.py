"""The ``DDColor-colorize-video`` node: a clip in, the colorized clip out, streamed frame by frame.

A thin adapter over ``ddcolor.video.colorize_video``, the engine the command
line runs: frames are decoded, colorized and encoded one at a time, so memory
does not grow with the clip's length. The result is an H.264 MP4 in ComfyUI's
temp folder (written under a hidden name and renamed when complete), handed on
as the ``VIDEO`` Save Video and other video nodes take. ComfyUI modules are
imported when the node runs, and ``ddcolor.video`` imports PyAV only when a
clip is opened, so importing the pack stays light.
"""

from __future__ import annotations

import io
import logging
import uuid
from pathlib import Path

from ..ddcolor import RECOMMENDED_STRENGTH
from ..ddcolor.video import DEFAULT_CRF
from .colorize import model_inputs, prepare_model, temporal_input
from .schema import Input, NodeSpec, Output

log = logging.getLogger("ddcolor")

TEMP_SUBFOLDER = "ddcolor"

DESCRIPTION = (
    "Colorizes a black-and-white video with DDColor, frame by frame: each frame is decoded, colorized and "
    "encoded before the next is read, so memory stays the same for a clip of seconds or a feature film. "
    "The colorized clip keeps the source's frames, their timing, size (a phone video's rotation applied) and "
    "every audio track; colors are kept steady over time across the whole clip. Cancel stops within one model call "
    "(one frame on a CPU) and leaves no file. Connect Load Video (or Create Video) to its input and Save Video to its output."
)
VIDEO_TOOLTIPS = {
    "video": (
        "The clip to colorize: Load Video's output (streamed from the file, never loaded whole), or Create "
        "Video's (frames already in memory, with their sound and frame rate)."
    ),
    "temporal": (
        "Flicker removal: colors are carried along the motion from frame to frame through the whole clip, so "
        f"they stop flickering; scene cuts, new objects and occlusions fall back to the frame's own colors. "
        f"{RECOMMENDED_STRENGTH:g} (default) is recommended; higher is steadier, lower follows each frame more "
        "closely, 0 colors every frame on its own."
    ),
    "crf": (
        "H.264 quality of the colorized clip: 0 lossless, 18 (default) visually lossless, 23 smaller files. "
        "Save Video copies this video as it is, without encoding it again."
    ),
    "output": (
        "The colorized clip (H.264 MP4 in ComfyUI's temp folder, with the source's audio): connect Save Video "
        "to keep it in the output folder."
    ),
}


def colorize_clip(video, precision, size, model, temporal, crf):
    import comfy.model_management as mm
    import comfy.utils
    import folder_paths
    from comfy_api.input_impl import VideoFromFile

    from ..ddcolor.video import VideoError, colorize_video

    patcher, working_size = prepare_model(model, precision, size)
    reader = clip_reader(video)
    bar = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        total = max(total or 0, done)  # an estimate from the file's header, which a file may exceed
        if bar is None:
            bar = comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)
        mm.throw_exception_if_processing_interrupted()

    target = Path(folder_paths.get_temp_directory()) / TEMP_SUBFOLDER / f"video_{uuid.uuid4().hex}.mp4"
    try:
        result = colorize_video(patcher.model, reader, target, size=working_size, temporal=temporal, crf=crf, progress=progress)
    except VideoError as e:
        raise VideoError(f"DDColor Colorize Video could not colorize the input video: {e}. Nothing was written.") from None
    log.info(
        "ddcolor: colorized %d frames in %.1f s (%.2f frames/s, model %.1f s); %s",
        result.frames, result.seconds, result.frames / result.seconds, result.model_seconds, "; ".join(result.notes),
    )
    return (VideoFromFile(str(target)),)


NODE = NodeSpec(
    node_id="DDColor-colorize-video",
    display_name="DDColor Colorize Video",
    category="image/color",
    description=DESCRIPTION,
    inputs=lambda: [
        Input("video", "VIDEO", VIDEO_TOOLTIPS["video"]),
        *model_inputs(),
        temporal_input(RECOMMENDED_STRENGTH, VIDEO_TOOLTIPS["temporal"]),
        Input("crf", "INT", VIDEO_TOOLTIPS["crf"], default=DEFAULT_CRF, min=0, max=51, step=1),
    ],
    outputs=[Output("video", "VIDEO", VIDEO_TOOLTIPS["output"])],
    function=colorize_clip,
)


def clip_reader(video):
    """A ``ddcolor.video`` reader for ComfyUI's VIDEO: the frames of one made from
    components (Create Video), otherwise its file (or the file's bytes), streamed."""
    from comfy_api.input_impl import VideoFromComponents

    from ..ddcolor.video import ArrayReader, VideoReader

    if isinstance(video, VideoFromComponents):
        parts = video.get_components()
        sound = parts.audio
        waveform = sound["waveform"][0] if sound is not None else None  # AUDIO is a batch: (1, channels, samples)
        return ArrayReader(parts.images, parts.frame_rate, waveform, sound["sample_rate"] if sound is not None else None)
    source = video.get_stream_source()
    return VideoReader(source.getvalue() if isinstance(source, io.BytesIO) else Path(source))
