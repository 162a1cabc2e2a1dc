"""Precision policy: which dtype a request resolves to, and how a model holds it.

In fp16 / bf16 the weights of every conv and linear are held in half, so the
model's weight memory halves. Tensors listed in a module's ``fp32_tensors``
stay FP32 (normalization layers, ConvNeXt depthwise convs and layer scales),
and those modules compute in FP32. ``fp32_modules(model)`` lists them.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

import torch
from torch import Tensor, nn

log = logging.getLogger("ddcolor")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = ("fp16", "fp32", "bf16", "auto")


def resolve_precision(precision: str, device: torch.device | str, *, strict: bool = False) -> str:
    """Map a requested precision to the one that will run on ``device``.

    ``auto`` picks fp16 on CUDA (bf16 where fp16 is unsupported); on a CPU,
    bf16 where the CPU has AMX bf16 units (measured 1.9x faster than fp32 for
    DDColor-L at 512, benchmarks/RESULTS.md), else fp32. A half precision that
    would be slow or unsupported on ``device`` runs the closest fast one
    instead (the other half precision, else fp32) and logs one line;
    ``strict=True`` runs exactly what was asked, however slow.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    fast = fast_precisions(device.type)
    if precision == "auto":
        return fast[0]
    if strict or precision in fast:
        return precision
    other_half = {"fp16": "bf16", "bf16": "fp16"}[precision]
    chosen = other_half if other_half in fast else "fp32"
    log.warning("ddcolor: %s is slow or unsupported on %s; running %s instead", precision, device.type, chosen)
    return chosen


def fast_precisions(device_type: str) -> tuple[str, ...]:
    """Precisions that run at full speed on a device type, preferred first."""
    if device_type == "cuda":
        return ("fp16", "bf16", "fp32") if torch.cuda.is_bf16_supported() else ("fp16", "fp32")
    if device_type == "mps":
        return ("fp16", "fp32")
    if device_type == "cpu":
        return {"amx": ("bf16", "fp32"), "avx512": ("fp32", "bf16")}.get(cpu_bf16_units(), ("fp32",))
    return ("fp32",)


@lru_cache(maxsize=1)
def cpu_bf16_units() -> str | None:
    """Which native bf16 instructions the CPU has for oneDNN: "amx", "avx512" or None."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return None
    if " amx_bf16" in flags:
        return "amx"
    return "avx512" if " avx512_bf16" in flags else None


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """Hold ``model``'s weights in ``precision``, keeping pinned tensors FP32. In place.

    Before the first conversion to half, modules that have ``balance_for_half``
    rewrite themselves exactly (in FP32) so their half tensors stay in range.
    """
    dtype = DTYPES[precision]
    if dtype != torch.float32 and not getattr(model, "balanced_for_half", False):
        for module in model.modules():
            if hasattr(module, "balance_for_half"):
                module.balance_for_half()
        model.balanced_for_half = True
    kept = []
    for module_name, module in model.named_modules():
        pinned = set(getattr(module, "fp32_tensors", ()))
        tensors = {
            name: tensor
            for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
            if tensor is not None and tensor.is_floating_point()
        }
        converted = {name: t.to(torch.float32 if name in pinned else dtype) for name, t in tensors.items()}
        # A module computes in one dtype: if half cannot hold one of its
        # tensors (weight or bias), all of them stay FP32.
        if not all(holds(tensors[name], c) for name, c in converted.items()):
            kept.append(module_name)
            converted = {name: t.float() for name, t in tensors.items()}
        for name, tensor in tensors.items():
            if converted[name].dtype == tensor.dtype:
                continue
            value = converted[name]
            if isinstance(tensor, nn.Parameter):
                value = nn.Parameter(value, requires_grad=tensor.requires_grad)
            setattr(module, name, value)
    if kept:
        log.info("ddcolor: %d layer(s) with weights out of %s's range stay fp32: %s", len(kept), precision, ", ".join(kept[:4]))
    model.kept_in_fp32 = kept
    model.precision = precision
    return model


def holds(tensor: Tensor, converted: Tensor) -> bool:
    """Whether ``converted`` keeps ``tensor``'s values to its dtype's rounding.

    Rounding moves a tensor by at most half its dtype's epsilon, relative to
    its norm; more means values overflowed to inf or sank into subnormals,
    as they do in fp16 for a checkpoint with scales fp16 cannot hold.
    """
    if converted.dtype == torch.float32:
        return True
    reference = tensor.float()
    error = (converted.float() - reference).norm()
    return bool(torch.isfinite(error)) and error <= torch.finfo(converted.dtype).eps * reference.norm()


@contextmanager
def full_precision(model: nn.Module) -> Iterator[None]:
    """Run the block with ``model`` computing in FP32, then hold it in its precision again.

    Half weights widen to FP32 exactly and narrow back to the same values, so
    nothing is lost; the FP32 copy lives only for the block.
    """
    previous = getattr(model, "precision", "fp32")
    if previous == "fp32":
        yield
        return
    with torch.inference_mode(False):  # parameters must not become inference tensors
        apply_precision(model, "fp32")
    try:
        yield
    finally:
        with torch.inference_mode(False):
            apply_precision(model, previous)


def fp32_modules(model: nn.Module) -> list[str]:
    """Names of the modules that keep FP32 tensors and compute in FP32.

    Those pinned by design, plus any whose weights half precision could not hold.
    """
    kept = set(getattr(model, "kept_in_fp32", ()))
    return [name for name, module in model.named_modules() if getattr(module, "fp32_tensors", ()) or name in kept]
