"""Video for the command line: film and video files in, H.264 MP4 out, streamed with PyAV.

``colorize_clip`` runs one clip (a video file, or a folder of frames with
``--sequence``): frames are decoded one at a time, colorized one at a time on
a CPU or a few at a time on a GPU with one ``ddcolor.TemporalState`` for the
whole clip, and encoded as they come, so memory stays flat however long the
clip is. The output is written under a hidden temporary name and renamed when
complete: Ctrl-C, a corrupt frame or a full disk leave no partial file.

What the output keeps from the source: the frame count, each frame's
timestamp (so variable frame rate keeps its timing), the frame size as
displayed (a rotation flag is applied to the pixels) and every audio track,
copied as it is when MP4 holds its codec and re-encoded to AAC otherwise.
Colors are written as BT.709 (the primaries of sRGB, which the model
predicts), tagged so players convert them back exactly.

PyAV (``av``) is imported only when a clip is opened; ComfyUI installs have
it, and its wheels carry FFmpeg (with x264), so nothing else is needed.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, TextIO

import numpy as np

from .batch import DONE, FAILED, Job, Outcome, UsageError, relative_name
from .imageio import ImageReadError, atomic_path, image_extensions, read_image, to_uint8

# Containers FFmpeg reads that people keep films and home movies in. GIF stays
# an image (Pillow reads its first frame), as it always has in this CLI.
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".mkv", ".webm", ".avi", ".wmv", ".asf", ".flv", ".mpg", ".mpeg",
    ".m2v", ".vob", ".ts", ".mts", ".m2ts", ".3gp", ".dv", ".mxf", ".ogv", ".y4m",
})
OUTPUT_EXTENSION = ".mp4"
DEFAULT_CRF = 18  # x264's scale: 0 lossless, 18 visually lossless, 23 its default, 51 worst
DEFAULT_SEQUENCE_FPS = Fraction(24)
INSTALL_HINT = (
    "reading and writing video needs PyAV: pip install av "
    "(ComfyUI already has it: run this with ComfyUI's Python, e.g. python_embeded\\python.exe -m ddcolor)"
)
# Audio codecs copied into MP4 untouched: those MP4 players play. Anything else
# (PCM from DV and AVI captures, Vorbis, MP2, WMA, ...) is re-encoded to AAC.
MP4_AUDIO_COPY = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "flac", "opus"})
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
# Frames per model call on a GPU, which batches them: as many as 128 MiB of
# float input holds (11 of 720p, 5 of 1080p, 1 of 4K), held again in the
# colorized copy. A CPU gains nothing from batching and takes one at a time.
CHUNK_BYTES = 128 << 20
MAX_CHUNK_FRAMES = 16
# BT.709 in AVCOL_* numbering (matrix, primaries and transfer share the value 1); limited ("tv") range.
BT709, TV_RANGE = 1, 1
PROGRESS_INTERVAL = 10.0  # seconds between progress lines when stderr is not a terminal


class VideoError(Exception):
    """A clip that cannot be read or written; the message says what and where (frame, time)."""


def import_av():
    """The ``av`` module, or a VideoError that says how to install it."""
    try:
        import av
    except ImportError as e:
        raise VideoError(f"{INSTALL_HINT} ({e})") from None
    return av


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
    ntsc = rate * Fraction(1001, 1000)
    if rate.denominator != 1 and abs(ntsc - round(ntsc)) < Fraction(1, 500):
        rate = Fraction(round(ntsc) * 1000, 1001)
    return rate


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


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ClipInfo:
    width: int  # as displayed (after any rotation flag)
    height: int
    frames: int | None  # expected, for progress: the index's count, else duration x rate; None if unknown
    rate: Fraction  # nominal frame rate (timing comes from each frame's timestamp)
    time_base: Fraction  # unit of the timestamps ``frames()`` yields
    audio: tuple[str, ...] = ()  # codec of each audio track
    left_out: tuple[str, ...] = ()  # kinds of the other tracks (subtitle, data, a second video), not written
    rotation: int = 0  # degrees counter-clockwise applied to the decoded pixels


@dataclass(frozen=True)
class Frame:
    pixels: np.ndarray  # (H, W, C) uint8 (video) or float32 in [0, 1] (image files), C = 1, 3 or 4
    pts: int  # in ClipInfo.time_base, from 0, strictly increasing
    duration: int  # in ClipInfo.time_base; 0 when unknown
    label: str  # where it came from, for messages: "frame 12 (0:00:00.50)" or a file name


class VideoReader:
    """A video file's frames in display order and orientation, decoded one at a time.

    A frame FFmpeg cannot decode, or a file that ends well before the length
    its header gives, raises VideoError. A frame the decoder repaired
    (concealed damage, as every player shows it) is kept and listed in ``notes``.
    """

    def __init__(self, path: Path):
        self.path = path
        self.notes: list[str] = []
        self._container = None

    def __enter__(self) -> "VideoReader":
        av = import_av()
        try:
            self._container = av.open(str(self.path), metadata_errors="ignore")
        except av.error.FFmpegError as e:
            raise VideoError(f"cannot open as a video ({_ffmpeg_reason(e)})") from None
        container = self._container
        if not container.streams.video:
            container.close()
            raise VideoError("has no video track")
        stream = self._stream = container.streams.video[0]
        # Decoding keeps FFmpeg's default slice threads: frame threads can swallow a damaged frame's error.
        tb = self._source_tb = Fraction(stream.time_base)
        # Every track starts where the file starts (MPEG-TS files start near 1.4 s), as FFmpeg does.
        start = Fraction(container.start_time or 0, 1_000_000)
        self._start = int(round(start / tb))
        rate = Fraction(stream.guessed_rate or stream.average_rate or stream.base_rate or DEFAULT_SEQUENCE_FPS)
        # Where the video track says it ends, to tell a truncated file (MKV keeps it in a tag).
        if stream.duration:
            self._end = (stream.start_time or 0) * tb + stream.duration * tb - start
        else:
            self._end = _parse_clock(stream.metadata.get("DURATION") or stream.metadata.get("duration"))
        self._tolerance = max(3 / rate, Fraction(1, 4))
        # An MP4 index counts frames an edit list may hide: good for progress, not for a check.
        length = self._end or (Fraction(container.duration, 1_000_000) if container.duration else None)
        expected = stream.frames or (int(round(length * rate)) if length else None)
        self.info = ClipInfo(
            width=stream.codec_context.width, height=stream.codec_context.height, frames=expected, rate=rate,
            time_base=_common_unit(tb, 1 / rate), audio=tuple(_codec_name(s) for s in container.streams.audio),
            left_out=tuple(s.type for s in container.streams if s.type != "audio" and s is not stream),
        )
        return self

    def __exit__(self, *exc) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def frames(self) -> Iterator[Frame]:
        av = import_av()
        tb, rate = self.info.time_base, self.info.rate
        nominal = max(1, int(round(1 / (rate * tb))))
        last, end, count, repaired = None, 0, 0, []

        anchor = None  # the first frame's time: the frame rate's grid starts there
        slack = min(self._source_tb, 1 / (8 * rate))

        def snap(seconds: Fraction) -> Fraction:
            """A time the source could only round (MKV counts milliseconds) exactly on the
            frame rate's grid, so that 24 fps stays 24 rather than 24.015."""
            grid = Fraction(round(seconds * rate)) / rate
            return grid if abs(seconds - grid) <= slack else seconds

        decoded = self._container.decode(self._stream)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except av.error.FFmpegError as e:
                raise VideoError(f"cannot decode frame {count + 1} (after {_clock(end * tb)}): {_ffmpeg_reason(e)}") from None
            count += 1
            if frame.pts is not None:
                seconds = (frame.pts - self._start) * self._source_tb
                anchor = seconds if anchor is None else anchor
                pts = round((anchor + snap(seconds - anchor)) / tb)
            else:
                pts = last + nominal if last is not None else 0
            if last is not None and pts <= last:  # broken timestamps: keep the order, one tick apart
                pts = last + 1
            duration = round(snap((getattr(frame, "duration", 0) or 0) * self._source_tb) / tb)
            last, end = pts, pts + (duration or nominal)
            label = f"frame {count} ({_clock(pts * tb)})"
            if frame.is_corrupt:
                repaired.append(label)
            pixels = frame.to_ndarray(format="rgb24")
            rotation = getattr(frame, "rotation", 0) or 0
            if rotation % 90 == 0 and rotation % 360:  # the display matrix turns the picture counter-clockwise
                pixels = np.ascontiguousarray(np.rot90(pixels, k=rotation // 90))
            if count == 1 and rotation:
                self.info = replace(self.info, width=pixels.shape[1], height=pixels.shape[0], rotation=rotation)
            yield Frame(pixels, pts, duration, label)
        if self._end is not None and end * tb < self._end - self._tolerance:
            raise VideoError(
                f"ends after frame {count}, at {_clock(end * tb)} of {_clock(self._end)} (the file is truncated or damaged)"
            )
        if repaired:
            more = f" and {len(repaired) - 3} more" if len(repaired) > 3 else ""
            self.notes.append(f"damaged in the source and repaired by the decoder as players show them: {', '.join(repaired[:3])}{more}")


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


def open_clip(source: Path, fps: Fraction):
    return SequenceReader(source, fps) if source.is_dir() else VideoReader(source)


# ----------------------------------------------------------------------------- writing


class VideoWriter:
    """H.264 in MP4 at ``path``: frames as they come, and the audio tracks of
    ``audio_from`` interleaved with them (copied, or re-encoded to AAC)."""

    def __init__(self, path: Path, info: ClipInfo, *, crf: int = DEFAULT_CRF, audio_from: Path | None = None):
        self.path = path
        self.info = info
        self.crf = crf
        self.audio_from = audio_from
        self.notes: list[str] = []
        self._output = None
        self._audio = None

    def __enter__(self) -> "VideoWriter":
        av = import_av()
        self._output = av.open(str(self.path), "w", format="mp4", options={"movflags": "+faststart"})
        try:
            self._add_streams(self._output)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _add_streams(self, output) -> None:
        info = self.info
        # 4:2:0 needs even sizes; odd ones keep every pixel in 4:4:4 (which browsers and QuickTime do not play).
        odd = info.width % 2 or info.height % 2
        pix_fmt = "yuv444p" if odd else "yuv420p"
        if odd:
            self.notes.append(f"odd size {info.width}x{info.height}: H.264 4:4:4, which browsers and QuickTime do not play")
        stream = self._video = output.add_stream(
            "libx264", rate=info.rate,
            options={"crf": str(self.crf), "colorspace": "bt709", "color_primaries": "bt709", "color_trc": "bt709", "color_range": "tv"},
        )
        stream.width, stream.height, stream.pix_fmt = info.width, info.height, pix_fmt
        stream.time_base = info.time_base
        stream.codec_context.time_base = info.time_base
        self._pix_fmt = pix_fmt
        if self.audio_from is not None and info.audio:
            self._audio = AudioTracks(self.audio_from, output)
            self.notes += self._audio.notes

    def write(self, pixels: np.ndarray, pts: list[int], durations: list[int]) -> None:
        """Encode (N, H, W, 3) uint8 RGB frames with their timestamps and
        durations (in ``info.time_base``; the last frame's duration sets the clip's end)."""
        av = import_av()
        for rgb, stamp, duration in zip(pixels, pts, durations):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(format=self._pix_fmt, dst_colorspace=BT709, dst_color_range=TV_RANGE)
            frame.pts = stamp
            frame.time_base = self.info.time_base
            if duration > 0 and hasattr(frame, "duration"):
                frame.duration = duration
            self._output.mux(self._video.encode(frame))
        if self._audio is not None and len(pts):
            self._audio.mux_until(pts[-1] * self.info.time_base)

    def finish(self) -> None:
        """Flush the encoder and the rest of the audio; the file is complete when ``__exit__`` closes it."""
        self._output.mux(self._video.encode(None))
        if self._audio is not None:
            self._audio.mux_until(None)

    def __exit__(self, *exc) -> None:
        try:
            if self._audio is not None:
                self._audio.close()
        finally:
            if self._output is not None:
                self._output.close()


class AudioTracks:
    """The audio tracks of a source file, read by a second demuxer in step with
    the video being written, so the output interleaves them as the source does."""

    def __init__(self, source: Path, output):
        av = import_av()
        self.notes: list[str] = []
        self._output = output
        self._input = av.open(str(source), metadata_errors="ignore")
        start = self._input.start_time / 1_000_000 if self._input.start_time is not None else 0.0
        self._tracks = {}  # input stream index -> (output stream, re-encode?, start offset in its time base)
        copy_ok = MP4_AUDIO_COPY & output.supported_codecs
        for stream in self._input.streams.audio:
            name = _codec_name(stream)
            offset = int(round(Fraction(start) / stream.time_base))
            if name in copy_ok:
                out = output.add_stream_from_template(stream)
                self._tracks[stream.index] = (out, False, offset)
                self.notes.append(f"audio copied ({name})")
            else:
                rate = stream.codec_context.sample_rate
                out = output.add_stream("aac", rate=rate if rate in AAC_RATES else 48000)
                out.layout = stream.codec_context.layout.name if stream.codec_context.layout.nb_channels <= 8 else "stereo"
                out.bit_rate = 96_000 * min(out.layout.nb_channels, 2) + 64_000 * max(out.layout.nb_channels - 2, 0)
                self._tracks[stream.index] = (out, True, offset)
                self.notes.append(f"audio re-encoded from {name} to AAC (few MP4 players play {name})")
        self._packets = self._input.demux(*self._input.streams.audio)
        self._held = None  # a packet read past the time asked for

    def mux_until(self, seconds: Fraction | None) -> None:
        """Write the audio up to ``seconds`` of output time (None: all of it)."""
        av = import_av()
        while True:
            packet, self._held = self._held, None
            if packet is None:
                try:
                    packet = next(self._packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as e:
                    raise VideoError(f"cannot read the audio: {_ffmpeg_reason(e)}") from None
            out, reencode, offset = self._tracks[packet.stream.index]
            if packet.dts is None and packet.pts is None:  # the demuxer's end-of-stream marker
                if reencode:
                    self._encode(packet, out, offset)
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            if seconds is not None and (stamp - offset) * packet.time_base > seconds:
                self._held = packet
                break
            if reencode:
                self._encode(packet, out, offset)
            else:
                if packet.pts is not None:
                    packet.pts -= offset
                if packet.dts is not None:
                    packet.dts -= offset
                packet.stream = out
                self._output.mux(packet)
        if seconds is None:
            for out, reencode, _ in self._tracks.values():
                if reencode:
                    self._output.mux(out.encode(None))

    def _encode(self, packet, out, offset: int) -> None:
        av = import_av()
        try:
            frames = packet.decode()
        except av.error.FFmpegError as e:
            raise VideoError(f"cannot decode the audio at {_clock((packet.pts or 0) * packet.time_base)}: {_ffmpeg_reason(e)}") from None
        for frame in frames:
            if frame.pts is not None:
                frame.pts -= offset
            self._output.mux(out.encode(frame))

    def close(self) -> None:
        self._input.close()


# ----------------------------------------------------------------------------- colorizing a clip


@dataclass(frozen=True)
class ClipOptions:
    temporal: float  # stabilization strength, 0 = each frame on its own
    crf: int = DEFAULT_CRF
    fps: Fraction = DEFAULT_SEQUENCE_FPS  # for --sequence; videos keep their own timing


class Stopped(Exception):
    """Ctrl-C asked the batch to stop: the clip under way is abandoned at its next chunk."""


def colorize_clip(model, job: Job, *, size: int, options: ClipOptions, stop, summary, write: Callable[[str], None]) -> Outcome:
    """Colorize one clip to ``job.target``; the Outcome says what happened.

    ``stop`` is the batch's StopRequest: once set, the clip stops within one
    model call, its temporary file is deleted and the outcome says where it stopped.
    """
    import ddcolor

    began = time.perf_counter()
    done, total = 0, None
    try:
        av = import_av()
        with open_clip(job.source, options.fps) as reader:
            frames = reader.frames()
            first = next(frames, None)  # read first: a rotation flag decides the output's size
            if first is None:
                raise VideoError("has no frames")
            info, total = reader.info, reader.info.frames
            state = ddcolor.TemporalState() if options.temporal > 0 else None
            engine = {"temporal": options.temporal, "state": state} if state is not None else {}
            progress = ClipProgress(relative_name(job.source), total, write=write)
            audio_from = None if job.source.is_dir() else job.source
            try:
                with atomic_path(job.target) as temp, VideoWriter(temp, info, crf=options.crf, audio_from=audio_from) as writer:
                    chunk_size = chunk_frames(model, first.pixels)
                    pending = []
                    for frame in itertools.chain([first], frames):
                        pending.append(frame)
                        if len(pending) == chunk_size:
                            done = _colorize_chunk(model, pending, writer, size, engine, stop, summary, progress, done)
                            pending = []
                    if pending:
                        done = _colorize_chunk(model, pending, writer, size, engine, stop, summary, progress, done)
                    writer.finish()
            finally:
                progress.close()
    except Stopped:
        summary.aborted = True
        where = f"frame {done} of {total}" if total else f"frame {done}"
        return Outcome(job, FAILED, f"stopped by Ctrl-C after {where}; nothing written", time.perf_counter() - began)
    except VideoError as e:
        return Outcome(job, FAILED, f"{e}; nothing written", time.perf_counter() - began)
    except av.error.FFmpegError as e:  # from the encoder or the muxer
        return Outcome(job, FAILED, f"cannot write the video: {_ffmpeg_reason(e)}; nothing written", time.perf_counter() - began)
    except OSError as e:
        return Outcome(job, FAILED, f"cannot write {job.target}: {e.strerror or e}; nothing written", time.perf_counter() - began)
    seconds = time.perf_counter() - began
    stabilized = f"stabilized at {options.temporal:g}" if options.temporal > 0 else "not stabilized"
    notes = [f"{done} frames, {done / seconds:.1f} frames/s, {stabilized}", *writer.notes, *reader.notes]
    if info.rotation:
        notes.append(f"turned upright as its rotation flag ({info.rotation} degrees) asks")
    if not job.source.is_dir() and not info.audio:
        notes.append("the source has no audio")
    if info.left_out:
        kinds = sorted(set(info.left_out))
        notes.append(f"not kept: {', '.join(f'{info.left_out.count(k)} {k} track(s)' for k in kinds)} (only the first video track and the audio are written)")
    return Outcome(job, DONE, "; ".join(notes), seconds)


def _colorize_chunk(model, frames: list[Frame], writer: VideoWriter, size: int, engine: dict, stop, summary, progress, done: int) -> int:
    import torch

    import ddcolor

    if stop.requested:
        raise Stopped
    pixels = np.stack([f.pixels for f in frames])
    images = torch.from_numpy(pixels).float().div_(255) if pixels.dtype == np.uint8 else torch.from_numpy(pixels)

    def step(finished: int, total: int) -> None:
        progress.update(done + finished)
        if stop.requested:  # stop within the chunk: one call is seconds of work on a CPU
            raise Stopped

    began = time.perf_counter()
    try:
        colored = ddcolor.colorize(model, images, size=size, progress=step, **engine)
    except Stopped:
        raise
    except (MemoryError, RuntimeError, ValueError) as e:
        if isinstance(e.__cause__, Stopped):  # in case the engine wraps what the callback raised
            raise Stopped from None
        raise VideoError(f"colorize failed at {frames[0].label}: {e}") from None
    summary.model_seconds += time.perf_counter() - began
    writer.write(to_uint8(colored.numpy()), [f.pts for f in frames], [f.duration for f in frames])
    return done + len(frames)


def chunk_frames(model, first: np.ndarray) -> int:
    """Frames colorized per call: 1 off CUDA; on CUDA as many as CHUNK_BYTES of float input holds, up to MAX_CHUNK_FRAMES."""
    if next(model.parameters()).device.type != "cuda":
        return 1
    height, width = first.shape[:2]
    return max(1, min(MAX_CHUNK_FRAMES, CHUNK_BYTES // (height * width * 3 * 4)))


class ClipProgress:
    """Frames done, frames per second and time left: a tqdm bar on a terminal, else a line every 10 s."""

    def __init__(self, name: str, total: int | None, *, write: Callable[[str], None], stream: TextIO | None = None):
        from tqdm import tqdm

        self._name, self._total, self._write = name, total, write
        self._stream = stream or sys.stderr
        self._began = time.perf_counter()
        self._last_line = None
        self._done = 0
        interactive = hasattr(self._stream, "isatty") and self._stream.isatty()
        self._bar = tqdm(total=total, unit="frame", desc=name, file=self._stream, dynamic_ncols=True, leave=False) if interactive else None

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._done)
        self._done = done
        now = time.perf_counter()
        if self._bar is None and (self._last_line is None or now - self._last_line >= PROGRESS_INTERVAL):
            self._last_line = now
            self._write(self.line(now))

    def line(self, now: float) -> str:
        rate = self._done / max(now - self._began, 1e-9)
        text = f"{self._name}: frame {self._done}" + (f"/{self._total}" if self._total else "") + f", {rate:.1f} frames/s"
        if self._total and rate > 0:
            text += f", {_clock((self._total - self._done) / rate, fraction=False)} left"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ----------------------------------------------------------------------------- helpers


def _codec_name(stream) -> str:
    codec = stream.codec_context.codec
    return getattr(codec, "canonical_name", None) or codec.name


def _clock(seconds, *, fraction: bool = True) -> str:
    seconds = float(seconds)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:05.2f}" if fraction else f"{hours}:{minutes:02d}:{int(secs):02d}"


def _common_unit(a: Fraction, b: Fraction) -> Fraction:
    """The largest time unit both ``a`` and ``b`` are whole multiples of (``a`` when that is too fine for MP4)."""
    unit = Fraction(math.gcd(a.numerator * b.denominator, b.numerator * a.denominator), a.denominator * b.denominator)
    return unit if unit.denominator < 2**31 else a


def _parse_clock(text: str | None) -> Fraction | None:
    """``01:02:03.5`` (Matroska's DURATION tag) in seconds, or None."""
    match = re.fullmatch(r"(\d+):(\d{2}):(\d{2}(?:\.\d+)?)", (text or "").strip())
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return Fraction(int(hours) * 3600 + int(minutes) * 60) + Fraction(seconds)


def _ffmpeg_reason(error: Exception) -> str:
    """FFmpeg's message without the errno and the call it came from."""
    return getattr(error, "strerror", None) or str(error)
