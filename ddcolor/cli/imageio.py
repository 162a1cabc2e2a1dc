"""Image files in and out for the command line: every Pillow mode in, PNG/JPEG out, atomically.

``read_image`` returns (H, W, C) float32 in [0, 1] with C = 1 (gray), 3 (RGB)
or 4 (RGBA), the layout ``ddcolor.colorize`` takes, with EXIF orientation
applied. 16-bit gray keeps its 16 bits until the float conversion; palette,
CMYK, YCbCr, LAB and HSV files go through RGB; any alpha (RGBA, LA, PA,
palette transparency, premultiplied) comes back as a fourth channel.

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
# Pillow's default (level 6) and ~4x faster (45 ms instead of 190 ms for a
# 1000x700 colorized photo), which keeps encoding small next to the model.
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message names the file and the reason."""


def image_extensions() -> set[str]:
    """Lower-case extensions (with dot) of every format this Pillow can open."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` as (H, W, C) float32 in [0, 1], C = 1, 3 or 4 (alpha last)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns (instead of failing) on some broken files; we want the failure.
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
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Truncated or corrupt data, or a size past Pillow's decompression-bomb limit.
        raise ImageReadError(f"{path}: cannot decode ({e})") from None


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
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array


def _high_bit_depth_gray(image: Image.Image) -> np.ndarray:
    """16-bit and 32-bit gray: scale by the bit depth the values fit, not by 255."""
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        scale = 65535.0
    else:
        peak = float(array.max(initial=0))
        # Mode I holds 8- or 16-bit data widened to 32 bits; F is usually [0, 1].
        scale = 1.0 if image.mode == "F" and peak <= 1.0 else 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    array = np.clip(array.astype(np.float32) / scale, 0.0, 1.0)
    return array[..., None]


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
