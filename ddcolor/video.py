"""Video, streamed with PyAV: the engine of the command line and of the ComfyUI node.

``colorize_video`` runs one clip: frames come from a reader one at a time, are
colorized one at a time on a CPU or a few at a time on a GPU with one
``TemporalState`` for the whole clip, and are encoded as they come, so memory
stays flat however long the clip is. The output, H.264 in MP4, is written
under a hidden temporary name and renamed when complete: a stop, a corrupt
frame or a full disk leave no partial file.

What the output keeps from the source: the frame count, each frame's
timestamp (so variable frame rate keeps its timing), the frame size as
displayed (a rotation flag is applied to the pixels) and every audio track,
copied as it is when MP4 holds its codec and re-encoded to AAC otherwise.
Colors are written as BT.709 (the primaries of sRGB, which the model
predicts), tagged so players convert them back exactly.

Readers: ``VideoReader`` (a video file, or its bytes) and ``ArrayReader``
(frames already in memory with their sound as a waveform, as ComfyUI's Create
Video holds them); the command line adds one for folders of scanned frames.
A reader is a context manager with ``info`` (a ClipInfo, set on entering),
``frames()``, ``notes`` (what the user should know about the source) and
``audio(output)``, the sound to write beside its frames.

PyAV (``av``) is imported only when a clip is opened; ComfyUI installs have
it, and its wheels carry FFmpeg (with x264), so nothing else is needed.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .output import atomic_path, to_uint8
from .pipeline import colorize
from .temporal import TemporalState

DEFAULT_CRF = 18  # x264's scale: 0 lossless, 18 visually lossless, 23 its default, 51 worst
DEFAULT_RATE = Fraction(24)  # film's rate: for a file that states none, and for scanned frames
INSTALL_HINT = (
    "reading and writing video needs PyAV: pip install av "
    "(ComfyUI already has it: run this with ComfyUI's Python, e.g. python_embeded\\python.exe -m ddcolor)"
)
# Audio codecs copied into MP4 untouched: those MP4 players play. Anything else
# (PCM from DV and AVI captures, Vorbis, MP2, WMA, ...) is re-encoded to AAC.
MP4_AUDIO_COPY = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "flac", "opus"})
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
AAC_MAX_CHANNELS = 8
# Frames per model call on a CUDA (or ROCm) GPU, which batches them: as many as
# 128 MiB of float input holds (11 of 720p, 5 of 1080p, 1 of 4K), held again in
# the colorized copy. Other devices take one at a time (a CPU gains nothing from batching).
CHUNK_BYTES = 128 << 20
MAX_CHUNK_FRAMES = 16
# BT.709 in AVCOL_* numbering (matrix, primaries and transfer share the value 1); limited ("tv") range.
BT709, TV_RANGE = 1, 1
# Samples of an in-memory waveform handed to the AAC encoder at once.
WAVEFORM_BLOCK = 1 << 14


class VideoError(Exception):
    """A clip that cannot be read or written; the message says what and where (frame, time)."""


def import_av():
    """The ``av`` module, or a VideoError that says how to install it."""
    try:
        import av
    except ImportError as e:
        raise VideoError(f"{INSTALL_HINT} ({e})") from None
    return av


def snap_rate(rate) -> Fraction:
    """A frame rate as an exact fraction: NTSC decimals (29.97, 23.976) mean /1001, and
    a float's binary noise (29.97 is 29.969999999999998863...) goes."""
    rate = Fraction(rate)
    if rate.denominator > 1001:
        rate = rate.limit_denominator(1001)
    ntsc = rate * Fraction(1001, 1000)
    if rate.denominator != 1 and abs(ntsc - round(ntsc)) < Fraction(1, 500):
        rate = Fraction(round(ntsc) * 1000, 1001)
    return rate


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
    pixels: np.ndarray  # (H, W, C) uint8 (video) or float32 in [0, 1] (images, arrays), C = 1 or 3
    pts: int  # in ClipInfo.time_base, from 0, strictly increasing
    duration: int  # in ClipInfo.time_base; 0 when unknown
    label: str  # where it came from, for messages: "frame 12 (0:00:00.50)" or a file name


def _open_input(source: Path | str | bytes):
    """An input container on a file, or on a file's bytes held in memory."""
    av = import_av()
    return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), metadata_errors="ignore")


class VideoReader:
    """A video file's frames in display order and orientation, decoded one at a time.

    ``source``: the file's path, or its bytes. A frame FFmpeg cannot decode,
    or a file that ends well before the length its header gives, raises
    VideoError. A frame the decoder repaired (concealed damage, as every player
    shows it) is kept and listed in ``notes``.
    """

    def __init__(self, source: Path | str | bytes):
        self.source = source
        self.notes: list[str] = []
        self._container = None

    def __enter__(self) -> "VideoReader":
        av = import_av()
        try:
            self._container = _open_input(self.source)
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
        rate = Fraction(stream.guessed_rate or stream.average_rate or stream.base_rate or DEFAULT_RATE)
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
        if not self.info.audio:
            self.notes.append("the source has no audio")
        return self

    def __exit__(self, *exc) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def audio(self, output) -> "AudioTracks | None":
        """The source's audio tracks, read in step with the video written to ``output``."""
        return AudioTracks(self.source, output) if self.info.audio else None

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
                raise VideoError(f"cannot decode frame {count + 1} (after {clock(end * tb)}): {_ffmpeg_reason(e)}") from None
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
            label = f"frame {count} ({clock(pts * tb)})"
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
                f"ends after frame {count}, at {clock(end * tb)} of {clock(self._end)} (the file is truncated or damaged)"
            )
        if repaired:
            more = f" and {len(repaired) - 3} more" if len(repaired) > 3 else ""
            self.notes.append(f"damaged in the source and repaired by the decoder as players show them: {', '.join(repaired[:3])}{more}")


class ArrayReader:
    """Frames already in memory, (N, H, W, C) float in [0, 1] (a torch tensor or a numpy
    array, C = 1, 3 or 4; alpha is dropped), one every 1/``rate`` seconds, with their
    sound as a (channels, samples) float ``waveform`` at ``sample_rate``: what ComfyUI's
    Create Video holds. Frames are handed on one at a time; nothing is copied whole."""

    def __init__(self, frames, rate, waveform=None, sample_rate: int | None = None):
        if len(frames.shape) != 4 or frames.shape[0] == 0 or frames.shape[-1] not in (1, 3, 4):
            raise VideoError(f"the frames must be shaped (N, H, W, C) with N > 0 and C = 1, 3 or 4; got {tuple(frames.shape)}")
        if not rate or rate <= 0:
            raise VideoError(f"the frame rate must be above 0; got {rate}")
        if waveform is not None and (len(waveform.shape) != 2 or not sample_rate or sample_rate <= 0):
            raise VideoError(f"the sound must be (channels, samples) with a sample rate above 0; got {tuple(waveform.shape)} at {sample_rate}")
        self._frames, self._waveform, self._sample_rate = frames, waveform, sample_rate
        self.rate = snap_rate(rate)
        self.notes: list[str] = []

    def __enter__(self) -> "ArrayReader":
        count, height, width = self._frames.shape[:3]
        self.info = ClipInfo(width=width, height=height, frames=count, rate=self.rate, time_base=1 / self.rate)
        return self

    def __exit__(self, *exc) -> None:
        pass

    def audio(self, output) -> "WaveformAudio | None":
        return None if self._waveform is None else WaveformAudio(self._waveform, self._sample_rate, output)

    def frames(self) -> Iterator[Frame]:
        for index in range(self.info.frames):
            pixels = self._frames[index]
            pixels = pixels.detach().to("cpu", torch.float32).numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels, np.float32)
            yield Frame(pixels[..., :3], index, 1, f"frame {index + 1} ({clock(index / self.rate)})")


# ----------------------------------------------------------------------------- writing


class VideoWriter:
    """H.264 in MP4 at ``path``: frames as they come, and the sound ``audio(output)``
    gives (a reader's ``audio``) interleaved with them."""

    def __init__(self, path: Path, info: ClipInfo, *, crf: int = DEFAULT_CRF, audio: Callable[[object], object] | None = None):
        self.path = path
        self.info = info
        self.crf = crf
        self.notes: list[str] = []
        self._make_audio = audio
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
        if self._make_audio is not None:
            self._audio = self._make_audio(output)
            if self._audio is not None:
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


def _aac_stream(output, sample_rate: int, layout: str):
    """An AAC track in ``output`` for sound of this rate and layout (the encoder converts what it is given)."""
    out = output.add_stream("aac", rate=sample_rate if sample_rate in AAC_RATES else 48000)
    out.layout = layout
    channels = out.layout.nb_channels
    out.bit_rate = 96_000 * min(channels, 2) + 64_000 * max(channels - 2, 0)
    return out


class AudioTracks:
    """The audio tracks of a source file, read by a second demuxer in step with
    the video being written, so the output interleaves them as the source does."""

    def __init__(self, source: Path | str | bytes, output):
        self.notes: list[str] = []
        self._output = output
        self._input = _open_input(source)
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
                layout = stream.codec_context.layout
                out = _aac_stream(output, stream.codec_context.sample_rate, layout.name if layout.nb_channels <= AAC_MAX_CHANNELS else "stereo")
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
            raise VideoError(f"cannot decode the audio at {clock((packet.pts or 0) * packet.time_base)}: {_ffmpeg_reason(e)}") from None
        for frame in frames:
            if frame.pts is not None:
                frame.pts -= offset
            self._output.mux(out.encode(frame))

    def close(self) -> None:
        self._input.close()


class WaveformAudio:
    """Sound held in memory, (channels, samples) float in [-1, 1], encoded to AAC in
    step with the video being written (ComfyUI's AUDIO holds sound this way)."""

    def __init__(self, waveform, sample_rate: int, output):
        samples = waveform.detach().to("cpu", torch.float32).numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform, np.float32)
        self.notes: list[str] = []
        if samples.shape[0] > 2:  # a waveform names no speaker layout beyond mono and stereo
            self.notes.append(f"the sound has {samples.shape[0]} channels and no speaker layout: the first two are kept as stereo")
            samples = samples[:2]
        self._samples, self._rate, self._written = samples, int(sample_rate), 0
        self._layout = "mono" if samples.shape[0] == 1 else "stereo"
        self._output = output
        self._out = _aac_stream(output, self._rate, self._layout)
        self.notes.append("audio encoded to AAC")

    def mux_until(self, seconds: Fraction | None) -> None:
        """Write the sound up to ``seconds`` of output time (None: all of it)."""
        av = import_av()
        total = self._samples.shape[1]
        end = total if seconds is None else min(total, math.ceil(seconds * self._rate))
        while self._written < end:
            stop = min(end, self._written + WAVEFORM_BLOCK)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(self._samples[:, self._written : stop]), format="fltp", layout=self._layout)
            frame.sample_rate, frame.pts, frame.time_base = self._rate, self._written, Fraction(1, self._rate)
            self._output.mux(self._out.encode(frame))
            self._written = stop
        if seconds is None:
            self._output.mux(self._out.encode(None))

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- colorizing a clip


@dataclass(frozen=True)
class ClipResult:
    frames: int  # colorized and written
    seconds: float  # the whole clip, reading and writing included
    model_seconds: float  # inside ddcolor.colorize
    notes: tuple[str, ...]  # what the output kept, changed or left out, for the user


def colorize_video(
    model, reader, target: Path, *, size: int, temporal: float, crf: int = DEFAULT_CRF,
    progress: Callable[[int, int | None], None] | None = None,
) -> ClipResult:
    """Colorize the clip ``reader`` gives (not yet entered) into an H.264 MP4 at ``target``.

    ``temporal``: the stabilization strength, carried through the whole clip
    (0: each frame on its own). ``progress(done, total)`` is called as frames
    are colorized, within each model call (``total``: the frames expected,
    None if unknown); whatever it raises stops the clip within one model call
    and passes through unchanged. A clip that cannot be read, colorized or
    written raises VideoError; errors of the file system (OSError) pass
    through. Whatever is raised, nothing is left at ``target`` or beside it.
    """
    began = time.perf_counter()
    av = import_av()
    with reader:
        frames = reader.frames()
        first = next(frames, None)  # read first: a rotation flag decides the output's size
        if first is None:
            raise VideoError("has no frames")
        info = reader.info
        try:
            with atomic_path(target) as temp, VideoWriter(temp, info, crf=crf, audio=reader.audio) as writer:
                run = _ClipRun(model, writer, size=size, temporal=temporal, total=info.frames, progress=progress)
                chunk_size = chunk_frames(model, first.pixels)
                pending: list[Frame] = []
                for frame in itertools.chain([first], frames):
                    pending.append(frame)
                    if len(pending) == chunk_size:
                        run.colorize(pending)
                        pending = []
                if pending:
                    run.colorize(pending)
                writer.finish()
        except av.error.FFmpegError as e:  # from the encoder or the muxer
            raise VideoError(f"cannot write the video: {_ffmpeg_reason(e)}") from None
    notes = [*writer.notes, *reader.notes]
    if info.rotation:
        notes.append(f"turned upright as its rotation flag ({info.rotation} degrees) asks")
    if info.left_out:
        kinds = sorted(set(info.left_out))
        notes.append(f"not kept: {', '.join(f'{info.left_out.count(k)} {k} track(s)' for k in kinds)} (only the first video track and the audio are written)")
    return ClipResult(run.done, time.perf_counter() - began, run.model_seconds, tuple(notes))


class _ClipRun:
    """One clip under way: frames colorized in order with one stabilization state, then encoded."""

    def __init__(self, model, writer: VideoWriter, *, size: int, temporal: float, total: int | None, progress):
        self.model, self.writer, self.size, self.temporal = model, writer, size, temporal
        self.state = TemporalState() if temporal > 0 else None
        self.total, self.progress = total, progress
        self.done = 0
        self.model_seconds = 0.0

    def colorize(self, frames: list[Frame]) -> None:
        pixels = np.stack([f.pixels for f in frames])
        images = torch.from_numpy(pixels).float().div_(255) if pixels.dtype == np.uint8 else torch.from_numpy(pixels)
        stopped = []  # what the progress callback raised: a stop, not a failure of the model

        def step(finished: int, _chunk: int) -> None:
            if self.progress is not None:
                try:
                    self.progress(self.done + finished, self.total)
                except BaseException as e:
                    stopped.append(e)
                    raise

        began = time.perf_counter()
        try:
            colored = colorize(self.model, images, size=self.size, progress=step, temporal=self.temporal, state=self.state)
        except (MemoryError, RuntimeError, ValueError) as e:
            if stopped:
                raise
            raise VideoError(f"colorize failed at {frames[0].label}: {e}") from None
        self.model_seconds += time.perf_counter() - began
        self.writer.write(to_uint8(colored.numpy()), [f.pts for f in frames], [f.duration for f in frames])
        self.done += len(frames)


def chunk_frames(model, first: np.ndarray) -> int:
    """Frames colorized per call: 1 off CUDA; on CUDA as many as CHUNK_BYTES of float input holds, up to MAX_CHUNK_FRAMES."""
    if next(model.parameters()).device.type != "cuda":
        return 1
    height, width = first.shape[:2]
    return max(1, min(MAX_CHUNK_FRAMES, CHUNK_BYTES // (height * width * 3 * 4)))


# ----------------------------------------------------------------------------- helpers


def clock(seconds, *, fraction: bool = True) -> str:
    """``0:01:02.50`` (or ``0:01:02`` without the fraction) for a time in seconds."""
    seconds = float(seconds)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:05.2f}" if fraction else f"{hours}:{minutes:02d}:{int(secs):02d}"


def _ffmpeg_reason(error: Exception) -> str:
    """FFmpeg's message without the errno and the call it came from."""
    return getattr(error, "strerror", None) or str(error)


def _codec_name(stream) -> str:
    codec = stream.codec_context.codec
    return getattr(codec, "canonical_name", None) or codec.name


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
