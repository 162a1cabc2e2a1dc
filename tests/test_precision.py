"""Precision policy and half-precision numerics (fp16 / bf16 against fp32)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ddcolor
from ddcolor import precision
from ddcolor.checkpoint import model_from_state_dict
from ddcolor.color import colorfulness, gray_rgb_from_lightness, lab_to_rgb, rgb_to_lab
from ddcolor.precision import apply_precision, fp32_modules, resolve_precision
from tests.oracle import load_state, original_model

FP16_HALF_MAX = 65504.0


def test_auto_and_explicit_precisions_on_a_cpu(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: None)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    with caplog.at_level(logging.WARNING, logger="ddcolor"):
        assert resolve_precision("fp16", "cpu") == "fp32"
        assert resolve_precision("bf16", "cpu") == "fp32"
    assert [r.message for r in caplog.records] == [
        "ddcolor: fp16 is slow or unsupported on cpu; running fp32 instead",
        "ddcolor: bf16 is slow or unsupported on cpu; running fp32 instead",
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ddcolor"):
        assert resolve_precision("fp16", "cpu", strict=True) == "fp16"
    assert not caplog.records


def test_cpus_with_bf16_units(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "avx512")
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "amx")
    assert resolve_precision("auto", "cpu") == "bf16"
    with caplog.at_level(logging.WARNING, logger="ddcolor"):
        assert resolve_precision("fp16", "cpu") == "bf16"
    assert "fp16 is slow or unsupported on cpu; running bf16 instead" in caplog.text


def test_precisions_on_cuda_devices(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "cuda") == "fp16"
    with caplog.at_level(logging.WARNING, logger="ddcolor"):
        assert resolve_precision("bf16", "cuda") == "fp16"
    assert "running fp16 instead" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("bf16", "cuda") == "bf16"


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="fp16, fp32, bf16, auto"):
        resolve_precision("half", "cpu")


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_half_weights_halve_memory_and_pinned_tensors_stay_fp32(tiny_checkpoint, name):
    full = model_from_state_dict(load_state(tiny_checkpoint))
    half = apply_precision(model_from_state_dict(load_state(tiny_checkpoint)), name)
    assert half.precision == name
    assert parameter_bytes(half) / parameter_bytes(full) < 0.505
    pinned = fp32_modules(half)
    assert "encoder.arch.norm0" in pinned and "decoder.layers.0.bn" in pinned
    assert "encoder.arch.stages.2.0.dwconv" in pinned
    for module_name, module in half.named_modules():
        for tensor_name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if not tensor.is_floating_point():
                continue
            keep = tensor_name in getattr(module, "fp32_tensors", ())
            assert tensor.dtype == (torch.float32 if keep else precision.DTYPES[name]), f"{module_name}.{tensor_name}"


def fixture_inputs(paths, size: int) -> torch.Tensor:
    """Fixture photos as the network sees them: the lightness of the resized photo, as gray RGB."""
    from PIL import Image

    batch = []
    for path in paths:
        rgb = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255)
        rgb = F.interpolate(rgb.permute(2, 0, 1)[None], size=(size, size), mode="bilinear", antialias=True)
        batch.append(gray_rgb_from_lightness(rgb_to_lab(rgb)[:, :1]))
    return torch.cat(batch)


def colorfulness_of(x: torch.Tensor, ab: torch.Tensor) -> float:
    lab = torch.cat([rgb_to_lab(x)[:, :1], ab.clamp(-128, 127)], dim=1)
    return colorfulness(lab_to_rgb(lab))


def test_stress_checkpoint_overflows_fp16_in_fp32(tiny_stress_checkpoint, fixture_photos):
    model = model_from_state_dict(load_state(tiny_stress_checkpoint))
    stream = (fixture_inputs(fixture_photos, 256) - model.mean) / model.std
    arch = model.encoder.arch
    with torch.inference_mode():
        for i in range(4):
            stream = arch.downsample_layers[i](stream).float()
            for block in arch.stages[i]:
                stream = block(stream)
    peak_per_photo = stream.abs().amax(dim=(1, 2, 3))
    assert (peak_per_photo > 70000).all() and 70000 > FP16_HALF_MAX


@pytest.mark.parametrize("checkpoint", ["tiny_checkpoint", "tiny_stress_checkpoint"])
def test_half_precision_matches_fp32(checkpoint, request, fixture_photos):
    """fp16 within mean 0.5 / max 3 ab units of fp32, colorfulness within 1%.

    bf16 keeps 8 mantissa bits to fp16's 11, so it is held to the original
    architecture under bf16 autocast on the same checkpoint and photos.
    """
    state = load_state(request.getfixturevalue(checkpoint))
    x = fixture_inputs(fixture_photos, 384)
    with torch.inference_mode():
        reference = model_from_state_dict(dict(state))(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            original_bf16 = original_model(dict(state))(x).float()
        results = {name: apply_precision(model_from_state_dict(dict(state)), name)(x) for name in ("fp16", "bf16")}
    reference_colorfulness = colorfulness_of(x, reference)
    report = {}
    for name, ab in results.items():
        assert ab.dtype == torch.float32 and torch.isfinite(ab).all(), name
        error = (ab - reference).abs()
        report[name] = (error.mean().item(), error.max().item())
        assert abs(colorfulness_of(x, ab) / reference_colorfulness - 1) < 0.01, name
    assert report["fp16"][0] < 0.5 and report["fp16"][1] < 3, report
    original_error = (original_bf16 - reference).abs().mean().item()
    assert report["bf16"][0] < 1.25 * original_error, (report, original_error)
