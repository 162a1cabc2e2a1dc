"""ddcolor.cli.imageio: every Pillow mode reads into colorize's layout; writes are atomic."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

from ddcolor.cli import imageio
from ddcolor.cli.imageio import ImageReadError, read_image, read_pixels, write_bytes, write_image


def gradient(width: int = 24, height: int = 16) -> np.ndarray:
    """uint8 (H, W) ramp with distinct values in every column."""
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


def save(tmp_path, name: str, image: Image.Image, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    "mode, name, channels",
    [
        ("1", "bilevel.png", 1),
        ("L", "gray.png", 1),
        ("L", "gray.jpg", 1),
        ("RGB", "color.jpg", 3),
        ("RGB", "color.tif", 3),
        ("CMYK", "cmyk.jpg", 3),
        ("CMYK", "cmyk.tif", 3),
        ("YCbCr", "ycbcr.tif", 3),
        ("LA", "gray_alpha.png", 4),
        ("RGBA", "rgba.png", 4),
        ("RGBA", "rgba.webp", 4),
    ],
)
def test_every_mode_reads_as_float_hwc_in_unit_range(tmp_path, mode, name, channels):
    base = Image.fromarray(gradient()).convert(mode)
    if "A" in mode:
        base.putalpha(128)  # not opaque: some encoders drop an all-opaque alpha channel
    path = save(tmp_path, name, base)
    array = read_image(path)
    assert array.dtype == np.float32
    assert array.shape == (16, 24, channels)
    assert 0.0 <= array.min() and array.max() <= 1.0
    # The ramp survives every conversion: left is dark, right is bright.
    assert array[:, -1, 0].mean() - array[:, 0, 0].mean() > 0.5


def test_palette_without_transparency_is_rgb_and_with_it_keeps_alpha(tmp_path):
    rgb = Image.fromarray(np.stack([gradient()] * 3, axis=-1)).convert("P")
    assert read_image(save(tmp_path, "p.png", rgb)).shape[-1] == 3

    transparent = rgb.copy()
    transparent.info["transparency"] = int(np.asarray(rgb)[0, 0])  # the palette index of the left column
    array = read_image(save(tmp_path, "p_alpha.png", transparent, transparency=transparent.info["transparency"]))
    assert array.shape[-1] == 4
    assert array[0, 0, 3] == 0.0 and array[0, -1, 3] == 1.0


def test_alpha_values_come_through_exactly(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 100
    rgba[..., 3] = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    array = read_image(save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(np.round(array[..., 3] * 255).astype(np.uint8), rgba[..., 3])


def test_sixteen_bit_gray_keeps_its_precision(tmp_path):
    values = np.array([[0, 1000, 1001, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # 16-bit grayscale PNG
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    array = read_image(path)
    assert array.shape == (1, 5, 1)
    np.testing.assert_allclose(array[0, :, 0], values[0] / 65535.0, atol=1e-6)
    assert array[0, 2, 0] > array[0, 1, 0]  # 8-bit reduction would merge 1000 and 1001


@pytest.mark.parametrize(
    "array, name, dtype",
    [
        (gradient(), "gray.png", np.uint8),
        (np.dstack([gradient()] * 3 + [gradient()[::-1]]), "rgba.png", np.uint8),
        (gradient().astype(np.uint16) * 257 + 3, "deep.png", np.uint16),
        (gradient().astype(np.int32), "eight_bit_in_int32.tif", np.uint8),
        (gradient().astype(np.int32) * 200, "sixteen_bit_in_int32.tif", np.uint16),
    ],
)
def test_pixels_keep_the_files_bit_depth_and_read_image_is_their_fraction(tmp_path, array, name, dtype):
    # Scans stay as small as their file's samples until colorize converts them band by band.
    path = save(tmp_path, name, Image.fromarray(array))
    pixels = read_pixels(path)
    assert pixels.dtype == dtype and pixels.shape == (*array.shape[:2], 1 if array.ndim == 2 else array.shape[2])
    np.testing.assert_array_equal(pixels.reshape(array.shape), array)
    np.testing.assert_allclose(read_image(path), pixels / np.iinfo(dtype).max, atol=1e-7)


def test_scans_past_pillows_bomb_limit_are_refused_with_how_to_allow_them(tmp_path, monkeypatch):
    path = save(tmp_path, "scan.png", Image.fromarray(gradient(width=40, height=30)))  # 1200 pixels
    monkeypatch.delenv(imageio.MAX_MEGAPIXELS_VARIABLE, raising=False)
    for limit in (1000, 500):  # past Pillow's limit (its warning), and twice past it (its error)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ImageReadError, match=rf"1200 pixels.*set the environment variable {imageio.MAX_MEGAPIXELS_VARIABLE}") as error:
            read_pixels(path)
        assert str(path) in str(error.value)
    monkeypatch.setenv(imageio.MAX_MEGAPIXELS_VARIABLE, "0.0012")
    assert read_pixels(path).shape == (30, 40, 1)
    monkeypatch.setenv(imageio.MAX_MEGAPIXELS_VARIABLE, "lots")
    with pytest.raises(ImageReadError, match="DDCOLOR_MAX_MEGAPIXELS=lots: use a number of megapixels"):
        read_pixels(path)


def test_32_bit_integer_and_float_gray_are_scaled_by_their_range(tmp_path):
    eight_bit_in_int32 = Image.fromarray(np.array([[0, 128, 255]], dtype=np.int32), mode="I")
    np.testing.assert_allclose(read_image(save(tmp_path, "i.tif", eight_bit_in_int32))[0, :, 0], [0, 128 / 255, 1], atol=1e-6)
    unit_float = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32), mode="F")
    np.testing.assert_allclose(read_image(save(tmp_path, "f.tif", unit_float))[0, :, 0], [0, 0.25, 1], atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 20), np.uint8)  # landscape as stored
    pixels[0, 0] = 255  # top-left marker
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90-degree clockwise turn
    array = read_image(save(tmp_path, "rotated.jpg", image, exif=exif, quality=100))
    assert array.shape[:2] == (20, 10)  # displayed as portrait
    # A clockwise turn moves the stored top-left corner to the top-right.
    assert array[0, -1, 0] > 0.5 and array[0, 0, 0] < 0.5


def test_real_palette_photo(fixture_photos):
    einstein = next((p for p in fixture_photos if p.name == "einstein.png"), None)
    if einstein is None:
        pytest.skip("einstein.png fixture absent")
    array = read_image(einstein)
    assert array.shape[:2] == (439, 328) and array.shape[-1] in (1, 3)
    assert array.std() > 0.05  # a real picture, not a blank


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"this is not an image", "not an image format Pillow can read"),
        (None, "cannot decode"),  # a PNG cut short
    ],
)
def test_unreadable_files_raise_with_the_file_name(tmp_path, content, expected):
    path = tmp_path / "broken.png"
    if content is None:
        full = tmp_path / "full.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
        content = full.read_bytes()[: full.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=expected) as error:
        read_image(path)
    assert str(path) in str(error.value)


def test_missing_file_and_folder_raise_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


# ----------------------------------------------------------------------------- writing


def test_png_round_trip_keeps_alpha(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (12, 9, 4), dtype=np.uint8)
    path = write_image(tmp_path / "out.png", rgba.astype(np.float32) / 255)
    with Image.open(path) as image:
        assert image.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(image), rgba)


def test_jpeg_quality_is_applied_and_alpha_is_refused(tmp_path):
    rgb = np.random.default_rng(2).random((64, 64, 3)).astype(np.float32)
    low = write_image(tmp_path / "low.jpg", rgb, quality=20)
    high = write_image(tmp_path / "high.jpeg", rgb, quality=95)
    assert low.stat().st_size < high.stat().st_size / 2
    with Image.open(high) as image:
        assert image.format == "JPEG" and image.size == (64, 64)
    with pytest.raises(ValueError, match="alpha"):
        write_image(tmp_path / "a.jpg", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="can only write"):
        write_image(tmp_path / "a.bmp", rgb)


def test_outputs_get_ordinary_permissions(tmp_path):
    path = write_image(tmp_path / "perm.png", np.zeros((2, 2, 3), np.float32))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("interruption", [OSError("disk full"), KeyboardInterrupt()])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, interruption):
    target = tmp_path / "photo_color.png"
    target.write_bytes(b"previous result")

    def save_half_then_fail(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half of an image")
        raise interruption

    monkeypatch.setattr(Image.Image, "save", save_half_then_fail)
    with pytest.raises(type(interruption)):
        write_image(target, np.zeros((4, 4, 3), np.float32))
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo_color.png"]


def test_write_bytes_is_atomic_and_creates_folders(tmp_path):
    path = write_bytes(tmp_path / "a" / "b" / "x.png", b"data")
    assert path.read_bytes() == b"data"
    assert not list(path.parent.glob(f"*{imageio.TEMP_SUFFIX}"))


def test_uint8_pixels_are_written_as_they_are(tmp_path):
    """A caller that converted with to_uint8 already (the Ray workers) writes the same bytes."""
    colored = np.random.default_rng(0).random((16, 24, 3), dtype=np.float32)
    write_image(tmp_path / "float.png", colored)
    write_image(tmp_path / "uint8.png", imageio.to_uint8(colored))
    assert (tmp_path / "float.png").read_bytes() == (tmp_path / "uint8.png").read_bytes()


def test_temporaries_left_by_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "p.v2_color.png"
    target.write_bytes(b"complete")
    stale = [tmp_path / ".p.v2_color.png.k3j_9x2a.part", tmp_path / ".p.v2_color.png.0abc_def.part"]
    kept = [tmp_path / ".other_color.png.k3j_9x2a.part", tmp_path / "p.v2_color.png.part", tmp_path / ".p.v2_color.png"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert imageio.remove_temporaries([target, tmp_path / "missing" / "q.png"]) == 2
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept) and target.read_bytes() == b"complete"
