"""Results as they leave the engine: 8-bit pixels, and files that are complete or absent.

``atomic_path`` is how every file this project writes (images, videos) is
written: under a hidden temporary name in the target's folder, renamed over
the target when complete (``os.replace`` is atomic within one file system) and
deleted when anything fails, so a crash, a stop or a full disk never leaves a
half-written file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

TEMP_SUFFIX = ".part"


@functools.lru_cache(maxsize=None)
def _umask() -> int:
    """The process's umask, read once (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def to_uint8(array: np.ndarray) -> np.ndarray:
    """(..., C) float in [0, 1] -> uint8, rounding to nearest."""
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` to write to (by name, as FFmpeg
    does); renamed over ``path`` when the block completes, deleted when it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(descriptor)
    try:
        yield Path(temp_name)
        # mkstemp creates files readable by the owner only; outputs get the usual permissions.
        os.chmod(temp_name, 0o666 & ~_umask())  # os.chmod, not fchmod: Windows has it before Python 3.13
        descriptor = os.open(temp_name, os.O_RDWR)  # Windows flushes only handles open for writing
        try:
            os.fsync(descriptor)  # the rename must not land before the data does
        finally:
            os.close(descriptor)
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
