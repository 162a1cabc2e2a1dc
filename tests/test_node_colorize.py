"""The node's colorize path in CI: chunks, progress, Cancel, out of memory, temporal, the model cache.

ComfyUI's model management is replaced by the stand-ins of tests/fake_comfy.py,
which record what the node asks of it; the model and the engine are real (the
"small" calibrated checkpoint, tiny frames). The same behaviour inside a real
ComfyUI is checked by tests/test_e2e_comfyui.py when a ComfyUI checkout is there.
"""

from __future__ import annotations

import gc
import os
import sys
import weakref

import pytest
import torch

from tests import fake_comfy
from tests.pack import load_pack

pack = load_pack()
node_module = sys.modules[f"{pack.__name__}.nodes.colorize"]
models_module = sys.modules[f"{pack.__name__}.nodes.models"]
engine = sys.modules[f"{pack.__name__}.ddcolor"]
resolve_precision, precision_plan = engine.resolve_precision, engine.precision_plan

NODE = "DDColor-ddcolorize"
NODE_RUN_CODE = pack.NODE_CLASS_MAPPINGS[NODE].colorize_images.__code__
FRAMES, HEIGHT, WIDTH, SIZE = 4, 40, 56, 64


@pytest.fixture
def comfy(monkeypatch, tmp_path, small_checkpoint):
    """ComfyUI stand-ins with models/ddcolor holding the small checkpoint under two names."""
    folder = tmp_path / "models" / "ddcolor"
    folder.mkdir(parents=True)
    (folder / "ddcolor_modelscope.pth").symlink_to(small_checkpoint)
    (folder / "other.pth").write_bytes(small_checkpoint.read_bytes())  # another file, same weights
    record = fake_comfy.install(monkeypatch, folder)
    record.folder = folder
    # A fresh cache per test: the node keeps its last model in a module global.
    monkeypatch.setattr(node_module, "_LOADED", models_module.ModelCache())
    return record


@pytest.fixture
def node():
    return pack.NODE_CLASS_MAPPINGS[NODE]()


@pytest.fixture
def frames():
    generator = torch.Generator().manual_seed(0)
    # A smooth gradient with noise: something like a picture, different in every frame.
    ramp = torch.linspace(0, 1, WIDTH).expand(FRAMES, HEIGHT, WIDTH)
    gray = (0.7 * ramp + 0.3 * torch.rand(FRAMES, HEIGHT, WIDTH, generator=generator)).unsqueeze(-1)
    return gray.expand(-1, -1, -1, 3).contiguous()


@pytest.fixture
def engine_calls(monkeypatch):
    """Every call the node makes to ddcolor.colorize: its keyword arguments and the tensor it returned."""
    calls = []
    real = node_module.colorize

    def spy(model, images, **kwargs):
        calls.append({"kwargs": kwargs, "images": images})
        calls[-1]["result"] = result = real(model, images, **kwargs)
        return result

    monkeypatch.setattr(node_module, "colorize", spy)
    return calls


def the_model(comfy):
    (patcher,) = comfy.patchers
    return patcher.model


# ----------------------------------------------------------------------------- chunks and progress


def test_a_batch_runs_in_chunks_with_progress_and_the_engines_result(comfy, node, frames, engine_calls):
    (colored,) = node.colorize_images(frames, "fp32", SIZE)
    assert colored.shape == (FRAMES, HEIGHT, WIDTH, 3) and colored.dtype == torch.float32
    # One progress step per chunk (one frame per chunk on a CPU), on one bar for the batch.
    assert comfy.bars == [FRAMES]
    assert comfy.progress == [(i, FRAMES) for i in range(1, FRAMES + 1)]
    # The model is handed to ComfyUI's memory management whole, with room for one chunk's activations.
    model = the_model(comfy)
    assert comfy.calls == [("load_models_gpu", (comfy.patchers[0],), engine.activation_bytes(model, SIZE), True)]
    expected = engine.colorize(model, frames, size=SIZE)
    torch.testing.assert_close(colored, expected, rtol=0, atol=1e-5)
    assert not torch.equal(colored[..., 0], colored[..., 2])  # colors, not gray


def test_the_output_is_the_engines_tensor_not_a_copy(comfy, node, frames, engine_calls):
    """A clip is one IMAGE batch: the node must not hold a second full-size copy of it."""
    (colored,) = node.colorize_images(frames, "fp32", SIZE)
    (call,) = engine_calls
    assert call["images"] is frames  # the whole batch in one call, not a copy or a split
    assert colored is call["result"]  # .to(intermediate_device()) was a no-op


def test_an_off_grid_size_is_rounded(comfy, node, frames, engine_calls):
    node.colorize_images(frames[:1], "fp32", 70)
    assert engine_calls[0]["kwargs"]["size"] == 64


# ----------------------------------------------------------------------------- Cancel


def test_cancel_stops_between_chunks(comfy, node, frames):
    def cancel_after_first_chunk(done, total):
        comfy.interrupted = True

    comfy.on_progress = cancel_after_first_chunk
    with pytest.raises(fake_comfy.InterruptProcessingException):
        node.colorize_images(frames, "fp32", SIZE)
    assert comfy.progress == [(1, FRAMES)]  # no chunk ran after the Cancel


def test_cancel_before_the_run_loads_nothing(comfy, node, frames):
    comfy.interrupted = True
    with pytest.raises(fake_comfy.InterruptProcessingException):
        node.colorize_images(frames, "fp32", SIZE)
    assert comfy.patchers == [] and comfy.calls == []


# ----------------------------------------------------------------------------- out of memory


def fail_forward_once(model, images):
    """Make the model's next forward run out of memory; collect the batch-sized outputs alive then."""
    alive = []

    def hook(module, args):
        hook.calls += 1
        if hook.calls > 1:
            return None
        # The output the failed attempt was writing, wherever inside the engine it is kept:
        # tensors of the batch's height and width in the frames between the node and here.
        frame = sys._getframe(1)
        while frame is not None and frame.f_code is not NODE_RUN_CODE:
            for value in list(frame.f_locals.values()):
                if isinstance(value, torch.Tensor) and value is not images and value.shape[1:3] == images.shape[1:3]:
                    alive.append(weakref.ref(value))
            frame = frame.f_back
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook.calls = 0
    handle = model.register_forward_pre_hook(hook)
    return alive, hook, handle


def test_out_of_memory_on_a_gpu_unloads_other_models_and_retries(comfy, node, frames):
    node.colorize_images(frames[:1], "fp32", SIZE)  # loads the model
    model, patcher = the_model(comfy), comfy.patchers[0]
    expected = engine.colorize(model, frames, size=SIZE)
    comfy.device_is_cpu = False  # as on a GPU, where other models can be pushed out
    comfy.calls.clear()
    comfy.progress.clear()
    alive, hook, handle = fail_forward_once(model, frames)
    seen_at_retry = []
    original_free = sys.modules["comfy.model_management"].free_memory

    def free_memory(*args, **kwargs):
        gc.collect()
        seen_at_retry.extend(ref() is not None for ref in alive)
        return original_free(*args, **kwargs)

    sys.modules["comfy.model_management"].free_memory = free_memory
    try:
        (colored,) = node.colorize_images(frames, "fp32", SIZE)
    finally:
        handle.remove()
    names = comfy.names()
    assert names == ["load_models_gpu", "free_memory", "soft_empty_cache"]
    _, wanted, device, kept = comfy.calls[1]
    assert wanted == float("inf") and kept == (patcher,)  # everything else goes, ours stays
    assert hook.calls == 1 + FRAMES  # the failed forward, then the whole batch again
    assert comfy.progress[-1] == (FRAMES, FRAMES)
    torch.testing.assert_close(colored, expected, rtol=0, atol=1e-5)
    # The failed attempt's batch-sized output was released before the retry made its own.
    assert alive and seen_at_retry == [False] * len(alive)


def test_out_of_memory_on_a_cpu_is_reported_not_retried(comfy, node, frames):
    node.colorize_images(frames[:1], "fp32", SIZE)
    comfy.calls.clear()
    _, hook, handle = fail_forward_once(the_model(comfy), frames)
    try:
        with pytest.raises(MemoryError, match="lower size"):
            node.colorize_images(frames, "fp32", SIZE)
    finally:
        handle.remove()
    assert comfy.names() == ["load_models_gpu"] and hook.calls == 1


# ----------------------------------------------------------------------------- temporal


def test_temporal_reaches_the_engine_and_old_prompts_run_without_it(comfy, node, frames, engine_calls):
    node.colorize_images(frames, "fp32", SIZE, "ddcolor_modelscope", 0.6)
    node.colorize_images(frames, "fp32", SIZE, "ddcolor_modelscope")  # saved with three widget values
    node.colorize_images(frames, "fp32", SIZE)  # saved with two
    assert [call["kwargs"]["temporal"] for call in engine_calls] == [0.6, 0.0, 0.0]


def test_temporal_output_is_the_engines_for_the_whole_clip(comfy, node, frames):
    (stabilized,) = node.colorize_images(frames, "fp32", SIZE, "ddcolor_modelscope", 0.6)
    model = the_model(comfy)
    torch.testing.assert_close(stabilized, engine.colorize(model, frames, size=SIZE, temporal=0.6), rtol=0, atol=1e-5)
    # And 0 is the per-image result.
    (plain,) = node.colorize_images(frames, "fp32", SIZE, "ddcolor_modelscope", 0.0)
    torch.testing.assert_close(plain, engine.colorize(model, frames, size=SIZE), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- the model cache


def test_the_model_is_reused_across_sizes_and_reloaded_for_another_file(comfy, node, frames):
    for size in (64, 96, 64):
        node.colorize_images(frames[:1], "fp32", size)
    assert len(comfy.patchers) == 1
    # Every run hands the model to ComfyUI again, which reloads it if it was pushed out meanwhile.
    assert comfy.names() == ["load_models_gpu"] * 3
    node.colorize_images(frames[:1], "fp32", SIZE, "other.pth")
    assert len(comfy.patchers) == 2
    assert node_module._LOADED._value is comfy.patchers[1]  # one model kept, the new one


def test_a_replaced_checkpoint_file_is_reloaded(comfy, node, frames):
    node.colorize_images(frames[:1], "fp32", SIZE, "other.pth")
    path = comfy.folder / "other.pth"
    node.colorize_images(frames[:1], "fp32", SIZE, "other.pth")
    assert len(comfy.patchers) == 1
    # The user copies a new file over it (same size here; a later modification time).
    stat = path.stat()
    path.write_bytes(path.read_bytes())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    node.colorize_images(frames[:1], "fp32", SIZE, "other.pth")
    assert len(comfy.patchers) == 2


def test_a_precision_change_reloads_only_if_it_resolves_differently(comfy, node, frames):
    node.colorize_images(frames[:1], "fp32", SIZE)
    for precision in ("fp16", "auto", "bf16"):
        before = len(comfy.patchers)
        previous = precision_plan(node_module._LOADED._value.model).precision
        node.colorize_images(frames[:1], precision, SIZE)
        resolved = resolve_precision(precision, "cpu").precision
        assert precision_plan(node_module._LOADED._value.model).precision == resolved
        assert len(comfy.patchers) == before + (resolved != previous), precision
