"""colorize(): ComfyUI-layout images in, colorized images out."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import ddcolor
from ddcolor.color import colorfulness, gray_rgb_from_lightness, rgb_to_lab
from tests.oracle import whole_image_colorize
from tests.support import MemoryLimited, peak_live_bytes


@pytest.fixture(scope="module")
def model(small_checkpoint):
    return ddcolor.load_model(small_checkpoint)


@pytest.fixture(scope="module")
def photos(fixture_photos):
    """Fixture photos as (1, H, W, 3) float tensors: a palette-mode gray PNG and color JPEGs."""
    from PIL import Image

    return [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255)[None] for p in fixture_photos]


def lightness(images: torch.Tensor) -> torch.Tensor:
    return rgb_to_lab(images[..., :3].permute(0, 3, 1, 2))[:, 0]


def test_photos_come_back_colored_with_their_own_lightness(model, photos):
    for photo in photos:
        out = ddcolor.colorize(model, photo, size=256)
        assert out.shape == photo.shape and out.dtype == torch.float32
        assert 0 <= out.min() and out.max() <= 1
        assert colorfulness(out[0].permute(2, 0, 1)) > 10
        # L is kept exactly; only where a color fell outside sRGB and was
        # clipped may it move. (The synthetic model's chroma ignores
        # lightness, so it clips more than a trained one: 0.3-3% of pixels.)
        moved = (lightness(out) - lightness(photo)).abs() > 1.0
        clipped = ((out <= 1e-6) | (out >= 1 - 1e-6)).any(dim=-1)
        assert not (moved & ~clipped).any()
        assert (~moved).float().mean() >= 0.95


def test_color_input_is_treated_through_its_lightness(model, photos):
    color = next(p for p in photos if colorfulness(p[0].permute(2, 0, 1)) > 10)
    lab = rgb_to_lab(color.permute(0, 3, 1, 2))
    gray = gray_rgb_from_lightness(lab[:, :1]).permute(0, 2, 3, 1).contiguous()
    from_color = ddcolor.colorize(model, color, size=256)
    from_gray = ddcolor.colorize(model, gray, size=256)
    # Same lightness, so the same prediction (up to resizing before vs after
    # taking L), and none of the input's own color leaks through.
    assert (from_color - from_gray).abs().mean() < 0.01


def test_one_three_and_four_channel_inputs(model):
    gray = torch.rand(2, 40, 56, 1)
    three = ddcolor.colorize(model, gray.expand(-1, -1, -1, 3).contiguous(), size=64)
    one = ddcolor.colorize(model, gray, size=64)
    assert one.shape == (2, 40, 56, 3)
    assert torch.allclose(one, three, atol=1e-5)

    alpha = torch.rand(2, 40, 56, 1)
    four = ddcolor.colorize(model, torch.cat([gray.expand(-1, -1, -1, 3), alpha], dim=-1), size=64)
    assert four.shape == (2, 40, 56, 4)
    assert torch.equal(four[..., 3:], alpha)
    assert torch.allclose(four[..., :3], three, atol=1e-5)


@pytest.mark.parametrize("height,width", [(1, 1), (1, 7), (3, 500), (333, 2)])
def test_any_image_size(model, height, width):
    out = ddcolor.colorize(model, torch.rand(1, height, width, 3), size=64)
    assert out.shape == (1, height, width, 3) and torch.isfinite(out).all()


def test_size_is_rounded_to_a_multiple_of_32_and_logged(model, caplog):
    image = torch.rand(1, 50, 60, 3)
    with caplog.at_level(logging.WARNING, logger="ddcolor"):
        rounded = ddcolor.colorize(model, image, size=100)
    assert "size 100 is not a multiple of 32; using 96" in caplog.text
    assert torch.equal(rounded, ddcolor.colorize(model, image, size=96))
    assert ddcolor.snap_size(460) == 448 and ddcolor.snap_size(500) == 512 and ddcolor.snap_size(5) == 32


def test_bad_input_gets_a_clear_error(model):
    image = torch.rand(1, 8, 8, 3)
    image[0, 2, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        ddcolor.colorize(model, image)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\) with C = 1, 3 or 4"):
        ddcolor.colorize(model, torch.rand(8, 8, 3))
    with pytest.raises(ValueError, match=r"C = 1, 3 or 4"):
        ddcolor.colorize(model, torch.rand(1, 8, 8, 2))
    with pytest.raises(TypeError, match="float in \\[0, 1\\], uint8 or uint16; got torch.int32"):
        ddcolor.colorize(model, torch.zeros(1, 8, 8, 3, dtype=torch.int32))


def test_chunks_give_the_same_result_and_report_progress(model):
    images = torch.rand(3, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    calls = []
    chunked = ddcolor.colorize(model, images, size=64, batch_size=2, progress=lambda done, total: calls.append((done, total)))
    single = torch.cat([ddcolor.colorize(model, images[i : i + 1], size=64) for i in range(3)])
    assert calls == [(2, 3), (3, 3)]
    # Batch 2 and batch 1 block their matrix products differently: equal within float rounding, not bitwise.
    assert torch.allclose(chunked, single, atol=1e-4)


def test_progress_callback_can_stop_the_run(model):
    class Interrupted(Exception):
        pass

    def stop(done, total):
        raise Interrupted

    with pytest.raises(Interrupted):
        ddcolor.colorize(model, torch.rand(3, 16, 16, 3), size=64, batch_size=1, progress=stop)


def test_out_of_memory_retries_with_smaller_chunks(model, caplog):
    limited = MemoryLimited(model, max_batch=1)
    images = torch.rand(4, 16, 16, 3)
    with caplog.at_level(logging.WARNING, logger="ddcolor"):
        out = ddcolor.colorize(limited, images, size=64, batch_size=4)
    assert limited.batches == [4, 2, 1, 1, 1, 1]
    assert "retrying 2 at a time" in caplog.text
    assert torch.allclose(out, ddcolor.colorize(model, images, size=64), atol=1e-4)

    with pytest.raises(MemoryError, match="lower size, use fp16"):
        ddcolor.colorize(MemoryLimited(model, max_batch=0), images, size=64, batch_size=2)


def test_fp16_pipeline_is_close_to_fp32(small_checkpoint, model, photos):
    half = ddcolor.load_model(small_checkpoint, precision="fp16", strict_precision=True)
    photo = photos[-1]
    full = ddcolor.colorize(model, photo, size=128)
    low = ddcolor.colorize(half, photo, size=128)
    assert torch.isfinite(low).all()
    assert (full - low).abs().mean() < 2 / 255


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_estimate_bounds_what_a_forward_really_uses(tiny_checkpoint, precision):
    # The node asks ComfyUI to free this much before a run: it must not be an
    # underestimate, and a gross overestimate would evict other models for nothing.
    model = ddcolor.load_model(tiny_checkpoint, precision=precision, strict_precision=True)
    x = torch.rand(1, 3, 384, 384)
    with torch.inference_mode():
        measured = peak_live_bytes(lambda: model(x))
    estimate = ddcolor.activation_bytes(model, 384)
    assert measured <= estimate <= 2.5 * measured, (measured, estimate)


# ----------------------------------------------------------------------------- bands of rows


@pytest.fixture
def tiny_bands(monkeypatch):
    """Bands of one or a few rows, so that every image below is cut into many."""
    monkeypatch.setattr(ddcolor.pipeline, "BAND_PIXELS", 97)


@pytest.mark.parametrize(
    "shape",
    [
        (1, 37, 53, 1),  # odd sizes, gray: one row per band
        (2, 45, 31, 3),  # two images of a chunk share each band; 45 rows up from 64, 31 columns down
        (1, 150, 41, 4),  # alpha; the height grows from 64, the width shrinks
        (1, 3, 500, 3),  # fewer rows than a band's pixels would allow
    ],
)
def test_bands_give_the_whole_image_result(model, tiny_bands, shape):
    images = torch.rand(*shape)
    banded = ddcolor.colorize(model, images, size=64, batch_size=shape[0])
    assert banded.shape == (*shape[:3], 4 if shape[-1] == 4 else 3)
    assert (banded - whole_image_colorize(model, images, 64)).abs().max() < 1e-4
    if shape[-1] == 4:
        assert torch.equal(banded[..., 3], images[..., 3])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16])
def test_integer_pixels_read_as_fractions_of_their_range(model, tiny_bands, dtype):
    top = torch.iinfo(dtype).max
    pixels = torch.randint(0, top + 1, (1, 29, 43, 4), dtype=torch.int32).to(dtype)
    out = ddcolor.colorize(model, pixels, size=64)
    assert (out - ddcolor.colorize(model, pixels.float() / top, size=64)).abs().max() < 1e-5
    assert (out - whole_image_colorize(model, pixels, 64)).abs().max() < 1e-4


def test_eight_bit_output_is_the_float_output_rounded(model, tiny_bands):
    pixels = torch.randint(0, 256, (1, 33, 47, 4), dtype=torch.uint8)
    eight_bit = ddcolor.colorize(model, pixels, size=64, dtype=torch.uint8)
    assert eight_bit.dtype == torch.uint8 and eight_bit.shape == pixels.shape
    assert torch.equal(eight_bit[..., 3], pixels[..., 3])  # alpha comes through unchanged
    rounded = (ddcolor.colorize(model, pixels, size=64) * 255 + 0.5).to(torch.uint8)
    assert (eight_bit.int() - rounded.int()).abs().max() <= 1
    with pytest.raises(ValueError, match="torch.float32 or torch.uint8"):
        ddcolor.colorize(model, pixels, size=64, dtype=torch.float16)


class ConstantChroma(torch.nn.Module):
    """A stand-in network with next to no activations: ab from a 1x1 convolution."""

    precision = "fp32"

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return 40 * self.mix(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_full_resolution_memory_is_the_output_and_a_band(monkeypatch, dtype):
    # The bound: at most 16 bytes per pixel beyond the input and the
    # output. Whole-image steps took over 100.
    monkeypatch.setattr(ddcolor.pipeline, "BAND_PIXELS", 1 << 14)
    images = torch.rand(1, 700, 900, 3) if dtype == torch.float32 else torch.randint(0, 256, (1, 700, 900, 1), dtype=torch.uint8)
    output_bytes = 700 * 900 * 3 * dtype.itemsize
    extra = peak_live_bytes(lambda: ddcolor.colorize(ConstantChroma(), images, size=64, dtype=dtype)) - output_bytes
    assert extra <= 16 * 700 * 900, extra  # in fact about 4: the bands, and rows of 64 values per image row
