"""The network: exact parity with the original, the fused head, no retained activations."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

import ddcolor.layers
from ddcolor.checkpoint import model_from_state_dict
from ddcolor.convnext import Block
from ddcolor.layers import BatchNorm2d, LayerNorm, LayerNorm2d, MultiheadAttention
from ddcolor.precision import apply_precision
from tests.calibrated import calibration_images
from tests.oracle import load_state, original_model, relative_difference

PARITY_SIZES = [(256, 256), (512, 512), (320, 544)]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tiny", "large"])
def test_fp32_matches_the_original_architecture(variant, request):
    state = load_state(request.getfixturevalue(f"{variant}_checkpoint"))
    original = original_model(state)
    ours = model_from_state_dict(dict(state))
    for height, width in PARITY_SIZES:
        x = calibration_images(max(height, width), count=1, seed=7)[..., :height, :width]
        with torch.inference_mode():
            expected, actual = original(x), ours(x)
        assert actual.dtype == torch.float32 and actual.shape == (1, 2, height, width)
        assert expected.std() > 5, "the calibrated checkpoint should give trained-scale ab"
        assert relative_difference(expected, actual) < 1e-4, (variant, height, width)


def literal_head(model, color_embed, features, x):
    """The published computation: full-resolution maps, einsum, 1x1 refine."""
    full = model.decoder.last_shuf(features)
    maps = torch.einsum("bqc,bchw->bqhw", color_embed, full)
    refine = model.refine_net[0][0]
    return F.conv2d(torch.cat([maps, x], dim=1), refine.weight, refine.bias)


@pytest.mark.parametrize("chunk_elements", [ddcolor.layers.CHUNK_ELEMENTS, 1])
def test_fused_head_equals_literal_computation(small_checkpoint, monkeypatch, chunk_elements):
    # chunk_elements=1 forces one sub-pixel group per chunk (16 chunks).
    monkeypatch.setattr("ddcolor.model.CHUNK_ELEMENTS", chunk_elements)
    model = model_from_state_dict(load_state(small_checkpoint))
    x = calibration_images(128, count=2, seed=3)
    normalized = (x - model.mean) / model.std
    with torch.inference_mode():
        scales = model.decoder.pixel_features(model.encoder(normalized))
        color_embed = model.decoder.color_decoder(scales)
        expected = literal_head(model, color_embed, scales[2], normalized)
        actual = model.head(color_embed, scales[2], x)
    assert relative_difference(expected, actual) < 1e-5


CHUNK_LIMITS = ("layers.CHUNK_ELEMENTS", "layers.NORM_CHUNK_ELEMENTS", "layers.ATTENTION_CHUNK_ELEMENTS",
                "convnext.CHUNK_ELEMENTS", "model.CHUNK_ELEMENTS")


def smallest_chunks(monkeypatch) -> None:
    """One row band, query row, norm band or head group per chunk."""
    for name in CHUNK_LIMITS:
        monkeypatch.setattr(f"ddcolor.{name}", 1)


def test_chunked_attention_norms_and_mlp_equal_unchunked(small_checkpoint, monkeypatch):
    model = model_from_state_dict(load_state(small_checkpoint))
    x = calibration_images(128, count=2, seed=4)
    with torch.inference_mode():
        whole = model(x)
        smallest_chunks(monkeypatch)
        chunked = model(x)
    # FP32 sums in another order: measured 8e-7 (AMD EPYC Zen 3).
    assert relative_difference(whole, chunked) < 1e-5


# Everything that computes in chunks. In bf16 the norms also run band by band
# (in_fp32) and the products run on chunk-shaped bf16 operands.
CHUNKED_MODULES = (Block, MultiheadAttention, LayerNorm, LayerNorm2d, BatchNorm2d)


def test_chunked_modules_in_bf16_equal_unchunked(small_checkpoint, monkeypatch):
    """Each chunked computation in bf16, on the very inputs it had in the unchunked run.

    A product of another shape may round a bf16 output the other way (one
    ulp, 2^-8 relative) on CPUs whose kernels depend on the shape, and the
    whole network amplifies that to percents, so the end-to-end comparison
    above is only exact in fp32. Module by module, a chunking mistake still
    shows as an error of order one, while rounding stays far below 2^-6 of
    the module's largest output: measured at most 7.5e-3 with one ulp moved
    in 1% of every bf16 product's outputs (small checkpoint; tiny: 6.6e-3 at
    0.1%), where a real kernel difference moves far fewer.
    """
    model = apply_precision(model_from_state_dict(load_state(small_checkpoint)), "bf16")
    calls = []

    def record(module, args, kwargs, output):
        calls.append((module, *_cloned((args, kwargs, output))))

    hooks = [m.register_forward_hook(record, with_kwargs=True) for m in model.modules() if isinstance(m, CHUNKED_MODULES)]
    real_head = model.head  # the fused head is a method, chunked over sub-pixel groups

    def recorded_head(*args):
        output = real_head(*args)
        calls.append((real_head, *_cloned((args, {}, output))))
        return output

    model.head = recorded_head
    with torch.inference_mode():
        model(calibration_images(128, count=2, seed=4))
        for hook in hooks:
            hook.remove()
        assert {type(c[0]) for c in calls} >= set(CHUNKED_MODULES) and any(c[0] is real_head for c in calls)
        smallest_chunks(monkeypatch)
        for module, args, kwargs, whole in calls:
            chunked = module(*args, **kwargs)
            assert chunked.dtype == whole.dtype, module
            assert relative_difference(whole.float(), chunked.float()) < 2**-6, module


def _cloned(value):
    """A copy of tensors in nested tuples and dicts: later layers modify some in place (relu_)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_cloned(v) for v in value)
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    return value


def test_no_activation_is_kept_after_a_call(small_checkpoint):
    model = model_from_state_dict(load_state(small_checkpoint))
    owned = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    with torch.inference_mode():
        model(calibration_images(128, count=1))
    gc.collect()
    for name, module in model.named_modules():
        held = [k for k, v in vars(module).items() if isinstance(v, torch.Tensor) and id(v) not in owned]
        assert not held, f"{name or 'model'} keeps {held} alive after forward"
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_sizes_that_are_not_multiples_of_32_are_refused_clearly(small_checkpoint):
    model = model_from_state_dict(load_state(small_checkpoint))
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 100, 128))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 128, 128))
