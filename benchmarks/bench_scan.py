"""Peak memory of colorizing large scans, against their megapixels: the command line and the library call.

    OMP_NUM_THREADS=2 python benchmarks/bench_scan.py                      # 6 to 150 Mpx, tiny, size 256, fp32
    python benchmarks/bench_scan.py --megapixels 6 25 --modes cli --source /tmp/before   # another checkout

Makes gray 3:2 scans of each size (a photo enlarged: --photo, by default one
from ../shared/fixtures, else a generated scene; 8-bit PNG) and a calibrated
synthetic checkpoint (tests/calibrated.py, cached in .cache/tests). Every
point runs in a fresh Python process:

* cli: ``python -m ddcolor colorize scan.png -o OUT --model tiny.pth --size 256
  --precision fp32 --device cpu``; its peak resident memory (``wait4``'s
  ru_maxrss). ``DDCOLOR_MAX_MEGAPIXELS`` is set to let the scans past Pillow's
  decompression-bomb guard.
* library: loads the model, builds the scan as ComfyUI's IMAGE (float32 RGB,
  (1, H, W, 3)), reads its resident memory ("ready"), resets the peak
  (/proc/self/clear_refs) and calls ``ddcolor.colorize(model, x, size=256)``:
  the peak, and what the call added above ready.

A least-squares line through (pixels, peak) gives the bytes per extra pixel;
for the library also the added memory less the float32 output (12 bytes per
pixel): what the call needs beyond its input and output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures"
GIB = 1 << 30
OUTPUT_BYTES_PER_PIXEL = 12  # the library's result: float32 RGB

# Runs inside a fresh process with the checkout under test first on sys.path.
LIBRARY_CHILD = """
import json, sys, time
import numpy as np, torch
from PIL import Image
import ddcolor

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

scan, checkpoint, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = ddcolor.load_model(checkpoint, device="cpu", precision="fp32")
Image.MAX_IMAGE_PIXELS = None
with Image.open(scan) as image:
    gray = np.asarray(image)
height, width = gray.shape
x = torch.empty(1, height, width, 3)
for top in range(0, height, 256):  # ComfyUI's IMAGE, built without a second full-size copy
    x[0, top : top + 256] = (torch.from_numpy(gray[top : top + 256].copy()).float() / 255)[..., None]
del gray
ready = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # the peak from here on
began = time.perf_counter()
out = ddcolor.colorize(model, x, size=size)
seconds = time.perf_counter() - began
print("RESULT " + json.dumps({"ready": ready, "peak": status("VmHWM"), "seconds": seconds}))
"""


def scan_shape(megapixels: float) -> tuple[int, int]:
    """(width, height) of a 3:2 scan of about ``megapixels``."""
    width = round(math.sqrt(megapixels * 1e6 * 1.5))
    return width, round(width / 1.5)


def source_photo(path: Path | None) -> Image.Image:
    if path is None:
        path = next(iter(sorted(p for p in FIXTURES.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))), None)
    if path is None:
        rng = np.random.default_rng(0)
        return Image.fromarray(rng.integers(0, 255, (60, 90), dtype=np.uint8)).resize((900, 600), Image.Resampling.BICUBIC)
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("L")


def make_scan(photo: Image.Image, megapixels: float, folder: Path) -> Path:
    width, height = scan_shape(megapixels)
    path = folder / f"scan_{width}x{height}.png"
    if not path.exists():
        photo.resize((width, height), Image.Resampling.BILINEAR).save(path, compress_level=1)
    return path


def run_cli(source: Path, scan: Path, checkpoint: Path, size: int, out: Path, env: dict) -> dict:
    command = [
        sys.executable, "-m", "ddcolor", "colorize", str(scan), "-o", str(out), "--model", str(checkpoint),
        "--size", str(size), "--precision", "fp32", "--device", "cpu", "--overwrite",
    ]
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=source, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - began
    if process.returncode != 0 or "failed 0" not in output:
        sys.exit(f"cli failed on {scan.name} ({process.returncode}):\n{output}")
    return {"peak": usage.ru_maxrss * 1024, "seconds": seconds}


def run_library(source: Path, scan: Path, checkpoint: Path, size: int, env: dict) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", LIBRARY_CHILD, str(scan), str(checkpoint), str(size)],
        cwd=source, env=env, capture_output=True, text=True,
    )
    lines = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        sys.exit(f"library failed on {scan.name} ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def slope(pixels: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares (bytes per pixel, bytes at zero pixels)."""
    if len(pixels) < 2:
        return float("nan"), float("nan")
    per_pixel, fixed = np.polyfit(np.array(pixels, float), np.array(values, float), 1)
    return float(per_pixel), float(fixed)


def machine() -> str:
    import torch

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    memory = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    return f"{cpu}, {os.cpu_count()} cores, {memory / GIB:.0f} GiB; OMP_NUM_THREADS={threads}; torch {torch.__version__}; Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", nargs="+", type=float, default=[6, 12, 25, 50, 100, 150])
    parser.add_argument("--modes", nargs="+", choices=("cli", "library"), default=["cli", "library"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--variant", default="tiny", choices=("tiny", "small", "large"))
    parser.add_argument("--photo", type=Path, help="photo to enlarge into the scans (default: the first in ../shared/fixtures, else a generated scene)")
    parser.add_argument("--source", type=Path, default=REPO, help="checkout of this project to measure (default: this one)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from tests.support import calibrated_checkpoint  # built once, cached in .cache/tests

    checkpoint = calibrated_checkpoint(args.variant)
    env = {**os.environ, "DDCOLOR_MAX_MEGAPIXELS": str(max(args.megapixels) + 1)}
    print(f"machine: {machine()}")
    print(f"checkout: {args.source.resolve()}; model {args.variant} (calibrated synthetic), size {args.size}, fp32, CPU")
    photo = source_photo(args.photo)
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as work:
        work = Path(work)
        points: dict[str, list[tuple[int, dict]]] = {mode: [] for mode in args.modes}
        for megapixels in args.megapixels:
            scan = make_scan(photo, megapixels, work)
            width, height = scan_shape(megapixels)
            pixels = width * height
            for mode in args.modes:
                if mode == "cli":
                    result = run_cli(args.source, scan, checkpoint, args.size, work / "out", env)
                    print(f"cli      {pixels / 1e6:6.1f} Mpx ({width}x{height}): peak {result['peak'] / GIB:5.2f} GiB, {result['seconds']:5.1f} s", flush=True)
                else:
                    result = run_library(args.source, scan, checkpoint, args.size, env)
                    added = result["peak"] - result["ready"]
                    beyond = added - OUTPUT_BYTES_PER_PIXEL * pixels
                    print(
                        f"library  {pixels / 1e6:6.1f} Mpx ({width}x{height}): ready {result['ready'] / GIB:5.2f} GiB, "
                        f"peak {result['peak'] / GIB:5.2f} GiB, added {added / GIB:5.2f} GiB "
                        f"({beyond / GIB:.2f} GiB beyond the output), {result['seconds']:5.1f} s in colorize",
                        flush=True,
                    )
                points[mode].append((pixels, result))
            scan.unlink()
    for mode, results in points.items():
        pixels = [p for p, _ in results]
        per_pixel, fixed = slope(pixels, [r["peak"] for _, r in results])
        line = f"{mode}: peak = {fixed / GIB:.2f} GiB + {per_pixel:.1f} bytes per pixel"
        if mode == "library":
            added, _ = slope(pixels, [r["peak"] - r["ready"] for _, r in results])
            line += f"; colorize adds {added:.1f} bytes per pixel, {added - OUTPUT_BYTES_PER_PIXEL:.1f} beyond its float32 output"
        print(line)


if __name__ == "__main__":
    main()
