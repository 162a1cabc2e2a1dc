"""sRGB <-> CIE Lab (D65) in torch, agreeing with OpenCV's float ``cvtColor``.

All functions take channels-first tensors ``(*, 3, H, W)``, work on any device
and dtype, and keep no state. RGB is sRGB in [0, 1]; L is in [0, 100], a and b
roughly in [-128, 127]. The constants are OpenCV's (the original DDColor
pipeline converts with ``cv2.COLOR_BGR2Lab`` / ``COLOR_Lab2BGR`` on float images).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Linear sRGB -> XYZ and back (D65), as in OpenCV.
RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
XYZ_TO_RGB = (
    (3.240479, -1.53715, -0.498535),
    (-0.969256, 1.875991, 0.041556),
    (0.055648, -0.204043, 1.057311),
)
WHITE_D65 = (0.950456, 1.0, 1.088754)
# CIE Lab's linear segment below (6/29)^3.
EPSILON = 0.008856
KAPPA_SLOPE = 7.787


def _mix(matrix: tuple, x: Tensor) -> Tensor:
    m = torch.tensor(matrix, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,...jhw->...ihw", m, x)


def srgb_to_linear(rgb: Tensor) -> Tensor:
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(rgb: Tensor) -> Tensor:
    return torch.where(rgb <= 0.0031308, rgb * 12.92, 1.055 * rgb.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def _lab_f(t: Tensor) -> Tensor:
    """CIE Lab's companding of XYZ relative to the white point."""
    return torch.where(t > EPSILON, t.clamp(min=EPSILON) ** (1 / 3), KAPPA_SLOPE * t + 16 / 116)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB (*, 3, H, W) in [0, 1] -> Lab (*, 3, H, W)."""
    xyz = _mix(RGB_TO_XYZ, srgb_to_linear(rgb))
    white = torch.tensor(WHITE_D65, dtype=rgb.dtype, device=rgb.device)[:, None, None]
    fx, fy, fz = _lab_f(xyz / white).unbind(-3)
    lightness = 116 * fy - 16
    return torch.stack((lightness, 500 * (fx - fy), 200 * (fy - fz)), dim=-3)


def rgb_to_lightness(rgb: Tensor) -> Tensor:
    """sRGB (*, 3, H, W) in [0, 1] -> L (*, 1, H, W): ``rgb_to_lab``'s first channel, without computing a and b."""
    luminance = _mix(RGB_TO_XYZ[1:2], srgb_to_linear(rgb))  # Y; the white's Y is 1
    return 116 * _lab_f(luminance) - 16


def lab_to_rgb(lab: Tensor) -> Tensor:
    """Lab (*, 3, H, W) -> sRGB (*, 3, H, W), clipped to [0, 1] (out-of-gamut colors clip)."""
    lightness, a, b = lab.unbind(-3)
    fy = (lightness + 16) / 116
    f = torch.stack((fy + a / 500, fy, fy - b / 200), dim=-3)
    t = torch.where(f > 6 / 29, f**3, (f - 16 / 116) / KAPPA_SLOPE)
    white = torch.tensor(WHITE_D65, dtype=lab.dtype, device=lab.device)[:, None, None]
    linear = _mix(XYZ_TO_RGB, t * white).clamp(0, 1)
    return linear_to_srgb(linear).clamp(0, 1)


def gray_rgb_from_lightness(lightness: Tensor) -> Tensor:
    """L (*, 1, H, W) -> the gray sRGB image (*, 3, H, W) with that lightness and a = b = 0."""
    zeros = torch.zeros_like(lightness)
    return lab_to_rgb(torch.cat((lightness, zeros, zeros), dim=-3))


def colorfulness(rgb: Tensor) -> float:
    """Hasler & Suesstrunk (2003) colorfulness of sRGB (*, 3, H, W) in [0, 1], on their 0-255 scale."""
    r, g, b = (255 * rgb.double()).unbind(-3)
    rg = r - g
    yb = 0.5 * (r + g) - b
    spread = torch.sqrt(rg.var(unbiased=False) + yb.var(unbiased=False))
    center = torch.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return float(spread + 0.3 * center)


def delta_e_ciede2000(lab1: Tensor, lab2: Tensor) -> Tensor:
    """CIEDE2000 color difference of Lab (*, 3, H, W) pairs -> (*, H, W), computed in float64.

    The formula of Sharma, Wu and Dalal (2005), with kL = kC = kH = 1. About 1
    is a just noticeable difference; 2-10 perceptible at a glance.
    """
    L1, a1, b1 = lab1.double().unbind(-3)
    L2, a2, b2 = lab2.double().unbind(-3)
    chroma_mean = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    # a* is stretched for nearly neutral colors, where the eye sees hue differences better.
    g = 0.5 * (1 - torch.sqrt(chroma_mean**7 / (chroma_mean**7 + 25.0**7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = torch.hypot(a1, b1), torch.hypot(a2, b2)
    h1 = torch.rad2deg(torch.atan2(b1, a1)) % 360
    h2 = torch.rad2deg(torch.atan2(b2, a2)) % 360
    neutral = (c1 * c2) == 0  # a hue is undefined when either chroma is 0

    dh = h2 - h1
    dh = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dh = torch.where(neutral, torch.zeros_like(dh), dh)
    d_lightness = L2 - L1
    d_chroma = c2 - c1
    d_hue = 2 * torch.sqrt(c1 * c2) * torch.sin(torch.deg2rad(dh) / 2)

    lightness = (L1 + L2) / 2
    chroma = (c1 + c2) / 2
    hue_sum = h1 + h2
    hue = torch.where((h1 - h2).abs() <= 180, hue_sum / 2, torch.where(hue_sum < 360, (hue_sum + 360) / 2, (hue_sum - 360) / 2))
    hue = torch.where(neutral, hue_sum, hue)

    def cos_deg(x: Tensor) -> Tensor:
        return torch.cos(torch.deg2rad(x))

    t = 1 - 0.17 * cos_deg(hue - 30) + 0.24 * cos_deg(2 * hue) + 0.32 * cos_deg(3 * hue + 6) - 0.20 * cos_deg(4 * hue - 63)
    rotation = 30 * torch.exp(-(((hue - 275) / 25) ** 2))
    r_c = 2 * torch.sqrt(chroma**7 / (chroma**7 + 25.0**7))
    s_l = 1 + 0.015 * (lightness - 50) ** 2 / torch.sqrt(20 + (lightness - 50) ** 2)
    s_c = 1 + 0.045 * chroma
    s_h = 1 + 0.015 * chroma * t
    r_t = -torch.sin(torch.deg2rad(2 * rotation)) * r_c
    terms = (d_lightness / s_l) ** 2 + (d_chroma / s_c) ** 2 + (d_hue / s_h) ** 2 + r_t * (d_chroma / s_c) * (d_hue / s_h)
    return torch.sqrt(terms.clamp(min=0))
