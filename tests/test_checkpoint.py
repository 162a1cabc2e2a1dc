"""Checkpoint formats, strict validation, spectral-norm folding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddcolor import CheckpointError, load_model
from ddcolor.checkpoint import config_from_state_dict, fold_spectral_norm, model_from_state_dict, read_state_dict
from tests.calibrated import calibration_images
from tests.oracle import load_state, original_model, relative_difference

FORMATS = ["pth_params", "pt_raw", "safetensors", "hf_folder_safetensors", "hf_folder_bin"]


def write_checkpoint(state: dict, folder: Path, fmt: str) -> Path:
    """Save ``state`` the way one of the published sources ships it."""
    if fmt == "pth_params":  # Hugging Face piddnad/DDColor-models
        path = folder / "ddcolor.pth"
        torch.save({"params": state}, path)
    elif fmt == "pt_raw":  # ModelScope pytorch_model.pt
        path = folder / "pytorch_model.pt"
        torch.save(state, path)
    elif fmt == "safetensors":
        path = folder / "ddcolor.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:  # Hugging Face piddnad/ddcolor_* model folders
        path = folder / "hf_model"
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"encoder_name": "convnext", "num_queries": 100}))
        if fmt == "hf_folder_safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors")
        else:
            torch.save(state, path / "pytorch_model.bin")
    return path


# Folding computes weight_orig / (u . (W v)) in FP32, and the order in which
# the CPU sums those dot products depends on its SIMD width and on the
# tensors' memory alignment, which differs between formats (a safetensors file
# is read in place): the same file can fold to weights a few ulps apart.
# Rounding errors of a sum of n terms grow like sqrt(n) eps (a random walk),
# so each folded weight is held to the exact float64 quotient within
# (1 + 2 sqrt(n)) eps, n = out + in features. Measured on the calibrated tiny
# checkpoint (AMD EPYC Zen 3, AVX2): at most 1.2 eps from .pth files, 10.3 eps
# from safetensors (a 4096 x 256 weight, where the bound is 133 eps). A wrong
# or stale sigma is off by percents.
EPS = torch.finfo(torch.float32).eps


def exact_folded_weights(state: dict) -> dict[str, tuple[torch.Tensor, float]]:
    """Each spectral-norm weight as eval mode defines it, in float64, and its FP32 tolerance."""
    folded = {}
    for key in [k for k in state if k.endswith(".weight_orig")]:
        prefix = key[: -len("_orig")]
        weight, u, v = (state[prefix + suffix].double() for suffix in ("_orig", "_u", "_v"))
        matrix = weight.flatten(1)
        exact = weight / torch.dot(u, torch.mv(matrix, v))
        folded[prefix] = (exact, (1 + 2 * math.sqrt(sum(matrix.shape))) * EPS)
    return folded


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tiny", "large"])
def test_every_format_loads_strictly_to_the_same_weights(variant, request, tmp_path):
    state = load_state(request.getfixturevalue(f"{variant}_checkpoint"))
    if variant == "large":
        # Halves the 0.9 GB written per format; the key layout is what is under test.
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    assert model_from_state_dict(dict(state)).config.variant == variant
    folded = exact_folded_weights(state)
    spectral_parts = {prefix + suffix for prefix in folded for suffix in ("_orig", "_u", "_v")}
    # Everything else is copied as stored: bit for bit (fp16 -> fp32 is exact).
    stored = {k: v for k, v in state.items() if k not in spectral_parts and not k.startswith("encoder.arch.head_cls.")}
    for fmt in FORMATS:
        path = write_checkpoint(state, tmp_path, fmt)
        loaded = load_model(path).state_dict()
        assert loaded.keys() == stored.keys() | folded.keys(), fmt
        for key, value in stored.items():
            assert torch.equal(loaded[key], value.to(loaded[key].dtype)), (fmt, key)
        for key, (exact, rtol) in folded.items():
            assert loaded[key].dtype == torch.float32, (fmt, key)
            torch.testing.assert_close(loaded[key].double(), exact, rtol=rtol, atol=0, msg=f"{fmt}: {key}")
        _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    else:
        path.unlink()


def test_hyperparameters_are_read_from_the_checkpoint(tiny_checkpoint, small_checkpoint):
    tiny = config_from_state_dict(load_state(tiny_checkpoint))
    assert (tiny.variant, tiny.depths, tiny.dims, tiny.nf, tiny.num_queries, tiny.num_scales, tiny.dec_layers) == (
        "tiny", (3, 3, 9, 3), (96, 192, 384, 768), 512, 100, 3, 9
    )
    small = config_from_state_dict(load_state(small_checkpoint))
    assert (small.variant, small.num_queries, small.hidden_dim, small.dec_layers) == ("custom", 10, 32, 3)


def test_leftover_classifier_head_is_dropped_by_name_only(small_checkpoint, tmp_path):
    state = load_state(small_checkpoint)
    assert "encoder.arch.head_cls.weight" in state  # as in the published .pth files
    load_model(small_checkpoint)

    state["encoder.arch.head_extra.weight"] = torch.zeros(3)
    path = write_checkpoint(state, tmp_path, "pth_params")
    with pytest.raises(CheckpointError, match=r"1 unexpected \(e\.g\. encoder\.arch\.head_extra\.weight\)") as error:
        load_model(path)
    assert str(path) in str(error.value)


def test_missing_keys_are_an_error_naming_the_file(small_checkpoint, tmp_path):
    state = load_state(small_checkpoint)
    del state["decoder.color_decoder.decoder_norm.bias"]
    path = write_checkpoint(state, tmp_path, "safetensors")
    with pytest.raises(CheckpointError, match="missing .*decoder_norm.bias") as error:
        load_model(path)
    assert str(path) in str(error.value)


def test_wrong_shapes_are_an_error(small_checkpoint, tmp_path):
    state = load_state(small_checkpoint)
    state["decoder.color_decoder.decoder_norm.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"decoder_norm.bias has shape \(7,\)"):
        load_model(write_checkpoint(state, tmp_path, "pt_raw"))


@pytest.mark.parametrize("fmt", ["pth_params", "safetensors"])
def test_truncated_files_are_reported_as_such(small_checkpoint, tmp_path, fmt):
    path = write_checkpoint(load_state(small_checkpoint), tmp_path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as error:
        load_model(path)
    assert str(path) in str(error.value)


def test_empty_and_foreign_files_are_refused(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty"):
        load_model(empty)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(text)
    other = tmp_path / "resnet.pth"
    torch.save(torch.nn.Linear(4, 2).state_dict(), other)
    with pytest.raises(CheckpointError, match="not a DDColor checkpoint"):
        load_model(other)
    with pytest.raises(CheckpointError, match="folder but holds neither"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="neither an existing checkpoint .* nor a published model"):
        load_model(tmp_path / "typo.pth")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_executes_code_from_the_file(small_checkpoint, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"params": load_state(small_checkpoint), "extra": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(CheckpointError, match="could run code; refusing"):
        load_model(path)
    assert not marker.exists()


def test_colorization_checkpoints_must_predict_ab(small_checkpoint, tmp_path):
    state = load_state(small_checkpoint)
    state["refine_net.0.0.weight_orig"] = torch.zeros(3, *state["refine_net.0.0.weight_orig"].shape[1:])
    with pytest.raises(CheckpointError, match="predicts 3 channels"):
        load_model(write_checkpoint(state, tmp_path, "pth_params"))


def test_dataparallel_prefix_is_accepted(small_checkpoint, tmp_path):
    state = {f"module.{k}": v for k, v in load_state(small_checkpoint).items()}
    load_model(write_checkpoint(state, tmp_path, "pt_raw"))


def test_spectral_norm_folding_matches_pytorch_eval_mode():
    torch.manual_seed(0)
    conv = torch.nn.utils.spectral_norm(torch.nn.Conv2d(8, 16, 3))
    conv(torch.rand(1, 8, 5, 5))  # a few training-mode power iterations move u and v
    conv(torch.rand(1, 8, 5, 5))
    conv.eval()
    conv(torch.rand(1, 8, 5, 5))  # eval mode computes the weight from the stored vectors
    state = {f"c.{k}": v for k, v in conv.state_dict().items()}
    folded = fold_spectral_norm(state)
    assert set(folded) == {"c.weight", "c.bias"}
    assert torch.equal(folded["c.weight"], conv.weight)


@pytest.mark.slow
def test_stored_spectral_vectors_are_used_as_is(tiny_checkpoint):
    # Unconverged vectors give a different (smaller) sigma; PyTorch's eval
    # mode uses them as stored, and so must we.
    state = load_state(tiny_checkpoint)
    generator = torch.Generator().manual_seed(1)
    for key in [k for k in state if k.endswith("weight_u")]:
        u = state[key] + 0.3 * torch.randn(state[key].shape, generator=generator)
        state[key] = u / u.norm()
    x = calibration_images(128, count=1, seed=2)
    with torch.inference_mode():
        expected = original_model(state)(x)
        actual = model_from_state_dict(dict(state))(x)
        converged = model_from_state_dict(load_state(tiny_checkpoint))(x)
    assert relative_difference(expected, actual) < 1e-4
    assert relative_difference(converged, actual) > 1e-2


def test_read_state_dict_unwraps_params(small_checkpoint):
    assert "mean" in read_state_dict(small_checkpoint)
