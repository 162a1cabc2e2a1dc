"""``colorize``: images in ComfyUI's layout in, colorized images out.

Per image, as the original pipeline does: keep the photo's own L channel, feed
the network the lightness of the photo resized to ``size x size`` as gray RGB,
predict ab, resize ab back and recombine. Two deliberate differences: ab is
resized bilinearly (the original uses nearest, which leaves blocky chroma
edges), and resizing is antialiased.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .color import gray_rgb_from_lightness, lab_to_rgb, rgb_to_lab
from .model import SIZE_MULTIPLE, DDColor
from .temporal import TemporalState, check_strength, stabilize, working_copy

log = logging.getLogger("ddcolor")

# Lab's a/b range; the network can overshoot it (values near -180 occur).
AB_MIN, AB_MAX = -128.0, 127.0
# Peak activation memory of one image: per pixel of the working resolution
# and byte of the compute dtype, plus a fixed part for the chunked FP32
# temporaries. Measured peaks of live tensors (DDColor-L, CPU profiler,
# benchmarks/bench_engine.py --live): fp32 159 / 408 / 633 MiB and fp16
# 82 / 228 / 357 MiB at 512 / 1024 / 1280;
# the fixed part is the chunk budget (layers.CHUNK_ELEMENTS) that small
# images fill. These constants overestimate by 10-80%.
ACTIVATION_BYTES_PER_PIXEL_PER_BYTE = 100
ACTIVATION_FIXED_BYTES = 96 << 20


def snap_size(size: int) -> int:
    """Round a working resolution to the nearest multiple of 32 (at least 32), saying so."""
    snapped = max(SIZE_MULTIPLE, int(round(size / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    if snapped != size:
        log.warning("ddcolor: size %s is not a multiple of %d; using %d", size, SIZE_MULTIPLE, snapped)
    return snapped


def colorize(
    model: DDColor,
    images: Tensor,
    *,
    size: int = 512,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    temporal: float = 0.0,
    state: TemporalState | None = None,
) -> Tensor:
    """Colorize ``images`` (B, H, W, C) float in [0, 1], C = 1, 3 or 4.

    Returns (B, H, W, 3), or (B, H, W, 4) with the alpha channel passed through.
    Color input is treated through its lightness. ``size`` is the network's
    working resolution (rounded to a multiple of 32). Images run in chunks of
    ``batch_size`` (default: what fits the device); a chunk that runs out of
    memory is retried in halves. ``progress(done, total)`` is called after
    each chunk and may raise to stop the run.

    ``temporal`` (0 to 1) stabilizes video: the images are consecutive frames
    of one clip and their colors are made consistent over time
    (``ddcolor.temporal``; ``ddcolor.temporal.RECOMMENDED_STRENGTH`` suits
    most video). 0, the default, colorizes each image on its own and ignores
    ``state``. To send a clip in pieces, make one ``TemporalState()`` per clip
    and pass it to every call in order: the result is the same as one call
    with the whole clip. It is updated when the call returns, never by a call
    that fails.
    """
    _check_images(images)
    strength = check_strength(temporal)
    size = snap_size(size)
    working = working_copy(state, images.shape[1], images.shape[2], size) if strength else None
    device = next(model.parameters()).device
    total = images.shape[0]
    channels = 4 if images.shape[-1] == 4 else 3
    out = torch.empty(*images.shape[:3], channels, dtype=torch.float32, device=images.device)
    chunk = batch_size or default_batch_size(model, size)
    done = 0
    with torch.inference_mode():
        while done < total:
            n = min(chunk, total - done)
            try:
                out[done : done + n], advanced = _colorize_chunk(model, images[done : done + n], size, device, strength, working)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                _release_cached_memory(device)
                if n == 1:
                    raise MemoryError(
                        f"out of memory colorizing one {tuple(images.shape[1:3])} image at size {size} "
                        f"({model.precision}) on {device}; lower size, use fp16, or free memory used by other models"
                    ) from e
                chunk = n // 2
                log.warning("ddcolor: out of memory with %d images at once; retrying %d at a time", n, chunk)
                continue
            done += n
            working = advanced
            if progress is not None:
                progress(done, total)
    if working is not None and state is not None:
        state._assign(working)
    return out


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor shaped (B, H, W, C); got {type(images).__name__}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be shaped (B, H, W, C) with C = 1, 3 or 4; got {tuple(images.shape)}")
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"images have no pixels: {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be float in [0, 1]; got {images.dtype} (divide 8-bit images by 255)")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf values; check what produced them (a decoder or math node upstream)")


def _colorize_chunk(
    model: DDColor, images: Tensor, size: int, device: torch.device, strength: float, state: TemporalState | None
) -> tuple[Tensor, TemporalState | None]:
    """Colorized images, and the temporal state after them (None when not stabilizing)."""
    x = images.to(device, torch.float32).permute(0, 3, 1, 2).clamp(0, 1)
    height, width = x.shape[-2:]
    rgb = x[:, :3] if x.shape[1] >= 3 else x.expand(-1, 3, -1, -1)
    lightness = rgb_to_lab(rgb)[:, :1]

    small = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    small_lightness = rgb_to_lab(small)[:, :1]
    ab = model(gray_rgb_from_lightness(small_lightness)).float().clamp(AB_MIN, AB_MAX)
    if state is not None:
        ab, state = stabilize(small_lightness, ab, state, strength)
    ab = F.interpolate(ab, size=(height, width), mode="bilinear", align_corners=False, antialias=True)

    result = lab_to_rgb(torch.cat((lightness, ab), dim=1))
    if x.shape[1] == 4:
        result = torch.cat((result, x[:, 3:]), dim=1)
    return result.permute(0, 2, 3, 1).to(images.device), state


def activation_bytes(model: DDColor, size: int) -> int:
    """Working memory one image needs at ``size`` (an upper estimate), beyond the weights."""
    element = model.decoder.last_shuf.conv[0].weight.element_size()
    return ACTIVATION_BYTES_PER_PIXEL_PER_BYTE * element * size * size + ACTIVATION_FIXED_BYTES


def default_batch_size(model: DDColor, size: int) -> int:
    """Images per chunk: 1 on a CPU (batching buys nothing there), else what half the free memory holds."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(0.5 * free // activation_bytes(model, size)))


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
