"""Precision policy and half-precision numerics (fp16 / bf16 against fp32).

fp16's promise, checked here on the calibrated checkpoints and on every stress
recipe of tests/calibrated.py (DDColor-T, and DDColor-L for the encoder's
stream, its outputs and the pixel features): finite, within mean 0.5 / max 3 ab units of
fp32, colorfulness within 1%, without the fp32 safety net ever retrying, with
half the weight memory and nearly all conv/linear work in half.

The forwards run at ``NUMERICS_SIZE`` on the fixture photos. CPUs without
native half units (an AVX2-only EPYC, say) emulate fp16 and bf16 at about an
eighth of fp32's speed, so the suite checks small images and
benchmarks/bench_precision.py the working sizes people use.
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import lru_cache
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import ddcolor
from ddcolor import model as model_module
from ddcolor import precision
from ddcolor.checkpoint import model_from_state_dict
from ddcolor.precision import PrecisionPlan, apply_precision, fp32_modules, precision_plan, resolve_precision
from tests.calibrated import BOUNDARY_RECIPES, STREAM_RECIPES, boundary_peaks, stressed
from tests.oracle import load_state
from tests.support import calibrated_checkpoint, colorfulness_of, fixture_inputs, fresh_model

FP16_MAX = 65504.0
NUMERICS_SIZE = 128
# The fp16 promise (ab units; colorfulness relative to fp32).
FP16_MEAN, FP16_MAX_ERROR, COLORFULNESS = 0.5, 3.0, 0.01
# ... with at most this share of fp32's weight memory, and at least this share of conv/linear FLOPs in half.
HALF_WEIGHTS, HALF_FLOPS = 0.55, 0.9


# ----------------------------------------------------------------------------- policy


def test_auto_and_explicit_precisions_on_a_cpu(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: None)
    with caplog.at_level(logging.DEBUG, logger="ddcolor"):
        assert resolve_precision("auto", "cpu") == ("fp32", None)
        assert resolve_precision("fp32", "cpu") == ("fp32", None)
        assert resolve_precision("fp16", "cpu") == ("fp32", "fp16 is slow or unsupported on cpu; running fp32 instead")
        assert resolve_precision("bf16", "cpu") == ("fp32", "bf16 is slow or unsupported on cpu; running fp32 instead")
        assert resolve_precision("fp16", "cpu", strict=True) == ("fp16", None)
    assert not caplog.records  # the decision only: its callers log


def test_a_substitution_is_logged_once_by_load_model(monkeypatch, caplog, tiny_checkpoint):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: None)
    with caplog.at_level(logging.WARNING, logger="ddcolor"):
        model = ddcolor.load_model(tiny_checkpoint, precision="bf16")
    assert precision_plan(model).precision == "fp32"
    assert [r.message for r in caplog.records] == ["ddcolor: bf16 is slow or unsupported on cpu; running fp32 instead"]


@pytest.mark.parametrize("units", ["amx", "avx512"])
def test_cpus_with_native_bf16_run_mixed_for_auto_and_fp16(monkeypatch, caplog, units):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: units)
    assert resolve_precision("auto", "cpu") == ("mixed", None)
    assert resolve_precision("bf16", "cpu") == ("bf16", None)
    assert resolve_precision("fp32", "cpu") == ("fp32", None)
    assert resolve_precision("mixed", "cpu") == ("mixed", None)
    # Never bf16 for fp16: bf16 misses fp16's accuracy bounds, mixed meets them.
    assert resolve_precision("fp16", "cpu") == (
        "mixed",
        "fp16 is slow or unsupported on cpu; running mixed "
        "(bf16 in MLP layers of the encoder's last two stages, fp32 elsewhere) instead",
    )
    assert resolve_precision("fp16", "cpu", strict=True) == ("fp16", None)


def test_precisions_on_cuda_devices(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cuda_native_bf16", lambda device=None: False)
    assert resolve_precision("auto", "cuda") == ("fp16", None)
    chosen, reason = resolve_precision("bf16", "cuda")
    assert chosen == "fp16" and reason.endswith("running fp16 instead")
    monkeypatch.setattr(precision, "cuda_native_bf16", lambda device=None: True)
    assert resolve_precision("bf16", "cuda") == ("bf16", None)


@pytest.mark.parametrize("hip, capability, native", [(None, (7, 5), False), (None, (8, 0), True), ("6.2", (9, 4), True)])
def test_only_gpus_that_compute_bf16_in_hardware_count_as_having_it(monkeypatch, hip, capability, native):
    # torch.cuda.is_bf16_supported() also says yes where bf16 is emulated (NVIDIA before Ampere), slower than fp16.
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert precision.cuda_native_bf16() is native
    assert resolve_precision("bf16", "cuda").precision == ("bf16" if native else "fp16")


def test_each_gpu_is_judged_by_its_own_bf16_units(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    capabilities = {0: (8, 6), 1: (7, 5)}  # an RTX 30 beside an RTX 20
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capabilities[torch.device(device).index])
    assert resolve_precision("bf16", "cuda:0").precision == "bf16"
    assert resolve_precision("bf16", "cuda:1").precision == "fp16"


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="fp16, fp32, bf16, auto"):
        resolve_precision("half", "cpu")


# ----------------------------------------------------------------------------- how half precision holds the model


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def fp32_parameter_bytes(model: torch.nn.Module) -> int:
    """What ``model``'s parameters and buffers take in fp32."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in tensors)


@pytest.mark.parametrize("units", ["amx", "avx512"])
def test_mixed_holds_only_its_cpus_split_of_the_last_two_stages_mlps_in_bf16(monkeypatch, tiny_checkpoint, units):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: units)
    pwconv1_stages, pwconv2_stages = precision.MIXED_SPLITS[units]
    assert set(pwconv1_stages) | set(pwconv2_stages) <= {2, 3}
    model = apply_precision(model_from_state_dict(load_state(tiny_checkpoint)), "mixed")
    bf16 = {name for name, t in model.named_parameters() if t.dtype == torch.bfloat16}
    expected = {
        f"encoder.arch.stages.{stage}.{block}.{layer}.{kind}"
        for layer, stages in (("pwconv1", pwconv1_stages), ("pwconv2", pwconv2_stages))
        for stage in stages
        for block in range(len(model.encoder.arch.stages[stage]))
        for kind in ("weight", "bias")
    }
    assert bf16 == expected
    assert model.decoder.compute_dtype == torch.float32


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_half_weights_halve_memory_and_pinned_tensors_stay_fp32(tiny_checkpoint, name):
    full = model_from_state_dict(load_state(tiny_checkpoint))
    half = apply_precision(model_from_state_dict(load_state(tiny_checkpoint)), name)
    assert precision_plan(half).precision == name
    # The FP32 stream's writers (stem, downsample convs) and norms cost a few percent.
    assert parameter_bytes(half) / parameter_bytes(full) <= HALF_WEIGHTS
    pinned = fp32_modules(half)
    assert "encoder.arch.norm0" in pinned and "decoder.layers.0.bn" in pinned
    assert "encoder.arch.stages.2.0.dwconv" in pinned
    assert "encoder.arch.downsample_layers.0.0" in pinned and "encoder.arch.downsample_layers.3.1" in pinned
    assert precision_plan(half).kept_in_fp32 == ()  # a calibrated checkpoint fits half precision everywhere
    for module_name, module in half.named_modules():
        for tensor_name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if not tensor.is_floating_point():
                continue
            keep = tensor_name in getattr(module, "fp32_tensors", ())
            assert tensor.dtype == (torch.float32 if keep else precision.DTYPES[name]), f"{module_name}.{tensor_name}"


class FlopsByDtype(TorchDispatchMode):
    """FLOPs of every matmul and convolution that runs, by the dtype it runs in."""

    def __init__(self):
        super().__init__()
        self.flops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops[out.dtype] += formula(*args, **kwargs, out_val=out)
        return out


def test_most_conv_and_linear_work_runs_in_fp16(tiny_checkpoint):
    model = apply_precision(model_from_state_dict(load_state(tiny_checkpoint)), "fp16")
    with FlopsByDtype() as counter, torch.no_grad():
        model.predict(torch.rand(1, 3, 64, 64))
    share = counter.flops[torch.float16] / sum(counter.flops.values())
    # What stays FP32 by design: depthwise convs, stem and downsample convs, attention logits.
    assert share > HALF_FLOPS, dict(counter.flops)


@pytest.mark.parametrize(
    "stress", [pytest.param(False, id="calibrated"), pytest.param(True, id="every-boundary-stressed", marks=pytest.mark.slow)]
)
def test_balancing_for_half_is_exact_in_fp32(tiny_checkpoint, stress):
    state = load_state(tiny_checkpoint)
    x = fixture_free_inputs(2)
    for recipe in BOUNDARY_RECIPES if stress else ():
        state = stressed(state, recipe, x)
    model = model_from_state_dict(dict(state))
    with torch.inference_mode():
        expected = model(x)
        for module in model.modules():
            if hasattr(module, "balance_for_half"):
                module.balance_for_half()
        actual = model(x)
    assert (actual - expected).abs().max() < 1e-4 * expected.abs().max()


def test_weights_out_of_fp16_range_stay_fp32(tiny_checkpoint, caplog):
    # Scales no exact rewrite can move (balancing leaves them as they are): a
    # layer before GELU, and the projection whose output meets the fixed-scale
    # position encoding.
    state = load_state(tiny_checkpoint)
    mlp = "encoder.arch.stages.1.0.pwconv1"
    projection = "decoder.color_decoder.input_proj.1"
    state[f"{mlp}.weight"] = state[f"{mlp}.weight"] * 1e-6  # sinks into fp16 subnormals
    state[f"{projection}.weight"] = state[f"{projection}.weight"] * 1e7  # past 65504
    with caplog.at_level(logging.INFO, logger="ddcolor"):
        model = apply_precision(model_from_state_dict(state), "fp16")
    assert precision_plan(model).kept_in_fp32 == (mlp, projection)
    assert model.get_submodule(mlp).bias.dtype == torch.float32
    assert projection in fp32_modules(model)
    assert "2 layer(s) with weights out of fp16's range stay fp32" in caplog.text
    bf16 = apply_precision(model_from_state_dict(load_state(tiny_checkpoint)), "bf16")
    assert precision_plan(bf16).kept_in_fp32 == ()


def test_the_fp32_retry_gives_the_model_back_its_precision_plan(tiny_checkpoint):
    fresh = model_from_state_dict(load_state(tiny_checkpoint))
    assert precision_plan(fresh) == PrecisionPlan("fp32", None, (), False)
    split = ((3,), (3,))  # no CPU's default split: the retry must restore this one, not the CPU's
    model = apply_precision(fresh, "mixed", split=split)
    planned = precision_plan(model)
    assert planned == PrecisionPlan("mixed", split, (), True)
    dtypes = {name: t.dtype for name, t in model.named_parameters()}
    with precision.full_precision(model):
        assert precision_plan(model) == PrecisionPlan("fp32", None, (), True)  # balanced once, for good
        assert all(t.dtype == torch.float32 for t in model.parameters())
    assert precision_plan(model) == planned
    assert {name: t.dtype for name, t in model.named_parameters()} == dtypes


# ----------------------------------------------------------------------------- numerics


def fixture_free_inputs(count: int, size: int = 64) -> torch.Tensor:
    from tests.calibrated import calibration_images

    return calibration_images(size, count=count, seed=11)


@lru_cache(maxsize=4)
def _reference(variant: str, recipe: str | None, photos: tuple) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(state, inputs, fp32 ab) for a variant and recipe; the derived recipes share the base's fp32 ab."""
    x = fixture_inputs(photos, NUMERICS_SIZE)
    if recipe == "blocks":
        state = load_state(calibrated_checkpoint(variant, stress="blocks"))
    else:
        state = load_state(calibrated_checkpoint(variant))
    with torch.inference_mode():
        ab = model_from_state_dict(dict(state))(x)
    return state, x, ab


def half_precision_report(variant: str, recipe: str | None, name: str, photos: list) -> dict:
    """fp32 vs ``name`` on ``photos`` through ``forward``, and whether its fp32 safety net had to retry."""
    state, x, reference = _reference(variant, None if recipe not in (None, "blocks") else recipe, tuple(photos))
    if recipe not in (None, "blocks"):
        state = stressed(state, recipe, x)
    model = apply_precision(fresh_model(state), name)
    retry = mock.patch.object(model_module, "full_precision", wraps=model_module.full_precision)
    # no_grad, not inference_mode: inference tensors bypass the FLOP counter.
    with retry as full_precision, FlopsByDtype() as counter, torch.no_grad():
        ab = model(x)
    error = (ab - reference).abs()
    return {
        "finite": bool(torch.isfinite(ab).all()),
        "mean": error.mean().item(),
        "max": error.max().item(),
        "colorfulness": colorfulness_of(x, ab) / colorfulness_of(x, reference) - 1,
        "kept_in_fp32": precision_plan(model).kept_in_fp32,
        "retried": full_precision.called,
        "weights": parameter_bytes(model) / fp32_parameter_bytes(model),
        "half_flops": 1 - counter.flops[torch.float32] / sum(counter.flops.values()),
    }


@pytest.mark.slow
@pytest.mark.parametrize("recipe", STREAM_RECIPES + BOUNDARY_RECIPES)
def test_stress_recipes_leave_fp16_range_but_not_the_fp32_output(recipe, tiny_checkpoint):
    state = load_state(tiny_checkpoint)
    x = fixture_free_inputs(2)
    with torch.inference_mode():
        reference = model_from_state_dict(dict(state))(x)
    model = model_from_state_dict(stressed(state, recipe, x))
    with boundary_peaks(model, recipe) as peaks, torch.inference_mode():
        ab = model(x)
    assert peaks and min(peaks.values()) > FP16_MAX, peaks
    assert (ab - reference).abs().max() < 1e-4 * reference.abs().max()


@pytest.mark.slow
def test_blocks_recipe_overflows_fp16_in_fp32(fixture_photos):
    state, x, _ = _reference("tiny", "blocks", tuple(fixture_photos))
    model = model_from_state_dict(dict(state))
    with boundary_peaks(model, "stage3") as peaks, torch.inference_mode():
        model.predict(x)
    assert peaks[3] > 70000 > FP16_MAX


# DDColor-L differs from DDColor-T in its encoder and pixel decoder widths (its
# color decoder has the same shape): the encoder's outputs and the pixel
# decoder's, which reach every reader outside it, are checked on it too.
LARGE_RECIPES = (None, "blocks", *STREAM_RECIPES, "taps", "pixel_features")


@pytest.mark.parametrize(
    "variant, recipe",
    [("tiny", None)]
    + [pytest.param("tiny", r, marks=pytest.mark.slow) for r in ("blocks", *STREAM_RECIPES, *BOUNDARY_RECIPES)]
    + [pytest.param("large", r, marks=pytest.mark.slow) for r in LARGE_RECIPES],
)
def test_fp16_meets_its_bounds_on_every_stress_recipe(variant, recipe, fixture_photos):
    report = half_precision_report(variant, recipe, "fp16", fixture_photos)
    assert report["finite"] and not report["retried"] and report["kept_in_fp32"] == (), report
    assert report["mean"] < FP16_MEAN and report["max"] < FP16_MAX_ERROR, report
    assert abs(report["colorfulness"]) < COLORFULNESS, report
    assert report["weights"] <= HALF_WEIGHTS and report["half_flops"] > HALF_FLOPS, report


@pytest.mark.parametrize("variant", ["tiny", pytest.param("large", marks=pytest.mark.slow)])
def test_mixed_meets_fp16_bounds(variant, fixture_photos):
    """What auto runs on CPUs with native bf16 must be as faithful as fp16."""
    report = half_precision_report(variant, None, "mixed", fixture_photos)
    assert report["finite"], report
    assert report["mean"] < FP16_MEAN and report["max"] < FP16_MAX_ERROR, report
    assert abs(report["colorfulness"]) < COLORFULNESS, report


@pytest.mark.parametrize("variant", ["tiny", pytest.param("large", marks=pytest.mark.slow)])
def test_bf16_stays_close_to_fp32(variant, fixture_photos):
    """bf16 keeps 8 mantissa bits to fp16's 11: 1-2 ab units off on average at
    this small size (the original under bf16 autocast is as far off,
    benchmarks/RESULTS.md). The README promises no more than that."""
    report = half_precision_report(variant, None, "bf16", fixture_photos)
    assert report["finite"], report
    assert report["mean"] < 2.5 and report["max"] < 16.0, report
    assert abs(report["colorfulness"]) < 0.03, report


# ----------------------------------------------------------------------------- the fp32 safety net


@pytest.mark.slow
def test_a_checkpoint_beyond_fp16_is_redone_in_fp32_and_logged_once(fixture_photos, caplog, monkeypatch):
    monkeypatch.setattr(model_module, "_FALLBACKS_LOGGED", set())
    base, x, _ = _reference("tiny", None, tuple(fixture_photos))
    state = stressed(base, "overflow", x)
    full = fresh_model(state)
    with boundary_peaks(full, "overflow") as peaks, torch.inference_mode():
        reference = full(x)
    assert peaks[0] > FP16_MAX  # the FP32 network itself holds values fp16 cannot
    model = apply_precision(fresh_model(state, source="overflow.pth"), "fp16")
    with torch.inference_mode():
        assert not torch.isfinite(model.predict(x)).all()  # no rescaling can protect this place
        with caplog.at_level(logging.WARNING, logger="ddcolor"):
            ab = model(x)
            model(x[:1])
    assert torch.isfinite(ab).all()
    error = (ab - reference).abs()
    assert error.mean() < FP16_MEAN and error.max() < FP16_MAX_ERROR
    fallbacks = [r.message for r in caplog.records if "redone in fp32" in r.message]
    assert len(fallbacks) == 1 and "overflow.pth" in fallbacks[0] and "fp16" in fallbacks[0]
    # Back in fp16 afterwards, weights and all.
    assert precision_plan(model).precision == "fp16"
    assert model.decoder.color_decoder.input_proj[0].weight.dtype == torch.float16


def test_only_the_failed_images_are_redone(small_checkpoint, monkeypatch):
    model = ddcolor.load_model(small_checkpoint, precision="fp16", strict_precision=True)
    x = fixture_free_inputs(3)
    real_predict = model.predict
    calls = []

    def predict(batch):
        calls.append((len(batch), precision_plan(model).precision))
        ab = real_predict(batch)
        if precision_plan(model).precision == "fp16":
            ab[1, 0, 5, 5] = float("nan")  # image 1 overflows somewhere
            ab[2] *= 50  # image 2 comes out far outside any color
        return ab

    monkeypatch.setattr(model, "predict", predict)
    with torch.inference_mode():
        ab = model(x)
    assert calls == [(3, "fp16"), (2, "fp32")]
    assert torch.isfinite(ab).all() and ab.abs().max() < model_module.PLAUSIBLE_AB
    monkeypatch.undo()
    with torch.inference_mode():
        half = model.predict(x)
    assert torch.equal(ab[0], half[0])  # the good image keeps its fp16 result
