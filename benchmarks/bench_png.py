"""Writing a colorized photo as PNG: the command line's settings against Pillow's default.

``ddcolor.cli.imageio.PNG_OPTIONS`` (zlib level 1, run-length strategy) is
meant to write files as small as Pillow's default (level 6) in less time, so
encoding stays small next to the model. This colorizes a fixture photo scaled
to 1000x700 with the calibrated tiny checkpoint, then times encoding it both
ways (median of ``--repeats``, one thread).

    OMP_NUM_THREADS=1 python benchmarks/bench_png.py --markdown benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ddcolor  # noqa: E402
from benchmarks.bench_engine import machine, report  # noqa: E402
from ddcolor.cli.imageio import PNG_OPTIONS  # noqa: E402
from tests.support import FIXTURES, calibrated_checkpoint  # noqa: E402

PHOTO, WIDTH, HEIGHT = "ny_riverfront_1931.jpg", 1000, 700


def encode(image: Image.Image, options: dict, repeats: int) -> tuple[float, int]:
    """Median seconds to write ``image`` as PNG with ``options``, and the file's bytes."""
    times = []
    for _ in range(repeats):
        buffer = io.BytesIO()
        start = time.perf_counter()
        image.save(buffer, "PNG", **options)
        times.append(time.perf_counter() - start)
    return statistics.median(times), buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--markdown", type=Path, help="append the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gray = np.array(Image.open(FIXTURES / PHOTO).convert("RGB").resize((WIDTH, HEIGHT)))
    model = ddcolor.load_model(calibrated_checkpoint("tiny"))
    colored = ddcolor.colorize(model, torch.from_numpy(gray)[None], size=256, dtype=torch.uint8)[0]
    image = Image.fromarray(colored.numpy())
    lines = [
        "",
        f"Machine: {machine('cpu')}. {PHOTO} at {WIDTH}x{HEIGHT}, colorized (tiny, 256); median of {args.repeats}.",
        "",
        "| PNG settings | encode time | file size |",
        "|---|---|---|",
    ]
    for label, options in (("Pillow's default (level 6)", {}), (f"ours (level {PNG_OPTIONS['compress_level']}, run-length strategy)", PNG_OPTIONS)):
        seconds, size = encode(image, options, args.repeats)
        lines.append(f"| {label} | {seconds * 1000:.0f} ms | {size / 2**20:.3f} MiB |")
    report(lines, args.markdown)


if __name__ == "__main__":
    main()
