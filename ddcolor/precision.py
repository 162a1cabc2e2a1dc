"""Precision policy: which dtype a request resolves to, and how a model holds it.

In fp16 / bf16 the weights of every conv and linear are held in half, so the
model's weight memory halves. Tensors listed in a module's ``fp32_tensors``
stay FP32 (normalization layers, the ConvNeXt residual stream's writers,
depthwise convs and layer scales), and those modules compute in FP32.
``fp32_modules(model)`` lists them. What a model holds is one record,
``PrecisionPlan``, set only by ``apply_precision`` and read with
``precision_plan(model)``.

``mixed`` is what ``auto`` (and fp16) runs on a CPU with native bf16 units:
bf16 only in the ConvNeXt MLP layers of ``MIXED_SPLITS``, FP32 everywhere else.
Those MLPs are most of the forward's work, and in bf16 they keep the result
within fp16's bounds of fp32, which bf16 everywhere does not
(benchmarks/RESULTS.md, "Choosing auto on a CPU").
"""

from __future__ import annotations

import logging
import re
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, NamedTuple

import torch
from torch import Tensor, nn

log = logging.getLogger("ddcolor")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# What a user asks for (widget, --precision). ``mixed`` is also accepted: it is
# what ``auto`` resolves to on CPUs with native bf16, and loaders pass it on.
PRECISIONS = ("fp16", "fp32", "bf16", "auto")
RESOLVED = ("fp16", "fp32", "bf16", "mixed")
DESCRIPTIONS = {
    "fp16": "fp16",
    "fp32": "fp32",
    "bf16": "bf16",
    "mixed": "mixed (bf16 in MLP layers of the encoder's last two stages, fp32 elsewhere)",
}
# Which ConvNeXt MLP layers ``mixed`` holds in bf16, per kind of bf16 unit:
# (stages whose pwconv1 is bf16, stages whose pwconv2 is bf16), 0-based. The
# rounding of bf16 products differs between units, so each split was chosen by
# measuring against fp32 on that kind of CPU (benchmarks/RESULTS.md, "Choosing
# auto on a CPU", has the figures): with AVX-512 bf16 both layers of stages 2
# and 3 keep fp16's bounds (most of the MLP work); with AMX that split misses
# fp16's max bound on DDColor-T, and pwconv1 of stage 2 is left FP32.
MIXED_SPLITS = {"avx512": ((2, 3), (2, 3)), "amx": ((3,), (2, 3))}
# When a precision is slow or unsupported on a device, what runs instead: the
# first of these that is fast there. fp16 is never replaced by bf16, which
# misses fp16's accuracy bounds; mixed meets them.
SUBSTITUTES = {"fp16": ("mixed", "fp32"), "bf16": ("fp16", "fp32"), "mixed": ("fp16", "fp32"), "fp32": ("fp32",)}


class Resolved(NamedTuple):
    """What ``resolve_precision`` decided: the precision that runs, and why it is not
    the one asked for (None when it is, or when ``auto`` picked it)."""

    precision: str
    reason: str | None = None


@dataclass(frozen=True)
class PrecisionPlan:
    """How a model holds its weights: set by ``apply_precision``, read with ``precision_plan``."""

    precision: str = "fp32"  # one of RESOLVED
    # Which ConvNeXt MLP layers ``mixed`` holds in bf16 (as in ``MIXED_SPLITS``); None for the others.
    split: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    # Modules whose weights ``precision`` could not hold, so they stay FP32.
    kept_in_fp32: tuple[str, ...] = ()
    # Whether the modules with ``balance_for_half`` have rewritten themselves (done once per model).
    balanced_for_half: bool = False


# The one attribute a model holds its plan in (a model never converted has none: fp32).
_PLAN_ATTRIBUTE = "_precision_plan"


def precision_plan(model: nn.Module) -> PrecisionPlan:
    """What ``model`` runs in: its ``PrecisionPlan`` (FP32 for a model ``apply_precision`` never saw)."""
    return getattr(model, _PLAN_ATTRIBUTE, PrecisionPlan())


def resolve_precision(precision: str, device: torch.device | str, *, strict: bool = False) -> Resolved:
    """Map a requested precision to the one that will run on ``device``.

    ``auto`` picks fp16 on CUDA and MPS; on a CPU, ``mixed`` where the CPU has
    native bf16 units (AMX or AVX-512 bf16), else fp32. A precision that would
    be slow or unsupported on ``device`` runs the closest fast one instead
    (``SUBSTITUTES``), with the reason a caller logs; ``strict=True`` runs
    exactly what was asked, however slow.
    """
    if precision not in PRECISIONS + ("mixed",):
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    fast = fast_precisions(device)
    if precision == "auto":
        return Resolved(fast[0])
    if strict or precision in fast:
        return Resolved(precision)
    chosen = next(p for p in SUBSTITUTES[precision] if p in fast or p == "fp32")
    return Resolved(chosen, f"{precision} is slow or unsupported on {device.type}; running {DESCRIPTIONS[chosen]} instead")


def fast_precisions(device: torch.device | str) -> tuple[str, ...]:
    """Precisions that run at full speed on a device ("cuda:1", or a type: "cuda"), preferred first."""
    device = torch.device(device)
    if device.type == "cuda":
        return ("fp16", "bf16", "fp32") if cuda_native_bf16(device) else ("fp16", "fp32")
    if device.type == "mps":
        return ("fp16", "fp32")
    if device.type == "cpu":
        # Without native bf16 units (AVX2 only) bf16 and fp16 are emulated,
        # slower than fp32 (benchmarks/bench_matmul_bound.py --dtypes measures it).
        return ("mixed", "bf16", "fp32") if cpu_bf16_units() else ("fp32",)
    return ("fp32",)


def cuda_native_bf16(device: torch.device | None = None) -> bool:
    """Whether the GPU (default: the current one) computes bf16 in hardware: AMD (ROCm), NVIDIA from Ampere (compute capability 8) on.

    Older NVIDIA GPUs only emulate bf16, slower than fp16, although
    ``torch.cuda.is_bf16_supported()`` says yes for them.
    """
    if torch.version.hip:
        return True
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


@lru_cache(maxsize=1)
def cpu_bf16_units() -> str | None:
    """Which native bf16 instructions the CPU has for oneDNN: "amx", "avx512" or None."""
    try:  # PyTorch's own CPU probe, on every OS
        if torch.cpu._is_amx_tile_supported():
            return "amx"
        return "avx512" if torch.cpu._is_avx512_bf16_supported() else None
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return None
    if " amx_bf16" in flags:
        return "amx"
    return "avx512" if " avx512_bf16" in flags else None


def mixed_split() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``MIXED_SPLITS`` entry for this CPU (the AVX-512 one where it has no bf16 units: strict runs only)."""
    return MIXED_SPLITS.get(cpu_bf16_units() or "avx512", MIXED_SPLITS["avx512"])


def weight_dtype(precision: str, module_name: str, split: tuple[tuple[int, ...], tuple[int, ...]] | None) -> torch.dtype:
    """The dtype ``precision`` holds a module's (unpinned) weights in; ``split`` as in ``MIXED_SPLITS``."""
    if precision == "mixed":
        found = re.fullmatch(r"encoder\.arch\.stages\.(\d)\.\d+\.pwconv([12])", module_name)
        in_bf16 = found is not None and int(found[1]) in split[int(found[2]) - 1]
        return torch.bfloat16 if in_bf16 else torch.float32
    return DTYPES[precision]


def apply_precision(model: nn.Module, precision: str, *, split: tuple | None = None) -> nn.Module:
    """Hold ``model``'s weights in ``precision``, keeping pinned tensors FP32. In place.

    ``split``: which MLP layers ``mixed`` holds in bf16 (default: this CPU's
    ``MIXED_SPLITS`` entry). What was done is the model's ``precision_plan``.

    Before the first conversion to half, modules that have ``balance_for_half``
    rewrite themselves exactly (in FP32) so their half tensors stay in range;
    parents go before their children (``modules()`` order), which may rely on it.
    """
    if precision not in RESOLVED:
        raise ValueError(f"precision must be one of {', '.join(RESOLVED)}; got {precision!r}")
    balanced = precision_plan(model).balanced_for_half
    if precision != "fp32" and not balanced:
        for module in model.modules():
            if hasattr(module, "balance_for_half"):
                module.balance_for_half()
        balanced = True
    split = (split or mixed_split()) if precision == "mixed" else None
    kept = []
    for module_name, module in model.named_modules():
        pinned = set(getattr(module, "fp32_tensors", ()))
        tensors = {
            name: tensor
            for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
            if tensor is not None and tensor.is_floating_point()
        }
        dtype = weight_dtype(precision, module_name, split)
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
    setattr(model, _PLAN_ATTRIBUTE, PrecisionPlan(precision, split, tuple(kept), balanced))
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
    previous = precision_plan(model)
    if previous.precision == "fp32":
        yield
        return
    with torch.inference_mode(False):  # parameters must not become inference tensors
        apply_precision(model, "fp32")
    try:
        yield
    finally:
        with torch.inference_mode(False):
            apply_precision(model, previous.precision, split=previous.split)


def fp32_modules(model: nn.Module) -> list[str]:
    """Names of the modules that keep FP32 tensors and compute in FP32.

    Those pinned by design, plus any whose weights half precision could not hold.
    """
    kept = set(precision_plan(model).kept_in_fp32)
    return [name for name, module in model.named_modules() if getattr(module, "fp32_tensors", ()) or name in kept]


# ----------------------------------------------------------------------------- training

# What fine-tuning runs its forward and backward in (``--precision``).
TRAINING_PRECISIONS = ("auto", "fp16", "bf16", "fp32")


def training_precision(requested: str, device: torch.device | str) -> str:
    """The autocast type a fine-tuning run uses on ``device``: "fp16", "bf16" or "fp32".

    The model's weights and the optimizer's state stay FP32 whatever this
    says: ``autocast`` runs convs and matmuls in half, and the computations
    inference keeps FP32 (normalization, softmax logits, the ConvNeXt stream
    and its writers, the head's mixing: ``layers.pinned``) stay FP32.
    ``auto`` picks half where inference does: fp16 on CUDA and MPS (it needs
    dynamic loss scaling), bf16 on a CPU with native bf16 units, else fp32.
    """
    if requested not in TRAINING_PRECISIONS:
        raise ValueError(f"training precision must be one of {', '.join(TRAINING_PRECISIONS)}; got {requested!r}")
    device = torch.device(device)
    if requested == "auto":
        if device.type in ("cuda", "mps"):
            return "fp16"
        # bf16 on a CPU with bf16 units is faster than fp32: on a Xeon with AMX a DDColor-T step
        # (256, batch 2) takes 0.70x fp32's time, training everything or LoRA with checkpointing, and
        # bf16 was faster in every interleaved pair (benchmarks/RESULTS.md, "Fine-tuning on a CPU");
        # AVX-512 bf16 without AMX is not measured. Without such units bf16 is emulated and slower.
        return "bf16" if device.type == "cpu" and cpu_bf16_units() else "fp32"
    if requested == "bf16" and device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ValueError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16; choose fp16 or fp32")
        if not cuda_native_bf16(device):  # is_bf16_supported() counts emulation (NVIDIA before Ampere)
            log.warning("ddcolor: this GPU (%s) has no native bf16 units; bf16 training is emulated and slow: "
                        "choose auto (fp16 with loss scaling) or fp32", torch.cuda.get_device_name(device))
    if device.type == "cpu" and requested == "fp16":
        # PyTorch has no fast fp16 convolution backward on CPUs.
        log.warning("ddcolor: fp16 training on a CPU is very slow; choose auto, bf16 or fp32")
    elif device.type == "cpu" and requested == "bf16" and not cpu_bf16_units():
        log.warning("ddcolor: this CPU has no native bf16 units; bf16 training is emulated and slow")
    return requested


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The context to run a training forward in: ``torch.autocast`` to ``precision``'s type, nothing for fp32."""
    if precision not in ("fp16", "bf16", "fp32"):
        raise ValueError(f"autocast needs fp16, bf16 or fp32 (see training_precision); got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])
