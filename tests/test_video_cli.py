"""``python -m ddcolor colorize`` on video files and frame folders (ddcolor/cli/video.py, ddcolor/video.py).

Clips are made here with PyAV: a few dozen frames of a moving gray scene, with
and without a sine audio track, in the containers people have (MP4, MOV with
PCM audio, MKV, MPEG-TS). The model is the small calibrated checkpoint at a
small working size, so the whole file stays fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ddcolor
import ddcolor.video as video_engine
from ddcolor.cli import main
from tests.support import (
    SINE_HZ, colorfulness, dominant_hz, interrupt, leftovers, probe, scene, started, wait_for_stderr, write_clip,
)

av = pytest.importorskip("av")

REPO = Path(__file__).resolve().parent.parent
SIZE = "64"  # working resolution: enough for color, small enough to be fast


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: at these tiny sizes a second one only waits at every barrier,
    and on a shared 2-core machine that wait made each frame 40 times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- one mixed batch, checked from every side


@pytest.fixture(scope="module")
def batch(tmp_path_factory, small_checkpoint):
    """One run over an image and five clips: stabilized (the default), outputs in out/."""
    folder = tmp_path_factory.mktemp("mixed")
    inputs = folder / "in"
    inputs.mkdir()
    Image.fromarray(scene(0, 64, 48)).save(inputs / "photo.png")
    clips = {
        "sine.mp4": dict(frames=12, width=64, height=48),
        "pcm.mov": dict(frames=8, width=80, height=60, fps=25, audio="pcm_s16le"),
        "odd.mkv": dict(frames=6, width=65, height=49, audio=None),
        "vfr.mp4": dict(times=[0, 1, 2, 4, 5, 9, 10, 11, 15, 16], fps=30, audio=None),
        "tv.ts": dict(frames=8, container="mpegts"),
    }
    for name, options in clips.items():
        write_clip(inputs / name, **options)
    if hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        write_clip(inputs / "phone.mp4", frames=4, width=64, height=48, rotation=90, audio=None)
    calls = []
    real = ddcolor.colorize

    def recording(model, images, **kwargs):
        calls.append((images.shape, kwargs.get("temporal", 0.0), kwargs.get("state")))
        return real(model, images, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ddcolor, "colorize", recording)  # images
        patch.setattr(video_engine, "colorize", recording)  # clips
        code = run("colorize", inputs, "-o", folder / "out", "--model", small_checkpoint, "--size", SIZE)
    return {"code": code, "inputs": inputs, "out": folder / "out", "calls": calls}


def test_a_mixed_batch_writes_one_output_per_image_and_video(batch):
    assert batch["code"] == 0
    names = {p.name for p in batch["out"].iterdir()}
    videos = {"sine_color.mp4", "pcm_color.mp4", "odd_color.mp4", "vfr_color.mp4", "tv_color.mp4"}
    assert videos | {"photo_color.png"} <= names
    assert names - videos - {"photo_color.png", "phone_color.mp4"} == set()  # nothing else, no temporaries


@pytest.mark.parametrize("name", ["sine", "pcm", "odd", "tv"])
def test_same_frames_rate_and_size_in_color(batch, name):
    source = next(batch["inputs"].glob(f"{name}.*"))
    before, after = probe(source), probe(batch["out"] / f"{name}_color.mp4")
    assert after["codec"] == "h264"
    assert len(after["frames"]) == len(before["frames"])
    assert after["rate"] == before["rate"]
    assert after["size"] == before["size"]
    # Each frame's time is kept; the file starts at 0 (MPEG-TS starts later), its audio as far ahead as before.
    assert np.diff(after["times"]) == pytest.approx(np.diff(before["times"]), abs=1e-3)
    assert 0 <= after["times"][0] <= before["times"][0] and after["times"][0] < 0.1
    assert colorfulness(after["frames"]) > 2.0
    # The lightness is the source's own: the output, seen in gray, is the input.
    gray = after["frames"].astype(np.float32).mean(axis=-1)
    assert np.abs(gray - before["frames"][..., 0]).mean() < 8


def test_variable_frame_rate_keeps_every_frame_time(batch):
    before, after = probe(batch["inputs"] / "vfr.mp4"), probe(batch["out"] / "vfr_color.mp4")
    assert after["times"] == pytest.approx(before["times"], abs=1e-3)
    assert np.diff(after["times"]) == pytest.approx(np.array([1, 1, 2, 1, 4, 1, 1, 4, 1]) / 30, abs=1e-3)


@pytest.mark.parametrize("source, seconds", [("sine.mp4", 12 / 24), ("tv.ts", 8 / 24)])
def test_aac_audio_is_copied_untouched(batch, source, seconds):
    before, after = probe(batch["inputs"] / source), probe(batch["out"] / f"{Path(source).stem}_color.mp4")
    assert [a["codec"] for a in after["audio"]] == ["aac"]
    np.testing.assert_array_equal(after["audio"][0]["samples"], before["audio"][0]["samples"])
    assert len(after["audio"][0]["samples"]) / 44100 == pytest.approx(seconds, abs=0.05)


def test_pcm_audio_is_reencoded_to_aac_with_its_length_and_pitch(batch):
    before, after = probe(batch["inputs"] / "pcm.mov"), probe(batch["out"] / "pcm_color.mp4")
    assert [a["codec"] for a in before["audio"]] == ["pcm_s16le"]
    (track,) = after["audio"]
    assert track["codec"] == "aac" and track["rate"] == 44100
    assert len(track["samples"]) / 44100 == pytest.approx(len(before["audio"][0]["samples"]) / 44100, abs=0.05)
    assert dominant_hz(track["samples"], 44100) == pytest.approx(SINE_HZ, abs=5)


def test_videos_without_audio_stay_silent(batch):
    assert probe(batch["out"] / "odd_color.mp4")["audio"] == []


def test_a_rotated_phone_video_comes_out_upright(batch):
    if not (batch["inputs"] / "phone.mp4").exists():
        pytest.skip("this PyAV cannot write a rotation flag (Stream.set_display_rotation)")
    before, after = probe(batch["inputs"] / "phone.mp4"), probe(batch["out"] / "phone_color.mp4")
    assert before["rotation"] == 90 and after["rotation"] == 0
    assert after["size"] == (48, 64)
    upright = np.rot90(before["frames"][..., 0], k=1, axes=(1, 2)).astype(np.float32)
    assert np.abs(after["frames"].astype(np.float32).mean(axis=-1) - upright).mean() < 8


def test_videos_are_stabilized_by_default_with_one_state_per_clip(batch):
    from ddcolor.temporal import RECOMMENDED_STRENGTH

    video_calls = [c for c in batch["calls"] if c[2] is not None]
    assert video_calls and all(temporal == RECOMMENDED_STRENGTH for _, temporal, _ in video_calls)
    states = [state for _, _, state in video_calls]
    assert all(isinstance(s, ddcolor.TemporalState) for s in states)
    # One state carried through all of a clip's calls; each clip its own.
    per_state = {}
    for shape, _, state in video_calls:
        per_state[id(state)] = per_state.get(id(state), 0) + shape[0]
    assert sorted(per_state.values()) == sorted([12, 8, 6, 10, 8] + ([4] if (batch["inputs"] / "phone.mp4").exists() else []))
    assert all(shape[0] == 1 for shape, _, _ in video_calls)  # on a CPU, one frame at a time: memory stays flat
    photo_calls = [c for c in batch["calls"] if c[2] is None]
    assert len(photo_calls) == 1 and photo_calls[0][1] == 0.0  # a photo has no time to stabilize over


# ----------------------------------------------------------------------------- options


def test_temporal_zero_colorizes_each_frame_on_its_own(tmp_path, small_checkpoint, monkeypatch, capsys):
    clip = write_clip(tmp_path / "clip.mp4", frames=8, audio=None, flicker=True)
    calls = []
    real = ddcolor.colorize

    def recording(model, images, **kwargs):
        calls.append(kwargs)
        return real(model, images, **kwargs)

    monkeypatch.setattr(video_engine, "colorize", recording)
    assert run("colorize", clip, "-o", tmp_path / "off", "--model", small_checkpoint, "--size", SIZE, "--temporal", "0") == 0
    assert calls and all(kwargs.get("temporal", 0.0) == 0.0 and kwargs.get("state") is None for kwargs in calls)
    assert "not stabilized" in capsys.readouterr().out
    assert run("colorize", clip, "-o", tmp_path / "on", "--model", small_checkpoint, "--size", SIZE) == 0
    assert "stabilized at" in capsys.readouterr().out
    off, on = probe(tmp_path / "off" / "clip_color.mp4"), probe(tmp_path / "on" / "clip_color.mp4")
    assert len(off["frames"]) == len(on["frames"]) == 8
    # Each frame's colors on their own vs carried along the shot: stabilization changed them.
    assert np.abs(off["frames"][1:].astype(np.float32) - on["frames"][1:]).mean() > 0.5


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_temporal_outside_0_to_1_is_a_usage_error(tmp_path, value, capsys):
    clip = write_clip(tmp_path / "clip.mp4", frames=2, audio=None)
    assert run("colorize", clip, "--temporal", value) == 2
    assert "--temporal" in capsys.readouterr().err


def test_a_folder_of_frames_is_one_clip_in_natural_order(tmp_path, small_checkpoint):
    """Film scans: reel folders of frame_1 ... frame_10 (frame_2 before frame_10)."""
    scans = tmp_path / "scans"
    for reel, count in (("reel1", 10), ("reel2", 3)):
        (scans / reel).mkdir(parents=True)
        for i in range(1, count + 1):
            gray = np.clip(scene(i, 64, 48).astype(int) // 3 + 15 * i, 0, 255).astype(np.uint8)  # brighter with i
            Image.fromarray(gray).save(scans / reel / f"frame_{i}.png")
    (scans / "reel1" / "notes.txt").write_text("scanned 2024")
    code = run("colorize", scans, "-r", "--sequence", "--fps", "18", "-o", tmp_path / "out",
               "--model", small_checkpoint, "--size", SIZE, "--temporal", "0")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["reel1_color.mp4", "reel2_color.mp4"]
    reel1 = probe(tmp_path / "out" / "reel1_color.mp4")
    assert len(reel1["frames"]) == 10 and reel1["rate"] == 18 and reel1["size"] == (64, 48)
    assert reel1["audio"] == []
    brightness = reel1["frames"].astype(np.float32).mean(axis=(1, 2, 3))
    assert np.all(np.diff(brightness) > 5), brightness  # frame_1, frame_2, ..., frame_10: in order
    assert colorfulness(reel1["frames"]) > 2.0
    assert len(probe(tmp_path / "out" / "reel2_color.mp4")["frames"]) == 3


def test_frames_of_different_sizes_fail_the_sequence(tmp_path, small_checkpoint, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(scene(i, 64, 48)).save(frames / f"f{i}.png")
    Image.fromarray(scene(3, 62, 48)).save(frames / "f3.png")
    code = run("colorize", frames, "--sequence", "-o", tmp_path / "out", "--model", small_checkpoint, "--size", SIZE, "--temporal", "0")
    assert code == 1
    assert "f3.png is 62x48" in capsys.readouterr().out
    assert leftovers(tmp_path / "out") == []


def test_fps_values(tmp_path, capsys):
    from ddcolor.cli.video import parse_fps

    assert parse_fps("24") == 24 and parse_fps("18") == 18
    assert parse_fps("23.976") == Fraction(24000, 1001) and parse_fps("29.97") == Fraction(30000, 1001)
    assert parse_fps("24000/1001") == Fraction(24000, 1001) and parse_fps("12.5") == Fraction(25, 2)
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(scene(0, 64, 48)).save(frames / "f1.png")
    assert run("colorize", frames, "--sequence", "--fps", "0") == 2
    assert "--fps 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- nothing half-written


def test_corrupt_and_truncated_videos_leave_nothing_and_are_reported(tmp_path, small_checkpoint, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = write_clip(inputs / "good.mp4", frames=6, audio=None)
    damaged = write_clip(inputs / "damaged.mp4", frames=16, width=96, height=64, noise=True)
    data = bytearray(damaged.read_bytes())
    third = len(data) // 3
    data[third : third + 4000] = bytes(4000)  # zeros over frames a third into the file
    damaged.write_bytes(bytes(data))
    cut = write_clip(inputs / "cut.mp4", frames=8, width=96, height=64, noise=True)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 6 // 10])  # index at the end: gone
    (inputs / "empty.mkv").write_bytes(b"")

    code = run("colorize", inputs, "-o", tmp_path / "out", "--model", small_checkpoint, "--size", SIZE, "--temporal", "0")
    out = capsys.readouterr().out
    assert code == 1
    assert leftovers(tmp_path / "out") == ["good_color.mp4"]
    assert "colorized 1, skipped 0, failed 3" in out
    lines = {line.split(": ")[1].rsplit("/", 1)[-1]: line for line in out.splitlines() if line.startswith("  failed:")}
    assert "cannot decode frame" in lines["damaged.mp4"] and "nothing written" in lines["damaged.mp4"]
    assert "cannot open as a video" in lines["cut.mp4"]
    assert "cannot open as a video" in lines["empty.mkv"]
    assert len(probe(tmp_path / "out" / "good_color.mp4")["frames"]) == 6


def test_a_video_cut_between_frames_is_reported_as_truncated(tmp_path, small_checkpoint, capsys):
    """The index up front (as web MP4s have it) promises 2 s; the data stops cleanly after frame 8."""
    clip = tmp_path / "short.mp4"
    with av.open(str(clip), "w", options={"movflags": "+faststart"}) as output:
        video = output.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 96, 64, "yuv420p"
        rng = np.random.default_rng(1)
        for i in range(48):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), format="rgb24")
            frame.pts = i
            output.mux(video.encode(frame))
        output.mux(video.encode())
    with av.open(str(clip)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    position, size = sorted(packets)[7]
    clip.write_bytes(clip.read_bytes()[: position + size])
    assert run("colorize", clip, "-o", tmp_path / "out", "--model", small_checkpoint, "--size", SIZE, "--temporal", "0") == 1
    out = capsys.readouterr().out
    assert "short.mp4: ends after frame" in out and "of 0:00:02.00 (the file is truncated or damaged); nothing written" in out
    assert leftovers(tmp_path / "out") == []


def test_ctrl_c_stops_a_video_promptly_and_leaves_no_file(tmp_path, small_checkpoint):
    """SIGINT to a real process in the middle of a long clip: it stops at the next
    frame, deletes the temporary file, reports where it stopped, exits 130."""
    clip = write_clip(tmp_path / "long.mp4", frames=400)
    write_clip(tmp_path / "next.mp4", frames=4)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ddcolor", "colorize", clip, tmp_path / "next.mp4", "-o", out,
               "--model", small_checkpoint, "--size", SIZE, "--temporal", "0"]
    with started(command, env={**os.environ, "OMP_NUM_THREADS": "1"}) as process:
        wait_for_stderr(process, b"long.mp4: frame", timeout=60)  # the first frames are colorized: the clip is under way
        assert leftovers(out) and all(name.endswith(".part") for name in leftovers(out))  # written as it goes
        stdout, stderr = interrupt(process, timeout=60)
    assert process.returncode == 130, stderr
    assert "a video stops at its next frames and is not written" in stderr
    assert leftovers(out) == []
    assert "stopped by Ctrl-C after frame" in stdout and "of 400; nothing written" in stdout
    assert "interrupted: 1 image(s) not started" in stdout


def test_skip_existing_resumes_a_batch_of_clips(tmp_path, small_checkpoint, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b"):
        write_clip(inputs / f"{name}.mp4", frames=4, audio=None)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_color.mp4").write_bytes(b"finished earlier")
    common = ["colorize", inputs, "-o", out, "--model", small_checkpoint, "--size", SIZE, "--temporal", "0"]
    assert run(*common) == 2
    assert "--skip-existing" in capsys.readouterr().err
    assert run(*common, "--skip-existing") == 0
    assert "colorized 1, skipped 1, failed 0" in capsys.readouterr().out
    assert (out / "a_color.mp4").read_bytes() == b"finished earlier"
    assert len(probe(out / "b_color.mp4")["frames"]) == 4


# ----------------------------------------------------------------------------- PyAV


def test_without_pyav_the_error_says_how_to_install_it(tmp_path, small_checkpoint, monkeypatch, capsys):
    clip = write_clip(tmp_path / "clip.mp4", frames=2, audio=None)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    assert run("colorize", clip, "-o", tmp_path / "out", "--model", small_checkpoint) == 1
    assert "pip install av" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_importing_the_cli_and_the_pack_does_not_import_pyav():
    probe_code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import ddcolor, ddcolor.cli.commands, ddcolor.cli.video;"
        "ddcolor.cli.commands.build_parser();"
        "from tests.pack import load_pack; load_pack();"
        "print('av' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe_code, str(REPO)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
