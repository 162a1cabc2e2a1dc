"""Lab conversion agrees with OpenCV's float cvtColor (what the original pipeline uses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddcolor.color import colorfulness, delta_e_ciede2000, gray_rgb_from_lightness, lab_to_rgb, rgb_to_lab, rgb_to_lightness

cv2 = pytest.importorskip("cv2")


def random_rgb(n: int = 20000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = rng.random((1, n, 3), dtype=np.float32)
    # Include the corners of the cube and near-black values (the linear segment).
    corners = np.array([[[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]], np.float32)
    dark = rng.random((1, 200, 3), dtype=np.float32) * 0.02
    return np.concatenate([rgb, corners, dark], axis=1)


def to_torch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None]


def to_numpy(image: torch.Tensor) -> np.ndarray:
    return image[0].permute(1, 2, 0).numpy()


def test_rgb_to_lab_agrees_with_opencv():
    rgb = random_rgb()
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    actual = to_numpy(rgb_to_lab(to_torch(rgb)))
    assert np.abs(actual[..., 0] - expected[..., 0]).max() < 0.5
    assert np.abs(actual[..., 1:] - expected[..., 1:]).max() < 1.0


def test_lightness_alone_is_labs_first_channel():
    rgb = to_torch(random_rgb())
    lightness = rgb_to_lightness(rgb)
    assert lightness.shape == (1, 1, *rgb.shape[-2:])
    assert (lightness - rgb_to_lab(rgb)[:, :1]).abs().max() < 1e-4


def test_lab_to_rgb_agrees_with_opencv_including_out_of_gamut():
    rng = np.random.default_rng(1)
    lab = np.stack(
        [rng.uniform(0, 100, 20000), rng.uniform(-128, 127, 20000), rng.uniform(-128, 127, 20000)], axis=-1
    )[None].astype(np.float32)
    expected = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    actual = to_numpy(lab_to_rgb(to_torch(lab)))
    assert actual.min() >= 0 and actual.max() <= 1
    # 1 ab unit of Lab is at most ~1/100 of the RGB range; OpenCV's own float path is approximate.
    assert np.abs(actual - expected).max() < 0.01


def test_fixture_photo_lab_agrees_with_opencv(fixture_photos):
    from PIL import Image

    rgb = np.asarray(Image.open(fixture_photos[0]).convert("RGB"), dtype=np.float32) / 255
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    actual = to_numpy(rgb_to_lab(to_torch(rgb)))
    assert np.abs(actual[..., 0] - expected[..., 0]).max() < 0.5
    assert np.abs(actual[..., 1:] - expected[..., 1:]).max() < 1.0


def test_round_trip_is_exact_within_gamut():
    # OpenCV's 6-digit matrices are inverses to about 1e-5.
    rgb = to_torch(random_rgb(5000, seed=2)).double()
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-4


def test_gray_from_lightness_has_that_lightness_and_no_color():
    lightness = torch.linspace(0, 100, 101).view(1, 1, 1, 101)
    gray = gray_rgb_from_lightness(lightness)
    assert (gray - gray.mean(dim=1, keepdim=True)).abs().max() < 1e-4
    lab = rgb_to_lab(gray)
    assert (lab[:, 0:1] - lightness).abs().max() < 1e-3
    assert lab[:, 1:].abs().max() < 1e-3


def test_colorfulness_orders_images_by_color():
    gray = torch.full((3, 16, 16), 0.5)
    pale = gray.clone()
    pale[0] += 0.1
    vivid = torch.zeros(3, 16, 16)
    vivid[0, :, :8] = 1
    vivid[2, :, 8:] = 1
    assert colorfulness(gray) == 0
    assert 0 < colorfulness(pale) < colorfulness(vivid)


# Pairs and differences from Sharma, Wu and Dalal (2005), "The CIEDE2000 color-difference
# formula: implementation notes", Table 1 (pairs 1, 4, 7, 13, 15, 17, 22-25): hue wrap-around,
# neutral colors and large differences.
CIEDE2000_PAIRS = [
    ((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425),
    ((50, -1.3802, -84.2814), (50, 0, -82.7485), 1.0000),
    ((50, 0, 0), (50, -1, 2), 2.3669),
    ((50, 2.49, -0.001), (50, -2.49, 0.0009), 7.1792),
    ((50, 2.49, -0.001), (50, -2.49, 0.0011), 7.2195),
    ((50, -0.001, 2.49), (50, 0.0009, -2.49), 4.8045),
    ((50, 2.5, 0), (73, 25, -18), 27.1492),
    ((50, 2.5, 0), (61, -5, 29), 22.8977),
    ((50, 2.5, 0), (56, -27, -3), 31.9030),
    ((50, 2.5, 0), (58, 24, 15), 19.4535),
]


def test_ciede2000_matches_sharmas_published_pairs_both_ways():
    first = torch.tensor([p[0] for p in CIEDE2000_PAIRS]).T[:, :, None]  # (3, N, 1): an N x 1 "image"
    second = torch.tensor([p[1] for p in CIEDE2000_PAIRS]).T[:, :, None]
    expected = torch.tensor([p[2] for p in CIEDE2000_PAIRS], dtype=torch.float64)
    assert torch.allclose(delta_e_ciede2000(first, second).flatten(), expected, atol=1e-4)
    assert torch.allclose(delta_e_ciede2000(second, first).flatten(), expected, atol=1e-4)
    assert delta_e_ciede2000(first, first).abs().max() == 0
