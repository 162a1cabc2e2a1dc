"""The per-image step of ``colorize``: read, colorize, write atomically.

The local run and the Ray run call these same three functions, in this order,
on the same arrays, so for the same model, precision and kind of device (on a
CPU: the same bf16 units and number of threads) they write the same bytes. They only place the parts differently: the local run
(``commands.colorize_jobs``) writes in a background thread while the model
takes the next image; on Ray (``ray_runner``) reading and writing are map
tasks and ``colorize`` runs on the model actors.
"""

from __future__ import annotations

import time

import numpy as np

from .batch import DONE, FAILED, Job, Outcome


class StepFailed(Exception):
    """One image failed; the message is the reason the summary prints."""


def read(source) -> np.ndarray:
    """The file's pixels as ``ddcolor.colorize`` takes them (``imageio.read_pixels``: its own bit depth)."""
    from .imageio import ImageReadError, read_pixels

    try:
        return read_pixels(source)
    except ImageReadError as e:
        raise StepFailed(str(e).removeprefix(f"{source}: ")) from None


def colorize(model, pixels: np.ndarray, *, size: int) -> np.ndarray:
    """The colorized image, (H, W, 3 or 4) uint8."""
    import warnings

    import torch

    import ddcolor

    with warnings.catch_warnings():  # read_pixels' arrays are read-only; colorize only reads them
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        batch = torch.from_numpy(pixels)[None]
    try:
        return ddcolor.colorize(model, batch, size=size, dtype=torch.uint8)[0].numpy()
    except (MemoryError, RuntimeError, ValueError) as e:
        raise StepFailed(f"colorize failed: {e}") from None


def write(job: Job, colored: np.ndarray, *, quality: int, began: float) -> Outcome:
    """Encode and write ``colored`` at ``job.target`` atomically; an image with alpha becomes a PNG beside it."""
    from .imageio import write_image

    target = job.target
    if colored.shape[-1] == 4 and target.suffix != ".png":
        target = target.with_suffix(".png")
    try:
        write_image(target, colored, quality=quality)
    except OSError as e:
        return Outcome(job, FAILED, f"cannot write {target}: {e.strerror or e}", time.perf_counter() - began)
    note = f"written as {target.name} to keep its alpha channel" if target != job.target else ""
    return Outcome(job, DONE, note, time.perf_counter() - began)
