"""Video memory for two clip lengths (it must not grow), and frames per second: command line, node, ComfyUI server.

    python benchmarks/bench_video.py                      # command line: 100 and 400 frames, 640x360, tiny, size 512, CPU
    python benchmarks/bench_video.py --frames 100 400 --variant small --size 256 --temporal 0
    python benchmarks/bench_video.py --run node --frames 100 1000 --width 320 --height 180 --variant small --size 256
    COMFYUI_PATH=... COMFYUI_PYTHON=... python benchmarks/bench_video.py --run server \
        --frames 100 2400 --width 1280 --height 720 --fps 4 --variant small --size 256

Makes each clip with PyAV: a slow pan across a black-and-white photo from
../shared/fixtures (a generated scene when that folder is absent) with a sine
audio track, H.264 in MP4. Then colorizes it, stabilized at the recommended
strength unless --temporal says otherwise, with a calibrated synthetic
checkpoint (tests/calibrated.py, cached in .cache/tests), and reports per clip
the peak resident memory, the wall time, frames per second and the machine's
load average (other processes slow everything down, the model most):

* ``--run cli``: ``python -m ddcolor colorize clip.mp4 -o out/`` in a fresh
  process per clip (peak: its ru_maxrss). A first row runs the same command
  on one photo of the clip's size: the model and the program without video.
* ``--run node``: the "DDColor Colorize Video" node on Load Video's VIDEO, in
  a fresh process per clip with the ComfyUI stand-ins of tests/fake_comfy.py
  (peak: ru_maxrss). A first row is a one-frame clip.
* ``--run server``: the video preset (Load Video -> DDColor Colorize Video ->
  Save Video) through the HTTP API of a real ComfyUI (tests/comfyui_server.py),
  a fresh server per clip (peak: the server's VmHWM after the prompt); the
  saved video is checked for its frame count, size and sound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures"

# Run inside a child process: time the model and the whole run, print them with the peak RSS.
TIMED_MODEL = """
import json, resource, sys, time
import ddcolor, ddcolor.video
spent = {"model": 0.0}
def timed(real):
    def run(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent["model"] += time.perf_counter() - t
    return run
ddcolor.colorize, ddcolor.video.colorize = timed(ddcolor.colorize), timed(ddcolor.video.colorize)
def report(code, seconds):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print("BENCH " + json.dumps({"code": code, "command": seconds, "peak": peak, **spent}))
"""
CLI_CHILD = TIMED_MODEL + """
from ddcolor.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
report(code, time.perf_counter() - t)
"""
# argv: clip, checkpoint, size, temporal. The pack is imported as ComfyUI imports it, so the
# node's engine is the pack's copy of ddcolor.video: time that one.
NODE_CHILD = TIMED_MODEL + """
from pathlib import Path
import pytest, tempfile
from tests import fake_comfy
from tests.pack import load_pack
clip, checkpoint, size, temporal = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
comfyui = Path(tempfile.mkdtemp(prefix="bench-node-"))
(comfyui / "models" / "ddcolor").mkdir(parents=True)
(comfyui / "models" / "ddcolor" / "ddcolor_modelscope.pth").symlink_to(checkpoint)
fake_comfy.install(pytest.MonkeyPatch(), comfyui / "models" / "ddcolor")
pack = load_pack()
engine = sys.modules[pack.__name__ + ".ddcolor.video"]
engine.colorize = timed(engine.colorize)
node = pack.NODE_CLASS_MAPPINGS["DDColor-colorize-video"]()
t = time.perf_counter()
(video,) = node.colorize_clip(fake_comfy.VideoFromFile(clip), "fp16", size, "ddcolor_modelscope", temporal, 18)
report(0, time.perf_counter() - t)
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
        f"PyAV {av.__version__} (libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}); "
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
        for start in range(0, samples, 1024):
            t = np.arange(start, min(start + 1024, samples)) / 48000
            block = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([block, block]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, start
            output.mux(audio.encode(frame))
        output.mux(audio.encode())


def run_child(command: list[str]) -> dict:
    """Run a child that prints a BENCH line; its numbers."""
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    line = next((l for l in result.stdout.splitlines() if l.startswith("BENCH ")), None)
    if result.returncode != 0 or line is None:
        sys.exit(f"{' '.join(command[3:5])} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return json.loads(line.removeprefix("BENCH "))


def run_cli(source: Path, work: Path, checkpoint: Path, args) -> dict:
    command = [sys.executable, "-c", CLI_CHILD, "colorize", str(source), "-o", str(work / "out"), "--overwrite",
               "--model", str(checkpoint), "--size", str(args.size), "--device", args.device]
    if args.temporal is not None:
        command += ["--temporal", args.temporal]
    return run_child(command)


def run_node(source: Path, work: Path, checkpoint: Path, args) -> dict:
    from ddcolor.temporal import RECOMMENDED_STRENGTH

    temporal = args.temporal if args.temporal is not None else str(RECOMMENDED_STRENGTH)
    return run_child([sys.executable, "-c", NODE_CHILD, str(source), str(checkpoint), str(args.size), temporal])


def run_server(source: Path, work: Path, checkpoint: Path, args) -> dict:
    """The video preset through a fresh real ComfyUI's HTTP API; the server's peak RSS (VmHWM) after it."""
    import time

    import av

    from tests.comfyui_server import comfyui_server

    prompt = json.loads((REPO / "workflows" / "api" / "ddcolor_video.json").read_text())
    prompt["1"]["inputs"]["file"] = source.name
    prompt["2"]["inputs"].update(size=args.size, **({"temporal": float(args.temporal)} if args.temporal is not None else {}))
    with comfyui_server({"ddcolor_modelscope.pth": checkpoint}, inputs=[source]) as comfy:
        began = time.perf_counter()
        entry = comfy.wait(comfy.queue(prompt), timeout=24 * 3600)
        seconds = time.perf_counter() - began
        if entry["status"]["status_str"] != "success":
            sys.exit(f"{source.name} failed: {entry['status']}\n{comfy.log_tail()}")
        status = Path(f"/proc/{comfy.process.pid}/status").read_text()
        peak = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) * 1024
        model = sum(float(m) for m in re.findall(r"ddcolor: colorized \d+ frames in [\d.]+ s .*?model ([\d.]+) s", comfy.log()))
        (saved,) = comfy.output_files(entry)
        with av.open(str(saved)) as container:
            video, sound = container.streams.video[0], container.streams.audio
            frames = sum(1 for packet in container.demux(video) if packet.size)
            kept = (frames, video.codec_context.width, video.codec_context.height, len(sound))
    expected = (args.frames_now, args.width, args.height, 1)
    if kept != expected:
        sys.exit(f"{source.name}: saved (frames, width, height, audio tracks) {kept}, expected {expected}")
    return {"code": 0, "command": seconds, "peak": peak, "model": model}


RUNS = {"cli": run_cli, "node": run_node, "server": run_server}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", choices=RUNS, default="cli", help="what colorizes the clips (default: %(default)s)")
    parser.add_argument("--frames", nargs="+", type=int, default=[100, 400])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--variant", default="tiny", choices=("tiny", "small", "large"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu", help="--run cli only; the node and the server use ComfyUI's device")
    parser.add_argument("--temporal", help="stabilization strength (default: the recommended one)")
    parser.add_argument("--threads", type=int, help="torch threads of the process that colorizes (default: one per core); "
                        "1 keeps a machine busy with other work from stalling every layer on a second thread")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by torch when the child (or server) starts

    sys.path.insert(0, str(REPO))
    from tests.support import calibrated_checkpoint  # built once, cached in .cache/tests

    checkpoint = calibrated_checkpoint(args.variant)
    print(f"Machine: {machine()}")
    print(f"Run: {args.run}. Clips: {args.width}x{args.height} at {args.fps} fps with AAC audio; DDColor {args.variant} "
          f"(calibrated), size {args.size}, temporal {args.temporal or 'default'}, {args.threads or 'default'} torch thread(s)")
    print()
    peak_name = "server peak RSS (VmHWM)" if args.run == "server" else "peak RSS"
    print(f"| frames | {peak_name} | wall time | frames/s | frames/s in the model | model share | load average |")
    print("|---|---|---|---|---|---|---|")
    rows = [1, *args.frames] if args.run != "server" else args.frames
    with tempfile.TemporaryDirectory(prefix="bench-video-") as work:
        work = Path(work)
        photo = work / "photo.png"  # --run cli's first row: the model's own memory, for comparison
        Image.fromarray(source_picture(args.width, args.height)[:, : args.width]).save(photo)
        for frames in rows:
            source = photo if frames == 1 and args.run == "cli" else work / f"clip{frames}.mp4"
            if source != photo:
                make_clip(source, frames, args.width, args.height, args.fps)
            args.frames_now = frames
            load_before = os.getloadavg()[0]
            data = RUNS[args.run](source, work, checkpoint, args)
            load = (load_before + os.getloadavg()[0]) / 2
            label = "1 photo (PNG)" if source == photo else frames
            in_model = f"{frames / data['model']:.2f}" if data["model"] else "–"
            share = f"{100 * data['model'] / data['command']:.0f}%" if data["model"] else "–"
            print(
                f"| {label} | {data['peak'] / 2**20:.0f} MiB | {data['command']:.1f} s | {frames / data['command']:.2f} | "
                f"{in_model} | {share} | {load:.1f} |",
                flush=True,
            )
    print()
    options = [f"--run {args.run}", f"--frames {' '.join(map(str, args.frames))}", f"--width {args.width}", f"--height {args.height}",
               f"--fps {args.fps}", f"--variant {args.variant}", f"--size {args.size}"] + ([f"--threads {args.threads}"] if args.threads else [])
    print("python benchmarks/bench_video.py " + " ".join(options) + (f" --temporal {args.temporal}" if args.temporal is not None else ""))


if __name__ == "__main__":
    main()
