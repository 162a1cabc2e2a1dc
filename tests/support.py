"""Helpers the tests share, and the benchmarks may import (test modules and conftest they may not).

Imports only torch and numpy at the top: a benchmark runs where pytest, PyAV or
the test photos may be missing (benchmarks/gpu_check.py on a bare GPU host).
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures"


# ----------------------------------------------------------------------------- calibrated checkpoints

# What a calibrated checkpoint depends on: the generator, the architecture and
# the photos it is calibrated on (generated scenes where ../shared is absent).
CHECKPOINT_SOURCES = ["tests/calibrated.py", "ddcolor/model.py", "ddcolor/decoder.py", "ddcolor/convnext.py", "ddcolor/layers.py", "ddcolor/color.py"]
CHECKPOINT_SOURCES += [str(photo) for photo in sorted(FIXTURES.glob("*.*"))]


def calibrated_checkpoint(variant: str, stress: str | None = None, device: str = "cpu") -> Path:
    """A calibrated synthetic checkpoint ({'params': state}, published layout), built once.

    ``stress``: a recipe of ``tests.calibrated.STRESS_RECIPES``; all but
    "blocks" are derived from the calibrated checkpoint, which is built first.
    ``device``: where a build's calibration runs (benchmarks/gpu_check.py
    passes its GPU); a cached file is used whatever device built it.
    Kept in .cache/tests under a name that changes whenever its sources
    change; written atomically so parallel sessions never read half a file.
    """
    from tests.calibrated import make_checkpoint, stressed

    digest = hashlib.sha256(b"".join((REPO / name).read_bytes() for name in CHECKPOINT_SOURCES)).hexdigest()[:16]
    path = REPO / ".cache" / "tests" / f"calibrated_{variant}{'_' + stress if stress else ''}_{digest}.pth"
    if not path.is_file():
        if stress in (None, "blocks"):
            state = make_checkpoint(variant, stress=stress, device=device)
        else:
            base = torch.load(calibrated_checkpoint(variant, device=device), map_location="cpu", weights_only=True)["params"]
            state = stressed(base, stress, device=device)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        torch.save({"params": state}, partial)
        partial.replace(path)
    return path


# ----------------------------------------------------------------------------- inputs and measures


def fresh_model(state: dict, **kwargs) -> torch.nn.Module:
    """A model that owns its tensors: balancing for half rewrites them in place, and ``state`` is shared."""
    from ddcolor.checkpoint import model_from_state_dict

    return model_from_state_dict({k: v.clone() for k, v in state.items()}, **kwargs)


def fixture_inputs(paths, size: int) -> torch.Tensor:
    """Fixture photos as the network sees them: the lightness of the resized photo, as gray RGB."""
    import torch.nn.functional as F
    from PIL import Image

    from ddcolor.color import gray_rgb_from_lightness, rgb_to_lab

    batch = []
    for path in paths:
        rgb = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255)
        rgb = F.interpolate(rgb.permute(2, 0, 1)[None], size=(size, size), mode="bilinear", antialias=True)
        batch.append(gray_rgb_from_lightness(rgb_to_lab(rgb)[:, :1]))
    return torch.cat(batch)


def colorfulness_of(x: torch.Tensor, ab: torch.Tensor) -> float:
    """Colorfulness of the network's input ``x`` (gray RGB) given the colors ``ab`` it predicted."""
    from ddcolor.color import colorfulness, lab_to_rgb, rgb_to_lab

    lab = torch.cat([rgb_to_lab(x)[:, :1], ab.clamp(-128, 127)], dim=1)
    return colorfulness(lab_to_rgb(lab))


def peak_live_bytes(call: Callable[[], object]) -> int:
    """Peak bytes of tensors alive during ``call()``, from the profiler's allocation timeline."""
    from torch.profiler import profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    with profile(profile_memory=True) as prof:
        call()
    live = peak = 0
    for _, action, _, size in MemoryProfile(prof.profiler.kineto_results).timeline:
        live += size if action == Action.CREATE else -size if action == Action.DESTROY else 0
        peak = max(peak, live)
    return peak


class MemoryLimited(torch.nn.Module):
    """The real model (fp32: the wrapper has no precision plan of its own), but out of memory above ``max_batch`` images."""

    def __init__(self, model, max_batch):
        super().__init__()
        self.model, self.max_batch = model, max_batch
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        if x.shape[0] > self.max_batch:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(x)


# ----------------------------------------------------------------------------- photos and clips


def photo(width: int = 96, height: int = 64, seed: int = 0) -> np.ndarray:
    """A gray uint8 scene with structure (a gradient and a few blocks)."""
    rng = np.random.default_rng(seed)
    image = np.tile(np.linspace(30, 220, width), (height, 1))
    for _ in range(4):
        y, x = rng.integers(0, height - 16), rng.integers(0, width - 16)
        image[y : y + 16, x : x + 16] = rng.integers(0, 255)
    return image.astype(np.uint8)


SINE_HZ = 440  # the pitch of write_clip's audio


def scene(index: int, width: int, height: int) -> np.ndarray:
    """Frame ``index`` of a gray scene panning right: a gradient with a few blocks, uint8 (H, W)."""
    x = (np.arange(width) + 3 * index) / width
    image = 40 + 160 * (0.5 + 0.5 * np.sin(2 * np.pi * x))[None, :].repeat(height, 0)
    for k, (bx, by) in enumerate(((0.2, 0.2), (0.6, 0.5), (0.4, 0.7))):
        left, top = int((bx * width + 3 * index) % (width - 8)), int(by * (height - 8))
        image[top : top + height // 4, left : left + width // 6] = 30 + 90 * k
    return image.astype(np.uint8)


def write_clip(
    path: Path, *, frames: int = 12, width: int = 64, height: int = 48, fps: int = 24,
    audio: str | None = "aac", times: list[int] | None = None, rotation: int | None = None,
    container: str | None = None, noise: bool = False, flicker: bool = False,
) -> Path:
    """A gray H.264 clip; ``times`` gives each frame's timestamp in 1/fps (variable frame rate);
    ``audio`` is the codec of a sine track lasting as long as the video (None: no audio);
    ``flicker``: a static shot with film grain and exposure flicker instead of a pan."""
    import av

    rng = np.random.default_rng(0)
    times = times or list(range(frames))
    with av.open(str(path), "w", format=container) as output:
        video = output.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv444p" if width % 2 or height % 2 else "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, fps)
        if rotation is not None:
            video.set_display_rotation(rotation)
        track = None
        if audio:
            track = output.add_stream(audio, rate=44100)
            track.layout = "stereo" if audio == "aac" else "mono"
        for i, stamp in enumerate(times):
            gray = scene(i, width, height)
            if flicker:
                shot = scene(0, width, height) + 6 * np.sin(i) + rng.normal(0, 4, (height, width))
                gray = np.clip(shot, 0, 255).astype(np.uint8)
            if noise:  # incompressible frames make a file big enough to damage in its middle
                gray = rng.integers(0, 256, gray.shape, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=2), format="rgb24")
            frame.pts, frame.time_base = stamp, Fraction(1, fps)
            output.mux(video.encode(frame))
        output.mux(video.encode())
        if track is not None:
            samples = int(44100 * (times[-1] + 1) / fps)
            wave = 0.3 * np.sin(2 * np.pi * SINE_HZ * np.arange(samples) / 44100)
            layout = track.layout.name
            for start in range(0, samples, 1024):
                block = wave[start : start + 1024]
                if audio == "aac":  # float planar stereo
                    frame = av.AudioFrame.from_ndarray(np.stack([block, block]).astype(np.float32), format="fltp", layout=layout)
                else:  # 16-bit packed mono
                    frame = av.AudioFrame.from_ndarray((block * 32767).astype(np.int16)[None], format="s16", layout=layout)
                frame.sample_rate, frame.pts = 44100, start
                output.mux(track.encode(frame))
            output.mux(track.encode())
    return path


def probe(path: Path) -> dict:
    """What a player sees: frames (uint8 RGB), their times, rate, size, and each audio track decoded."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
        facts = {
            "codec": stream.codec_context.name,
            "frames": np.stack([f.to_ndarray(format="rgb24") for f in decoded]),
            "times": [float(f.time) for f in decoded],
            "rate": stream.average_rate,
            "size": (stream.codec_context.width, stream.codec_context.height),
            "rotation": decoded[0].rotation,
        }
    audio = []
    with av.open(str(path)) as container:
        for track in container.streams.audio:
            samples = np.concatenate([f.to_ndarray().reshape(f.layout.nb_channels if f.format.is_planar else 1, -1)[0] for f in container.decode(track)])
            audio.append({"codec": track.codec_context.name, "rate": track.codec_context.sample_rate, "samples": samples})
            container.seek(0)
    facts["audio"] = audio
    return facts


def colorfulness(frames: np.ndarray) -> float:
    """Mean spread between the RGB channels of frames (..., 3): 0 for gray."""
    frames = frames.astype(np.float32)
    return float((frames.max(axis=-1) - frames.min(axis=-1)).mean())


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """The loudest frequency of a track, in Hz."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def leftovers(folder: Path) -> list[str]:
    """Every file under ``folder``, hidden temporaries included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ----------------------------------------------------------------------------- interrupting a real process


@contextmanager
def started(command: list, **options) -> Iterator[subprocess.Popen]:
    """``command`` running from the repository root, stderr piped (``options`` go to Popen);
    killed and reaped on leaving if it still runs, so a failed test leaves no process behind."""
    process = subprocess.Popen([str(part) for part in command], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for_stderr(process: subprocess.Popen, marker: bytes, timeout: float) -> bytes:
    """Read the process's stderr until ``marker`` shows (its work is under way); what was read."""
    deadline = time.monotonic() + timeout
    seen = b""
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} within {timeout:.0f} s: {seen!r}"
        assert process.poll() is None, f"exited early: {seen!r}"
        if select.select([process.stderr], [], [], 1.0)[0]:
            seen += os.read(process.stderr.fileno(), 4096)
    return seen


def interrupt(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Ctrl-C: SIGINT, then the process's (stdout, stderr) written after what was read, once it exits."""
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=timeout)
    return stdout.decode(), stderr.decode()
