"""Video for the command line: which inputs are clips, folders of frames, and one clip as a job.

The engine (reading, writing, audio, the clip loop) is ``ddcolor.video``,
shared with the ComfyUI node. Here: the video file extensions the batch takes,
``--fps`` and ``--sequence`` (a folder of scanned frames is one clip), and
``colorize_clip``, which runs one clip of the batch through
``ddcolor.video.colorize_video`` with a progress bar and Ctrl-C, and reports
its Outcome.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, TextIO

import numpy as np

from ..video import DEFAULT_CRF, DEFAULT_RATE, ClipInfo, Frame, VideoError, VideoReader, clock, colorize_video, snap_rate
from .batch import DONE, FAILED, Job, Outcome, UsageError, relative_name, terminal_bar
from .imageio import ImageReadError, image_extensions, read_image

# Containers FFmpeg reads that people keep films and home movies in. GIF stays
# an image (Pillow reads its first frame), as it always has in this CLI.
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".mkv", ".webm", ".avi", ".wmv", ".asf", ".flv", ".mpg", ".mpeg",
    ".m2v", ".vob", ".ts", ".mts", ".m2ts", ".3gp", ".dv", ".mxf", ".ogv", ".y4m",
})
OUTPUT_EXTENSION = ".mp4"
DEFAULT_SEQUENCE_FPS = DEFAULT_RATE
PROGRESS_INTERVAL = 10.0  # seconds between progress lines when stderr is not a terminal


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def is_clip(job: Job) -> bool:
    """A job whose source is a video file or a frame folder (``--sequence``): one output video."""
    return job.source.is_dir() or is_video(job.source)


def parse_fps(text: str) -> Fraction:
    """``24``, ``18``, ``23.976`` or ``24000/1001`` as an exact rate (NTSC decimals mean /1001)."""
    try:
        rate = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--fps {text}: not a number; use e.g. 24, 18, 25 or 24000/1001") from None
    if not 0 < rate <= 1000:
        raise UsageError(f"--fps {text}: use a rate above 0 and at most 1000")
    return snap_rate(rate)


# ----------------------------------------------------------------------------- inputs


def natural_key(path: Path) -> list:
    """Sort key that orders numbers by value: frame_2 before frame_10, as scanners number frames."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", path.name)]


def frame_files(folder: Path) -> list[Path]:
    """The images directly in ``folder`` (not hidden, not our temporaries), in natural order."""
    extensions = image_extensions()
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions]
    return sorted(files, key=natural_key)


def split_sequences(patterns: list[str], *, recursive: bool) -> tuple[list[tuple[Path, Path]], list[str]]:
    """For ``--sequence``: each folder input (each folder holding images under it with
    ``recursive``) is one clip. Returns those clips as (folder, folder relative to its
    input root) and the inputs left to find as files (files and globs)."""
    clips: list[tuple[Path, Path]] = []
    rest: list[str] = []
    for pattern in patterns:
        folder = Path(pattern)
        if not folder.is_dir():
            rest.append(pattern)
            continue
        if folder.name in ("", ".."):  # "." or "..": name the clip after the real folder
            folder = folder.resolve()
        folders = [folder]
        if recursive:
            folders += sorted(
                (p for p in folder.rglob("*") if p.is_dir() and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                key=lambda p: [natural_key(Path(part)) for part in p.relative_to(folder).parts],
            )
        found = [(f, f.relative_to(folder).parent if f != folder else Path()) for f in folders if frame_files(f)]
        if not found:
            raise UsageError(f"{pattern}: no images in this folder to use as frames (--sequence)")
        clips += found
    return clips, rest


# ----------------------------------------------------------------------------- frame folders


class SequenceReader:
    """A folder of images as the frames of one clip (``--sequence``), in natural name order."""

    def __init__(self, folder: Path, rate: Fraction):
        self.folder = folder
        self.files = frame_files(folder)
        self.rate = rate
        self.notes: list[str] = []

    def __enter__(self) -> "SequenceReader":
        first = self._read(self.files[0])
        height, width = first.shape[:2]
        self.info = ClipInfo(width=width, height=height, frames=len(self.files), rate=self.rate, time_base=1 / self.rate)
        return self

    def __exit__(self, *exc) -> None:
        pass

    def audio(self, output) -> None:
        """Scanned frames have no sound."""
        return None

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.files):
            pixels = self._read(path)
            if pixels.shape[:2] != (self.info.height, self.info.width):
                raise VideoError(
                    f"{path.name} is {pixels.shape[1]}x{pixels.shape[0]}, the first frame {self.files[0].name} "
                    f"{self.info.width}x{self.info.height}: all frames of a sequence must have one size"
                )
            yield Frame(pixels, index, 1, path.name)

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        try:
            pixels = read_image(path)
        except ImageReadError as e:
            raise VideoError(str(e)) from None
        return pixels[..., :3] if pixels.shape[-1] == 4 else pixels  # video has no alpha


# ----------------------------------------------------------------------------- colorizing a clip




@dataclass(frozen=True)
class ClipOptions:
    temporal: float  # stabilization strength, 0 = each frame on its own
    crf: int = DEFAULT_CRF
    fps: Fraction = DEFAULT_SEQUENCE_FPS  # for --sequence; videos keep their own timing


class Stopped(Exception):
    """Ctrl-C asked the batch to stop: the clip under way is abandoned within one model call."""


def colorize_clip(model, job: Job, *, size: int, options: ClipOptions, stop, summary, write: Callable[[str], None]) -> Outcome:
    """Colorize one clip to ``job.target``; the Outcome says what happened.

    ``stop`` is the batch's StopRequest: once set, the clip stops within one
    model call, its temporary file is deleted and the outcome says where it stopped.
    """
    began = time.perf_counter()
    reader = SequenceReader(job.source, options.fps) if job.source.is_dir() else VideoReader(job.source)
    progress = ClipProgress(relative_name(job.source), write=write)

    def step(done: int, total: int | None) -> None:
        progress.update(done, total)
        if stop.requested:
            raise Stopped

    try:
        result = colorize_video(model, reader, job.target, size=size, temporal=options.temporal, crf=options.crf, progress=step)
    except Stopped:
        summary.aborted = True
        where = f"frame {progress.done} of {progress.total}" if progress.total else f"frame {progress.done}"
        return Outcome(job, FAILED, f"stopped by Ctrl-C after {where}; nothing written", time.perf_counter() - began)
    except VideoError as e:
        return Outcome(job, FAILED, f"{e}; nothing written", time.perf_counter() - began)
    except OSError as e:
        return Outcome(job, FAILED, f"cannot write {job.target}: {e.strerror or e}; nothing written", time.perf_counter() - began)
    finally:
        progress.close()
    summary.model_seconds += result.model_seconds
    stabilized = f"stabilized at {options.temporal:g}" if options.temporal > 0 else "not stabilized"
    notes = [f"{result.frames} frames, {result.frames / result.seconds:.1f} frames/s, {stabilized}", *result.notes]
    return Outcome(job, DONE, "; ".join(notes), result.seconds)


class ClipProgress:
    """Frames done, frames per second and time left: a tqdm bar on a terminal, else a line every 10 s."""

    def __init__(self, name: str, *, write: Callable[[str], None], stream: TextIO | None = None):
        self._name, self._write = name, write
        self._stream = stream or sys.stderr
        self._began = time.perf_counter()
        self._last_line = None
        self._bar = None
        self.done, self.total = 0, None

    def update(self, done: int, total: int | None) -> None:
        if self._bar is None:
            self._bar = terminal_bar(self._stream, total=total, unit="frame", desc=self._name, leave=False)
        if self._bar is not None:
            self._bar.update(done - self.done)
        self.done, self.total = done, total
        now = time.perf_counter()
        if self._bar is None and (self._last_line is None or now - self._last_line >= PROGRESS_INTERVAL):
            self._last_line = now
            self._write(self.line(now))

    def line(self, now: float) -> str:
        rate = self.done / max(now - self._began, 1e-9)
        text = f"{self._name}: frame {self.done}" + (f"/{self.total}" if self.total else "") + f", {rate:.1f} frames/s"
        if self.total and rate > 0:
            text += f", {clock((self.total - self.done) / rate, fraction=False)} left"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
