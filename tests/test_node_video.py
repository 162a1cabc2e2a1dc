"""The "DDColor Colorize Video" node in CI: a clip in, a colorized clip out, streamed; Cancel; Create Video input.

ComfyUI is replaced by the stand-ins of tests/fake_comfy.py (its VIDEO classes
included); the model, the engine (ddcolor/video.py) and PyAV are real: the
"small" calibrated checkpoint at a small working size on short generated clips
with sound. tests/test_e2e_comfyui.py runs the same node inside a real ComfyUI,
between Load Video and Save Video.
"""

from __future__ import annotations

import io
import sys
from fractions import Fraction

import pytest
import torch

from tests import fake_comfy
from tests.pack import load_pack
from tests.support import colorfulness, dominant_hz, leftovers, probe, write_clip

av = pytest.importorskip("av")

pack = load_pack()
colorize_module = sys.modules[f"{pack.__name__}.nodes.colorize"]
models_module = sys.modules[f"{pack.__name__}.nodes.models"]
video_engine = sys.modules[f"{pack.__name__}.ddcolor.video"]

NODE = "DDColor-colorize-video"
SIZE = 64  # the working size: enough for color, small enough to be fast
BT709 = 1  # AVCOL_PRI_BT709 = AVCOL_TRC_BT709 = AVCOL_SPC_BT709


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: at these tiny sizes a second one only waits (see test_video_cli.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def comfy(monkeypatch, tmp_path, small_checkpoint):
    folder = tmp_path / "comfyui" / "models" / "ddcolor"
    folder.mkdir(parents=True)
    (folder / "ddcolor_modelscope.pth").symlink_to(small_checkpoint)
    record = fake_comfy.install(monkeypatch, folder)
    record.temp = tmp_path / "comfyui" / "temp"
    monkeypatch.setattr(colorize_module, "_LOADED", models_module.ModelCache())
    return record


@pytest.fixture
def node():
    return pack.NODE_CLASS_MAPPINGS[NODE]()


@pytest.fixture
def engine_calls(monkeypatch):
    """The keyword arguments (and ``frames``: how many it got) of every ddcolor.colorize call the video engine makes."""
    calls = []
    real = video_engine.colorize

    def spy(model, images, **kwargs):
        calls.append({"frames": images.shape[0], **kwargs})
        return real(model, images, **kwargs)

    monkeypatch.setattr(video_engine, "colorize", spy)
    return calls


def run(node, video, temporal=0.9, crf=18):
    (result,) = node.colorize_clip(video, "fp32", SIZE, "ddcolor_modelscope", temporal, crf)
    return result


def output_path(result):
    return result.get_stream_source()


# ----------------------------------------------------------------------------- Load Video's VIDEO: a file


def test_a_file_comes_out_colorized_with_its_frames_timing_size_and_sound(comfy, node, tmp_path, engine_calls):
    source = write_clip(tmp_path / "clip.mp4", frames=10, width=64, height=48, fps=24)
    result = run(node, fake_comfy.VideoFromFile(str(source)))
    before, after = probe(source), probe(output_path(result))
    assert isinstance(result, fake_comfy.VideoFromFile)
    assert after["frames"].shape == before["frames"].shape  # frame count and size
    assert after["times"] == before["times"] and after["rate"] == before["rate"] == 24
    assert [(a["codec"], a["rate"]) for a in after["audio"]] == [("aac", 44100)]
    assert dominant_hz(after["audio"][0]["samples"], 44100) == pytest.approx(440, abs=5)
    assert colorfulness(after["frames"]) > 2.0 and colorfulness(before["frames"]) < 1.0
    # Progress in frames, one step per model call, on one bar; one stabilization state for the whole clip.
    assert comfy.bars == [10] and comfy.progress == [(i, 10) for i in range(1, 11)]
    states = {id(call["state"]) for call in engine_calls}
    assert len(engine_calls) == 10 and len(states) == 1 and engine_calls[0]["state"] is not None
    assert all(call["temporal"] == 0.9 and call["size"] == SIZE for call in engine_calls)


def test_the_output_is_tagged_bt709_and_complete_in_comfyuis_temp_folder(comfy, node, tmp_path):
    source = write_clip(tmp_path / "clip.mp4", frames=3, audio=None)
    path = output_path(run(node, fake_comfy.VideoFromFile(str(source)), temporal=0.0, crf=0))
    with av.open(path) as container:
        context = container.streams.video[0].codec_context
        assert (context.color_primaries, context.color_trc, context.colorspace) == (BT709, BT709, BT709)
    assert leftovers(comfy.temp) == [f"ddcolor/{path.rsplit('/', 1)[-1]}"]  # no temporary left beside it


def test_a_file_held_in_memory_is_read_too(comfy, node, tmp_path):
    source = write_clip(tmp_path / "clip.mp4", frames=4)
    after = probe(output_path(run(node, fake_comfy.VideoFromFile(io.BytesIO(source.read_bytes())))))
    assert len(after["frames"]) == 4 and len(after["audio"]) == 1


# ----------------------------------------------------------------------------- Cancel and bad input


def test_cancel_stops_within_one_frame_and_leaves_no_file(comfy, node, tmp_path):
    source = write_clip(tmp_path / "clip.mp4", frames=12)

    def cancel_at_frame_3(done, total):
        if done == 3:
            comfy.interrupted = True

    comfy.on_progress = cancel_at_frame_3
    with pytest.raises(fake_comfy.InterruptProcessingException):
        run(node, fake_comfy.VideoFromFile(str(source)))
    assert comfy.progress == [(1, 12), (2, 12), (3, 12)]  # no model call after the Cancel
    assert leftovers(comfy.temp) == []  # neither the output nor its temporary file


def test_a_file_that_is_no_video_names_the_node_and_the_problem(comfy, node, tmp_path):
    junk = tmp_path / "notes.mp4"
    junk.write_text("not a video")
    with pytest.raises(video_engine.VideoError, match=r"DDColor Colorize Video could not colorize the input video: cannot open as a video .*Nothing was written"):
        run(node, fake_comfy.VideoFromFile(str(junk)))
    assert leftovers(comfy.temp) == []


# ----------------------------------------------------------------------------- Create Video's VIDEO: frames in memory


def components(frames: int, rate, seconds_of_sound: float | None, height: int = 40, width: int = 56):
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, width).expand(frames, height, width)
    gray = (0.7 * ramp + 0.3 * torch.rand(frames, height, width, generator=generator)).unsqueeze(-1).expand(-1, -1, -1, 3)
    audio = None
    if seconds_of_sound is not None:
        t = torch.arange(int(44100 * seconds_of_sound)) / 44100
        tone = 0.3 * torch.sin(2 * torch.pi * 440 * t)
        audio = {"waveform": torch.stack([tone, tone])[None], "sample_rate": 44100}  # (1, channels, samples)
    return fake_comfy.VideoFromComponents(fake_comfy.VideoComponents(images=gray.contiguous(), frame_rate=rate, audio=audio))


def test_frames_from_create_video_are_streamed_with_their_sound_and_rate(comfy, node, engine_calls):
    video = components(8, Fraction(24), seconds_of_sound=8 / 24)
    after = probe(output_path(run(node, video)))
    assert after["frames"].shape == (8, 40, 56, 3) and after["rate"] == 24
    assert after["times"] == pytest.approx([i / 24 for i in range(8)])
    (sound,) = after["audio"]
    assert sound["codec"] == "aac" and sound["rate"] == 44100
    assert len(sound["samples"]) / 44100 == pytest.approx(8 / 24, abs=0.05)
    assert dominant_hz(sound["samples"], 44100) == pytest.approx(440, abs=5)
    assert colorfulness(after["frames"]) > 2.0
    assert [call["frames"] for call in engine_calls] == [1] * 8  # streamed from the tensor, one frame per call on a CPU
    assert comfy.progress[-1] == (8, 8)


def test_create_videos_float_rate_becomes_the_exact_ntsc_rate(comfy, node):
    # Get Video Components gives the rate as a float, and Create Video makes a Fraction of it.
    after = probe(output_path(run(node, components(3, Fraction(29.97), seconds_of_sound=None))))
    assert after["rate"] == Fraction(30000, 1001) and len(after["frames"]) == 3 and after["audio"] == []


# ----------------------------------------------------------------------------- the node's contract


def test_widgets_are_the_colorize_nodes_plus_crf_with_the_recommended_strength():
    cls = pack.NODE_CLASS_MAPPINGS[NODE]
    types = cls.INPUT_TYPES()
    assert list(types) == ["required"]
    assert list(types["required"]) == ["video", "precision", "size", "model", "temporal", "crf"]
    image_node = pack.NODE_CLASS_MAPPINGS["DDColor-ddcolorize"].INPUT_TYPES()
    for name in ("precision", "size", "model"):
        assert types["required"][name] == {**image_node["required"], **image_node["optional"]}[name]
    assert types["required"]["video"][0] == "VIDEO"
    temporal = types["required"]["temporal"][1]
    assert temporal["default"] == colorize_module.RECOMMENDED_STRENGTH and (temporal["min"], temporal["max"]) == (0.0, 1.0)
    crf = types["required"]["crf"]
    assert crf[0] == "INT" and {k: crf[1][k] for k in ("default", "min", "max")} == {"default": 18, "min": 0, "max": 51}
    assert all(declaration[1]["tooltip"] for declaration in types["required"].values())
    assert cls.RETURN_TYPES == ("VIDEO",) and cls.OUTPUT_TOOLTIPS[0] and cls.CATEGORY == "image/color"
    assert pack.NODE_DISPLAY_NAME_MAPPINGS[NODE] == "DDColor Colorize Video"
