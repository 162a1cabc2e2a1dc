"""Oracles: spandrel-extra-arches' port of the original DDColor code, and our pipeline on whole images."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddcolor.color import gray_rgb_from_lightness, lab_to_rgb, rgb_to_lab


def original_model(state: dict[str, Tensor]) -> nn.Module:
    """The original architecture with ``state`` loaded (eval-mode spectral norm, hooks and all)."""
    pytest.importorskip("torchvision")
    arch = pytest.importorskip("spandrel_extra_arches.architectures.DDColor")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return arch.DDColorArch().load(dict(state)).model.eval()


def load_state(path) -> dict[str, Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["params"]


def relative_difference(reference: Tensor, other: Tensor) -> float:
    """max |reference - other| / max |reference|"""
    return float((reference - other).abs().max() / reference.abs().max())


def whole_image_colorize(model, images: Tensor, size: int) -> Tensor:
    """What ``ddcolor.colorize`` computed before it worked in bands of rows: each step on whole images."""

    def resize(x, height, width):
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)

    scale = 1 if images.is_floating_point() else torch.iinfo(images.dtype).max
    x = (images.float() / scale).clamp(0, 1).permute(0, 3, 1, 2)
    rgb = x[:, :3] if x.shape[1] >= 3 else x.expand(-1, 3, -1, -1)
    small_lightness = rgb_to_lab(resize(rgb, size, size))[:, :1]
    with torch.inference_mode():
        ab = model(gray_rgb_from_lightness(small_lightness)).float().clamp(-128, 127)
    lab = torch.cat((rgb_to_lab(rgb)[:, :1], resize(ab, *x.shape[-2:])), dim=1)
    return torch.cat((lab_to_rgb(lab), x[:, 3:]), dim=1).permute(0, 2, 3, 1)
