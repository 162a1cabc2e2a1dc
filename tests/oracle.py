"""The parity oracle: spandrel-extra-arches' port of the original DDColor code."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn


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
