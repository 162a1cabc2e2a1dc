"""Image files in and out for the command line: every Pillow mode in, PNG/JPEG out, atomically.

``read_pixels`` returns (H, W, C) with C = 1 (gray), 3 (RGB) or 4 (RGBA), the
layout ``ddcolor.colorize`` takes, with EXIF orientation applied, at the bit
depth of the file: uint8, uint16 (16-bit gray) or float32 (32-bit gray), so
that a large scan is not widened to float as a whole (``ddcolor.colorize``
converts it band by band). ``read_image`` is the same as float32 in [0, 1].
Palette, CMYK, YCbCr, LAB and HSV files go through RGB; any alpha (RGBA, LA,
PA, palette transparency, premultiplied) comes back as a fourth channel.

Pillow's decompression-bomb guard stays on: a file of more than its 89.5
megapixels is refused, with a message saying how to allow it: set
``DDCOLOR_MAX_MEGAPIXELS`` to the largest size to accept.

``write_image`` never leaves a half-written file at the target path: it writes
through ``ddcolor.output.atomic_path`` (a hidden temporary file in the same
folder, renamed over the target when complete).
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..output import TEMP_SUFFIX, atomic_path, to_uint8

# File name extensions of the formats we write, and what Pillow calls them.
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
# zlib's run-length strategy on PNG's filtered rows: for photos as small as
# Pillow's default (level 6) and several times faster, which keeps encoding
# small next to the model (benchmarks/bench_png.py; RESULTS.md, "Writing PNG").
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}
# Raises Pillow's decompression-bomb limit, in megapixels, for scans larger than its default.
MAX_MEGAPIXELS_VARIABLE = "DDCOLOR_MAX_MEGAPIXELS"


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message names the file and the reason."""


def image_extensions() -> set[str]:
    """Lower-case extensions (with dot) of every format this Pillow can open."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` as (H, W, C) float32 in [0, 1], C = 1, 3 or 4 (alpha last)."""
    pixels = read_pixels(path)
    if pixels.dtype == np.float32:
        return pixels
    return pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` as (H, W, C), C = 1, 3 or 4 (alpha last): uint8, uint16, or float32 in [0, 1].

    The array may be read-only (it shares Pillow's decoded bytes).
    """
    path = Path(path)
    _apply_pixel_limit()
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice that; past the limit is past it.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_array(image)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image format Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(
            f"{path}: {e} To colorize a scan this large on purpose, set the environment variable "
            f"{MAX_MEGAPIXELS_VARIABLE} to its size in megapixels or more (e.g. {MAX_MEGAPIXELS_VARIABLE}=200)"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data
        raise ImageReadError(f"{path}: cannot decode ({e})") from None


def _apply_pixel_limit() -> None:
    """Set Pillow's decompression-bomb limit from ``DDCOLOR_MAX_MEGAPIXELS`` when it is set."""
    value = os.environ.get(MAX_MEGAPIXELS_VARIABLE)
    if not value:
        return
    try:
        megapixels = float(value)
    except ValueError:
        megapixels = 0.0
    if not megapixels > 0:
        raise ImageReadError(f"{MAX_MEGAPIXELS_VARIABLE}={value}: use a number of megapixels, e.g. 200")
    Image.MAX_IMAGE_PIXELS = int(megapixels * 1e6)


def _to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_bit_depth_gray(image)
    if mode == "1":
        image = image.convert("L")
    elif mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):  # colorize takes alpha only as a 4th channel after RGB
        image = (image.convert("LA") if mode == "La" else image).convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA"):  # CMYK, YCbCr, LAB, HSV, ...
        image = image.convert("RGB")
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def _high_bit_depth_gray(image: Image.Image) -> np.ndarray:
    """16-bit and 32-bit gray by the bit depth their values fit: uint8, uint16, else float32 in [0, 1]."""
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        return array.astype(np.uint16, copy=False)[..., None]  # big-endian files come as >u2
    peak = float(array.max(initial=0))
    if image.mode == "I" and peak <= 65535:  # 8- or 16-bit data widened to 32 bits
        return np.clip(array, 0, None).astype(np.uint8 if peak <= 255 else np.uint16)[..., None]
    # F is usually [0, 1]; else it and wider integers are scaled by their range.
    scale = 1.0 if image.mode == "F" and peak <= 1.0 else 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    return np.clip(array.astype(np.float32) / np.float32(scale), 0.0, 1.0)[..., None]


def write_image(path: str | os.PathLike, array: np.ndarray, *, quality: int = 95) -> Path:
    """Write (H, W, 3 or 4) float [0, 1] (or uint8 from ``to_uint8``) to ``path`` (.png, .jpg or .jpeg) atomically.

    The format follows the extension. JPEG has no alpha: a 4-channel image
    raises ValueError (the caller decides; the CLI writes such images as PNG).
    """
    path = Path(path)
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: can only write {', '.join(WRITE_FORMATS)} files")
    if fmt == "JPEG" and array.shape[-1] == 4:
        raise ValueError(f"{path}: JPEG cannot store the alpha channel; write a .png instead")
    pixels = array if array.dtype == np.uint8 else to_uint8(array)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    options = {"quality": quality} if fmt == "JPEG" else PNG_OPTIONS
    return atomic_write(path, lambda f: image.save(f, format=fmt, **options))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_write``)."""
    return atomic_write(Path(path), lambda f: f.write(data))


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a hidden temporary file beside ``path``, then rename it over ``path``.

    Whatever happens (an exception, Ctrl-C, a full disk), ``path`` holds either
    its old content or the complete new file, and the temporary file is gone.
    """
    with atomic_path(path) as temp, open(temp, "wb") as f:
        write(f)
    return path


def remove_temporaries(paths) -> int:
    """Delete the temporary files that ``atomic_write`` calls to ``paths`` left behind
    when their process was killed mid-write; returns how many. Only for when no
    writer of these paths is running (e.g. after a run has ended)."""
    by_folder: dict[Path, set[str]] = {}
    for path in map(Path, paths):
        by_folder.setdefault(path.parent, set()).add(path.name)
    removed = 0
    for folder, names in by_folder.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if entry.startswith(".") and entry.endswith(TEMP_SUFFIX) and entry[1:].rsplit(".", 2)[0] in names:
                try:
                    os.unlink(folder / entry)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed
