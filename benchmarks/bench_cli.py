"""How much of ``python -m ddcolor colorize``'s wall time is spent inside the model.

    python benchmarks/bench_cli.py                     # 20 photos, size 512, tiny checkpoint, CPU
    python benchmarks/bench_cli.py --count 20 --size 512 --variant tiny --runs 3

Prepares COUNT black-and-white photos of about 1000x700 (JPEG, cut from
../shared/fixtures, or generated scenes when that folder is absent) and a
calibrated synthetic checkpoint (tests/calibrated.py, cached in .cache/tests),
then runs the real command line in a fresh process with ``ddcolor.colorize``
wrapped in a timer. Reports per run:

* process: wall time from spawning Python to its exit (interpreter start,
  ``import torch``, model load, every image read, colorized and written);
* command: wall time from the CLI's ``main()`` to its return;
* model: time inside ``ddcolor.colorize`` (network plus Lab conversion and
  resizing), and its share of both wall times;
* the time outside it (imports, model load, reading; writing runs alongside) and the
  machine's load average, since other processes slow the model more than
  the rest and so raise its share.

The CLI writes each output in a background thread while the model works on
the next image, so the "writing" time overlaps the model's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures"

# Runs inside the child process: time ddcolor.colorize and main(), print both as JSON.
CHILD = """
import json, sys, time
began = time.perf_counter()
import ddcolor
import ddcolor.cli.imageio
from ddcolor.cli import main
spent = {"model": 0.0, "load": 0.0, "read": 0.0, "write": 0.0}
def timed(module, name, key):
    real = getattr(module, name)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - t
    setattr(module, name, wrapper)
timed(ddcolor, "colorize", "model")
timed(ddcolor, "load_model", "load")
timed(ddcolor.cli.imageio, "read_pixels", "read")
timed(ddcolor.cli.imageio, "write_image", "write")
t = time.perf_counter()
code = main(sys.argv[1:])
command = time.perf_counter() - t
print("BENCH " + json.dumps({"code": code, "command": command, "imports": t - began, **spent}))
"""


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    sources = sorted(p for p in FIXTURES.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    paths = []
    for i in range(count):
        if sources:
            with Image.open(sources[i % len(sources)]) as original:
                image = ImageOps.exif_transpose(original).convert("L")
        else:
            image = Image.fromarray(rng.integers(0, 255, (96, 128), dtype=np.uint8)).resize((1000, 700))
        # Different crops and flips so no two inputs are the same picture.
        w, h = image.size
        crop = 0.8 + 0.2 * rng.random()
        left, top = int(rng.random() * w * (1 - crop)), int(rng.random() * h * (1 - crop))
        image = image.crop((left, top, left + int(w * crop), top + int(h * crop)))
        if i % 2:
            image = ImageOps.mirror(image)
        image = image.resize((1000, round(1000 * image.height / image.width)), Image.Resampling.LANCZOS)
        path = folder / f"photo_{i:02d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--variant", default="tiny", choices=("tiny", "small", "large"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--format", default="png", choices=("png", "jpg"))
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from tests.support import calibrated_checkpoint  # built once, cached in .cache/tests

    model = calibrated_checkpoint(args.variant)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as work:
        inputs = Path(work) / "in"
        inputs.mkdir()
        make_photos(inputs, args.count)
        for run in range(1, args.runs + 1):
            command = [
                sys.executable, "-c", CHILD, "colorize", str(inputs), "-o", str(Path(work) / f"out{run}"),
                "--model", str(model), "--size", str(args.size), "--device", args.device, "--format", args.format,
            ]
            load = os.getloadavg()[0]
            began = time.perf_counter()
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            process = time.perf_counter() - began
            line = next((l for l in result.stdout.splitlines() if l.startswith("BENCH ")), None)
            if result.returncode != 0 or line is None:
                sys.exit(f"run {run} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
            data = json.loads(line.removeprefix("BENCH "))
            print(
                f"run {run}: {args.count} photos at size {args.size} ({args.variant}, {args.device}): "
                f"process {process:.1f} s, command {data['command']:.1f} s, model {data['model']:.1f} s = "
                f"{100 * data['model'] / data['command']:.1f}% of the command, "
                f"{100 * data['model'] / process:.1f}% of the process "
                f"({data['model'] / args.count:.2f} s per image in the model; outside it: imports {data['imports']:.1f} s, "
                f"model load {data['load']:.1f} s, reading {data['read']:.1f} s, writing {data['write']:.1f} s in the background; "
                f"load average {load:.1f} on {os.cpu_count()} CPUs)"
            )
            summary = [l for l in result.stdout.splitlines() if l.startswith("colorized")]
            print(f"       CLI summary: {summary[0] if summary else '?'}", flush=True)


if __name__ == "__main__":
    main()
