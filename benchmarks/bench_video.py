"""Video from the command line: peak memory for two clip lengths (it must not grow), and frames per second.

    python benchmarks/bench_video.py                      # 100 and 400 frames, 640x360, tiny, size 512, CPU
    python benchmarks/bench_video.py --frames 100 400 --variant small --size 256 --temporal 0

Makes each clip with PyAV: a slow pan across a black-and-white photo from
../shared/fixtures (a generated scene when that folder is absent) at 24 fps
with a sine audio track, H.264 in MP4. Then runs the real command line
(``python -m ddcolor colorize clip.mp4 -o out/``, stabilized at the recommended
strength unless --temporal says otherwise) in a fresh process per clip, with a
calibrated synthetic checkpoint (tests/calibrated.py, cached in .cache/tests).
Reports per clip: peak RSS of that process (ru_maxrss), wall time of the
command, frames per second overall and inside ``ddcolor.colorize``, and the
machine's load average (other processes slow everything down, the model most).
A first row runs the same command on one photo of the clip's size: the
memory of the model and the program without any video.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures"

# Runs inside the child process: time ddcolor.colorize and main(), print them with the peak RSS.
CHILD = """
import json, resource, sys, time
import ddcolor
from ddcolor.cli import main
spent = {"model": 0.0}
real = ddcolor.colorize
def timed(*args, **kwargs):
    t = time.perf_counter()
    try:
        return real(*args, **kwargs)
    finally:
        spent["model"] += time.perf_counter() - t
ddcolor.colorize = timed
t = time.perf_counter()
code = main(sys.argv[1:])
command = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
print("BENCH " + json.dumps({"code": code, "command": command, "peak": peak, **spent}))
"""


def machine() -> str:
    import av
    import torch

    flags = set()
    model = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wide = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (
        f"{model}, {os.cpu_count()} cores ({', '.join(wide) or 'no AVX2'}); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; PyAV {av.__version__} (libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}); "
        f"Python {platform.python_version()}"
    )


def source_picture(width: int, height: int) -> np.ndarray:
    """A gray picture twice the clip's width to pan across, uint8 (H, 2W)."""
    photos = sorted(p for p in FIXTURES.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if photos:
        with Image.open(photos[0]) as original:
            image = ImageOps.exif_transpose(original).convert("L")
        return np.asarray(ImageOps.fit(image, (2 * width, height), Image.Resampling.LANCZOS))
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (height // 20, width // 10), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((2 * width, height), Image.Resampling.BICUBIC))


def make_clip(path: Path, frames: int, width: int, height: int, fps: int = 24) -> None:
    import av

    picture = source_picture(width, height)
    with av.open(str(path), "w") as output:
        video = output.add_stream("libx264", rate=fps, options={"crf": "18"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = output.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        for i in range(frames):
            left = int(round(i * width / max(frames - 1, 1)))  # pans one clip width over the whole clip
            gray = np.ascontiguousarray(picture[:, left : left + width])
            frame = av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=2), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            output.mux(video.encode(frame))
        output.mux(video.encode())
        samples = 48000 * frames // fps
        wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
        for start in range(0, samples, 1024):
            block = wave[start : start + 1024]
            frame = av.AudioFrame.from_ndarray(np.stack([block, block]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, start
            output.mux(audio.encode(frame))
        output.mux(audio.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", nargs="+", type=int, default=[100, 400])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--variant", default="tiny", choices=("tiny", "small", "large"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--temporal", help="stabilization strength (default: the CLI's, the recommended one)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from tests.conftest import calibrated_checkpoint  # built once, cached in .cache/tests

    checkpoint = calibrated_checkpoint(args.variant)
    print(f"Machine: {machine()}")
    print(f"Clips: {args.width}x{args.height} at 24 fps with AAC audio; DDColor {args.variant} (calibrated), size {args.size}, "
          f"{args.device}, temporal {args.temporal or 'default'}")
    print()
    print("| frames | peak RSS | command | frames/s | frames/s in the model | model share | load average |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-video-") as work:
        # The same command on one photo of the clip's size: the model's own memory, for comparison.
        photo = Path(work) / "photo.png"
        Image.fromarray(source_picture(args.width, args.height)[:, : args.width]).save(photo)
        for frames in [1, *args.frames]:
            source = photo if frames == 1 else Path(work) / f"clip{frames}.mp4"
            if frames > 1:
                make_clip(source, frames, args.width, args.height)
            command = [sys.executable, "-c", CHILD, "colorize", str(source), "-o", str(Path(work) / "out"), "--overwrite",
                       "--model", str(checkpoint), "--size", str(args.size), "--device", args.device]
            if args.temporal is not None:
                command += ["--temporal", args.temporal]
            load_before = os.getloadavg()[0]
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            line = next((l for l in result.stdout.splitlines() if l.startswith("BENCH ")), None)
            if result.returncode != 0 or line is None:
                sys.exit(f"{source.name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
            data = json.loads(line.removeprefix("BENCH "))
            load = (load_before + os.getloadavg()[0]) / 2
            print(
                f"| {'1 photo (PNG)' if frames == 1 else frames} | {data['peak'] / 2**20:.0f} MiB | {data['command']:.1f} s | "
                f"{frames / data['command']:.2f} | {frames / data['model']:.2f} | {100 * data['model'] / data['command']:.0f}% | {load:.1f} |",
                flush=True,
            )
    print()
    print(f"python benchmarks/bench_video.py --frames {' '.join(map(str, args.frames))} --variant {args.variant} --size {args.size}"
          + (f" --temporal {args.temporal}" if args.temporal is not None else ""))


if __name__ == "__main__":
    main()
