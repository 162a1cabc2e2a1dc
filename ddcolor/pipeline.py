"""``colorize``: images in ComfyUI's layout in, colorized images out.

Per image, as the original pipeline does: keep the photo's own L channel, feed
the network the lightness of the photo resized to ``size x size`` as gray RGB,
predict ab, resize ab back and recombine. Two deliberate differences: ab is
resized bilinearly (the original uses nearest, which leaves blocky chroma
edges), and resizing is antialiased.

Only the working-size steps see a whole image at once. The full-resolution
steps (reading the pixels, lightness, resizing, Lab -> RGB, storing the
result) run on bands of rows, so a 150-megapixel scan needs no more working
memory than a photo: beyond the input and the output, one band's temporaries
(``BAND_PIXELS``) and at most three rows of ``size`` floats per image row.
Both resizes go one axis at a time with ``F.interpolate``'s own weights (the
height over whole columns, then each band across), which is how it computes
an antialiased resize itself, so bands change nothing but rounding.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .color import gray_rgb_from_lightness, lab_to_rgb, rgb_to_lightness
from .model import SIZE_MULTIPLE, DDColor
from .precision import precision_plan
from .temporal import TemporalState, check_strength, stabilize, working_copy

log = logging.getLogger("ddcolor")

# Lab's a/b range; the network can overshoot it (values near -180 occur).
AB_MIN, AB_MAX = -128.0, 127.0
# Peak activation memory of one image: per pixel of the working resolution
# and byte of the compute dtype, plus a fixed part for the chunked FP32
# temporaries, which is the chunk budget (layers.CHUNK_ELEMENTS) that small
# images fill. They lie above every measured peak of live tensors (DDColor-L,
# fp32 and fp16, 512 to 1280: benchmarks/bench_engine.py --live, RESULTS.md
# "Weights and live activations").
ACTIVATION_BYTES_PER_PIXEL_PER_BYTE = 100
ACTIVATION_FIXED_BYTES = 96 << 20
# Pixels (of all the images of a chunk) per band of rows in the full-resolution
# steps. Their temporaries take about 100 bytes per pixel of a band (~100 MiB);
# bands much smaller than this only add per-call overhead.
BAND_PIXELS = 1 << 20
# What colorize returns: float in [0, 1], or 8-bit (a quarter of the memory).
OUTPUT_DTYPES = (torch.float32, torch.uint8)
# Integer inputs, read as fractions of their largest value.
INTEGER_DTYPES = (torch.uint8, torch.uint16)


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
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Colorize ``images`` (B, H, W, C) float in [0, 1] (or uint8 / uint16), C = 1, 3 or 4.

    Returns (B, H, W, 3), or (B, H, W, 4) with the alpha channel passed through,
    in ``dtype``: float32 in [0, 1], or uint8 (rounded to nearest), which takes a
    quarter of the memory. Apart from the result, memory does not grow with the
    images' resolution (see the module's docstring).
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
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.uint8; got {dtype}")
    strength = check_strength(temporal)
    size = snap_size(size)
    working = working_copy(state, images.shape[1], images.shape[2], size) if strength else None
    device = next(model.parameters()).device
    total = images.shape[0]
    channels = 4 if images.shape[-1] == 4 else 3
    out = torch.empty(*images.shape[:3], channels, dtype=dtype, device=images.device)
    chunk = batch_size or default_batch_size(model, size)
    done = 0
    with torch.inference_mode():
        while done < total:
            n = min(chunk, total - done)
            try:
                advanced = _colorize_chunk(model, images[done : done + n], out[done : done + n], size, device, strength, working)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                _release_cached_memory(device)
                if n == 1:
                    raise MemoryError(
                        f"out of memory colorizing one {tuple(images.shape[1:3])} image at size {size} "
                        f"({precision_plan(model).precision}) on {device}; lower size, use fp16, or free memory used by other models"
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
    if not images.is_floating_point() and images.dtype not in INTEGER_DTYPES:
        raise TypeError(f"images must be float in [0, 1], uint8 or uint16; got {images.dtype}")
    if images.is_floating_point() and not all(torch.isfinite(images[:, rows]).all() for rows in _row_bands(images)):
        raise ValueError("images contain NaN or Inf values; check what produced them (a decoder or math node upstream)")


def _colorize_chunk(
    model: DDColor, images: Tensor, out: Tensor, size: int, device: torch.device, strength: float, state: TemporalState | None
) -> TemporalState | None:
    """Colorize ``images`` into ``out``; returns the temporal state after them (None when not stabilizing)."""
    height, width = images.shape[1:3]
    small_lightness = rgb_to_lightness(_working_rgb(images, size, device))
    ab = model(gray_rgb_from_lightness(small_lightness)).float().clamp(AB_MIN, AB_MAX)
    if state is not None:
        ab, state = stabilize(small_lightness, ab, state, strength)
    ab_rows = _resize(ab, height, size)
    for rows in _row_bands(images):
        x = _unit_float(images[:, rows], device)
        lab = torch.cat((rgb_to_lightness(_rgb(x)), _resize(ab_rows[:, :, rows], x.shape[-2], width)), dim=1)
        result = lab_to_rgb(lab)
        if x.shape[1] == 4:
            result = torch.cat((result, x[:, 3:]), dim=1)
        out[:, rows] = _as_dtype(result.permute(0, 2, 3, 1), out.dtype)
    return state


def _working_rgb(images: Tensor, size: int, device: torch.device) -> Tensor:
    """The images' RGB resized to ``size x size``, (B, 3, size, size) float32 on ``device``:
    each band resized across to ``size`` columns, then all of them down to ``size`` rows."""
    batch, height = images.shape[:2]
    color = 1 if images.shape[-1] == 1 else 3
    across = torch.empty(batch, color, height, size, device=device)
    for rows in _row_bands(images):
        band = _unit_float(images[:, rows, :, :color], device)
        across[:, :, rows] = _resize(band, band.shape[-2], size)
    return _rgb(_resize(across, size, size))


def _row_bands(images: Tensor) -> list[slice]:
    """Slices of rows of ``images`` (B, H, W, C) holding about ``BAND_PIXELS`` pixels each (at least one row)."""
    batch, height, width = images.shape[:3]
    rows = max(1, BAND_PIXELS // (batch * width))
    return [slice(start, min(start + rows, height)) for start in range(0, height, rows)]


def _unit_float(pixels: Tensor, device: torch.device) -> Tensor:
    """(B, h, W, C) float or uint8/uint16 pixels -> (B, C, h, W) float32 in [0, 1] on ``device``."""
    x = pixels.to(device)
    x = x.float().clamp(0, 1) if x.is_floating_point() else x.float().div_(torch.iinfo(pixels.dtype).max)
    return x.permute(0, 3, 1, 2)


def _rgb(x: Tensor) -> Tensor:
    """The RGB channels of (B, C, h, w) with C = 1 (gray, repeated), 3 or 4."""
    return x[:, :3] if x.shape[1] >= 3 else x.expand(-1, 3, -1, -1)


def _resize(x: Tensor, height: int, width: int) -> Tensor:
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def _as_dtype(values: Tensor, dtype: torch.dtype) -> Tensor:
    """Values in [0, 1] as ``dtype``; uint8 rounds to nearest."""
    return values.mul(255).add_(0.5).to(dtype) if dtype == torch.uint8 else values


def activation_bytes(model: DDColor | None, size: int, *, element_size: int | None = None) -> int:
    """Working memory one image needs at ``size`` (an upper estimate), beyond the weights: for ``model``
    in its precision, or, with no model at hand, for weights of ``element_size`` bytes (4: fp32)."""
    element = element_size or model.decoder.compute_dtype.itemsize
    return ACTIVATION_BYTES_PER_PIXEL_PER_BYTE * element * size * size + ACTIVATION_FIXED_BYTES


def default_batch_size(model: DDColor, size: int) -> int:
    """Images per chunk: on a CUDA (or ROCm) GPU what half its free memory holds, elsewhere 1 (a CPU gains nothing from batching)."""
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
