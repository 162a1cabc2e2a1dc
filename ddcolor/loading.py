"""``load_model``: any checkpoint source -> a ready network on a device, in a precision."""

from __future__ import annotations

import logging
import os

import torch

from .checkpoint import model_from_state_dict, read_state_dict, resolve_source
from .model import DDColor
from .precision import apply_precision, resolve_precision

log = logging.getLogger("ddcolor")


def load_model(
    source: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    strict_precision: bool = False,
    models_dir: str | os.PathLike | None = None,
) -> DDColor:
    """Load a DDColor checkpoint for inference.

    ``source`` is a checkpoint file or folder in any supported format, or a
    published name (``ddcolor_modelscope``, ...), downloaded into
    ``models_dir`` on first use. ``precision`` is fp32, fp16, bf16 or auto; see
    ``ddcolor.resolve_precision`` for what runs where (a substitution is
    logged). The model comes back in eval mode on ``device``;
    ``ddcolor.precision_plan(model).precision`` says what it runs.
    """
    device = torch.device(device)
    chosen, reason = resolve_precision(precision, device, strict=strict_precision)
    if reason:
        log.warning("ddcolor: %s", reason)
    path = resolve_source(source, models_dir)
    model = model_from_state_dict(read_state_dict(path), source=str(path))
    # Convert on the CPU first: only the half-size copy travels to the device.
    return apply_precision(model, chosen).to(device)
