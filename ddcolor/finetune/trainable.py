"""A DDColor to fine-tune, and the way back to an ordinary checkpoint.

``trainable_model`` builds the network from a checkpoint in the published
layout the way the original trains it:

* spectral norm is live: each spectral-norm conv keeps ``weight_orig``,
  ``weight_u`` and ``weight_v`` (the published keys) and its weight is
  ``weight_orig / (u . W v)``, after one power iteration per forward in train
  mode, as ``torch.nn.utils.spectral_norm`` does. The weight is formed when
  its conv runs (again when a checkpointed block is recomputed) and dropped
  after, so the model never holds a second copy of those weights between
  uses; the fused head, which reads two of them without calling their convs,
  forms those two itself;
* what trains is chosen by ``train``: ``all``; ``decoder`` (the encoder is
  frozen); ``lora`` (low-rank adapters on the encoder MLPs and the color
  decoder's linear layers, everything else frozen). A frozen layer's stored
  tensors never change: frozen BatchNorm and spectral-norm layers run in eval
  mode (running statistics and power iteration stay as loaded);
* ``checkpointing`` recomputes each ConvNeXt block, each U-Net block of the
  pixel decoder, each color-decoder layer and each group of the head's
  sub-pixels in the backward pass instead of keeping their activations.

Nothing is rebalanced for half precision as inference does at load
(``balance_for_half``): the optimizer sees the checkpoint's own parameters, as
the original trains them, fp32 and mixed-precision runs train the same
parameters, and frozen tensors are exported exactly as loaded. Under autocast
the computations inference pins stay FP32 (normalization, softmax logits, the
ConvNeXt stream and its writers, the layer scales). What inference's load-time
rewrites protect instead (a checkpoint's scales on the encoder's taps, the
pixel decoder's BatchNorms, the query stream, attention, FFN and color
embedding layers, or the head's mixing) is measured: ``half_range_units``
runs the model once with fp16's half ops computed in FP32 and names each unit
(a ConvNeXt block, U-Net block, color-decoder layer or MLP, a lone layer, the
head) in which a weight or activation would leave fp16's range, less a
margin; ``compute_in_fp32`` runs those units with autocast off, as inference
keeps in FP32 what half cannot hold. The trainer measures on the first fp16
batch and again after any fp16 forward that overflows. Units are whole so
that a BatchNorm, which hands back its input's dtype, gets FP32 input.

``published_state_dict`` turns the model back into the published layout,
adapters merged into their weights, and ``save_checkpoint`` writes it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import MethodType

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from ..checkpoint import IGNORED_KEYS, config_from_state_dict, load_strictly, network_tensors, spectral_sigma
from ..convnext import Block
from ..decoder import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer, UnetBlockWide
from ..layers import BatchNorm2d, Linear, MultiheadAttention, autocast_off
from ..model import DDColor, DDColorConfig
from .config import TRAIN_CHOICES

# torch.nn.utils.spectral_norm's defaults, which the original uses.
SPECTRAL_EPS = 1e-12
# A unit computes in FP32 under fp16 autocast once one of its half tensors passes
# this: fp16's largest value over 8, a margin for other batches and for weights
# that grow as they train (an overflow later is measured again).
HALF_RANGE_LIMIT = torch.finfo(torch.float16).max / 8
# What computes in FP32 as one piece when one of its tensors leaves fp16's range.
FP32_UNITS = (Block, UnetBlockWide, CrossAttentionLayer, SelfAttentionLayer, FFNLayer, MLP)
# The functions and Tensor methods (``a @ b`` is ``matmul``) that autocast runs in half, by name.
HALF_FUNCTIONS = {"conv2d", "linear", "matmul", "__matmul__", "mm", "bmm", "addmm", "baddbmm"}
# The name ``half_range_units`` gives the fused head (``DDColor.head``, not a module).
HEAD = "head"


class TrainableDDColor(DDColor):
    """DDColor with live spectral norm (see the module docstring)."""

    def __init__(self, config: DDColorConfig, spectral: list[str]):
        super().__init__(config)
        self.spectral = list(spectral)
        for name in self.spectral:
            conv = self.get_submodule(name)
            weight = conv.weight
            del conv.weight
            conv.weight_orig = nn.Parameter(weight.detach())
            conv.register_buffer("weight_u", weight.new_empty(weight.shape[0]))
            conv.register_buffer("weight_v", weight.new_empty(weight[0].numel()))
            conv.weight = None  # a plain attribute while the conv runs: see form_spectral_weight
            conv.register_forward_pre_hook(_form_before_forward)
            conv.register_forward_hook(_drop_after_forward, always_call=True)  # also when the conv raises
        # Tensors of the source checkpoint the network does not use, saved back as they came.
        self.passthrough: dict[str, Tensor] = {}
        self.fp32_units: list[str] = []  # see compute_in_fp32

    def forward(self, x: Tensor) -> Tensor:
        self.iterate_spectral_norms()
        return super().forward(x)

    def head(self, color_embed: Tensor, features: Tensor, x: Tensor) -> Tensor:
        convs = (self.refine_net[0][0], self.decoder.last_shuf.conv[0])
        for conv in convs:
            form_spectral_weight(conv)
        try:
            return super().head(color_embed, features, x)
        finally:
            for conv in convs:
                conv.weight = None

    def iterate_spectral_norms(self) -> None:
        """One power iteration for each spectral-norm conv that trains; the forward's ``u`` and ``v``."""
        for name in self.spectral:
            conv = self.get_submodule(name)
            if conv.training:
                with autocast_off(conv.weight_orig.device):  # in FP32 inside a training forward's autocast
                    _power_iteration(conv.weight_orig.detach().flatten(1), conv.weight_u, conv.weight_v)
            # Copies: the next iteration updates the buffers in place, and autograd keeps these.
            conv.sigma_vectors = (conv.weight_u.clone(), conv.weight_v.clone())

    def train(self, mode: bool = True) -> TrainableDDColor:
        super().train(mode)
        for module in self.modules():
            stateful = isinstance(module, nn.modules.batchnorm._BatchNorm) or hasattr(module, "weight_orig")
            if stateful and not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self


def form_spectral_weight(conv: nn.Module) -> None:
    """Set ``conv.weight`` to ``weight_orig / (u . W v)`` with this forward's ``u`` and ``v``: the
    same values each time within a forward, so a recomputed block saves what the forward saved."""
    with autocast_off(conv.weight_orig.device):
        conv.weight = conv.weight_orig / spectral_sigma(conv.weight_orig, *conv.sigma_vectors)


def _form_before_forward(conv: nn.Module, args) -> None:
    form_spectral_weight(conv)


def _drop_after_forward(conv: nn.Module, args, out) -> None:
    conv.weight = None


@torch.no_grad()
def _power_iteration(matrix: Tensor, u: Tensor, v: Tensor) -> None:
    """One step of power iteration on ``u`` and ``v``, in place."""
    F.normalize(torch.mv(matrix.t(), u), dim=0, eps=SPECTRAL_EPS, out=v)
    F.normalize(torch.mv(matrix, v), dim=0, eps=SPECTRAL_EPS, out=u)


class LowRankDelta(nn.Module):
    """Parametrization ``weight -> weight + up @ down`` of rank ``rank`` (LoRA, alpha = rank).

    ``up`` starts at zero, so the model starts unchanged; ``down`` as a
    Linear's weight. The sum is formed in FP32 (autocast casts it per op).
    """

    def __init__(self, weight: Tensor, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, weight.shape[1], device=weight.device))
        self.up = nn.Parameter(torch.zeros(weight.shape[0], rank, device=weight.device))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def forward(self, weight: Tensor) -> Tensor:
        with autocast_off(weight.device):
            return weight + self.up @ self.down


def lora_targets(model: DDColor) -> list[tuple[nn.Module, str]]:
    """(module, tensor name) pairs that ``train="lora"`` adapts: the encoder's
    MLP layers and the color decoder's linear layers (attention input and
    output projections, FFNs, the color embedding MLP)."""
    targets: list[tuple[nn.Module, str]] = []
    for block in (b for stage in model.encoder.arch.stages for b in stage):
        targets += [(block.pwconv1, "weight"), (block.pwconv2, "weight")]
    for module in model.decoder.color_decoder.modules():
        if isinstance(module, MultiheadAttention):
            targets.append((module, "in_proj_weight"))
        elif isinstance(module, Linear):
            targets.append((module, "weight"))
    return targets


# ----------------------------------------------------------------------------- fp16's range


class _HalfOpPeaks(TorchFunctionMode):
    """Runs the calls autocast would put in half in FP32 instead, and gives each one's largest
    |value| (inputs, weights and output) to ``record``; calls with autocast off (pinned) run as they are."""

    def __init__(self, device_type: str, record):
        super().__init__()
        self.device_type, self.record = device_type, record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) not in HALF_FUNCTIONS or not torch.is_autocast_enabled(self.device_type):
            return func(*args, **kwargs)
        with torch.autocast(self.device_type, enabled=False):
            out = func(*args, **kwargs)
        tensors = [t for t in (*args, *kwargs.values(), out) if isinstance(t, Tensor) and t.is_floating_point()]
        self.record(max(float(t.detach().abs().amax()) for t in tensors))
        return out


@torch.no_grad()
def half_range_units(model: DDColor, gray: Tensor, limit: float = HALF_RANGE_LIMIT) -> list[str]:
    """The units (see ``FP32_UNITS``; ``HEAD`` for the fused head) in which fp16 autocast would
    hold a tensor beyond ``limit`` when ``model`` colors ``gray``.

    One forward without gradients in eval mode (no power iteration: nothing
    changes), under fp16 autocast, with the half computations run in FP32 and
    measured: their inputs, weights and outputs, and the outputs of
    BatchNorms (which hand back the half dtype of the conv before them). Units
    already computing in FP32 (``compute_in_fp32``) measure nothing.
    """
    modules = dict(model.named_modules())
    names = {id(module): name for name, module in modules.items()}
    stack: list[nn.Module] = [model]
    found: set[str] = set()

    def unit() -> str:
        inner = next((m for m in reversed(stack) if isinstance(m, FP32_UNITS)), stack[-1])
        return HEAD if inner is model else names[id(inner)]

    def record(peak: float) -> None:
        if not peak <= limit:  # NaN too
            found.add(unit())

    def batchnorm_output(module, args, out) -> None:
        if torch.is_autocast_enabled(gray.device.type):
            record(float(out.abs().amax()))

    def leave(module, args, out) -> None:
        stack.pop()

    hooks = [m.register_forward_pre_hook(lambda m, args: stack.append(m)) for m in modules.values() if m is not model]
    hooks += [m.register_forward_hook(leave) for m in modules.values() if m is not model]
    hooks += [m.register_forward_hook(batchnorm_output) for m in modules.values() if isinstance(m, BatchNorm2d)]
    modes = {m: m.training for m in modules.values()}
    model.eval()
    try:
        with torch.autocast(gray.device.type, dtype=torch.float16), _HalfOpPeaks(gray.device.type, record):
            model(gray)
    finally:
        for module, training in modes.items():
            module.training = training
        for hook in hooks:
            hook.remove()
    return sorted(found)


def compute_in_fp32(model: DDColor, units: list[str]) -> None:
    """Run ``units`` (names from ``half_range_units``) with autocast off from now on; kept in ``model.fp32_units``."""
    for name in units:
        if name in model.fp32_units:
            continue
        owner, method = (model, "head") if name == HEAD else (model.get_submodule(name), "forward")
        # Bound to the instance, so a deepcopy of the model binds its own copy.
        setattr(owner, method, MethodType(_without_autocast(method), owner))
        model.fp32_units.append(name)


def _without_autocast(method: str):
    def run(self, *args, **kwargs):
        device = next(a.device for a in args if isinstance(a, Tensor))
        with autocast_off(device):
            return getattr(type(self), method)(self, *args, **kwargs)

    return run


def trainable_model(
    state: dict[str, Tensor],
    *,
    train: str = "all",
    rank: int = 8,
    checkpointing: bool = False,
    source: str = "checkpoint",
) -> DDColor:
    """A FP32 model in train mode built from ``state`` (the published layout,
    e.g. ``checkpoint.read_state_dict``), on the CPU; see the module docstring.

    The model takes ``state``'s FP32 tensors as its own, without a copy (as
    ``checkpoint.model_from_state_dict`` does), so that loading never holds
    the weights twice; training changes them in place: pass copies to keep
    ``state``. ``train="lora"`` draws the adapters' initial values from
    torch's global generator.
    """
    if train not in TRAIN_CHOICES:
        raise ValueError(f"train must be one of {', '.join(TRAIN_CHOICES)}; got {train!r}")
    if train == "lora" and rank < 1:
        raise ValueError(f"the LoRA rank must be a positive integer; got {rank}")
    passthrough = {k.removeprefix("module."): v for k, v in state.items() if k.removeprefix("module.") in IGNORED_KEYS}
    state = network_tensors(state)
    config = config_from_state_dict(state, source)
    spectral = sorted(k[: -len(".weight_orig")] for k in state if k.endswith(".weight_orig"))
    with torch.device("meta"):
        model = TrainableDDColor(config, spectral)
    load_strictly(model, state, source)
    model.passthrough = passthrough
    model.eval().iterate_spectral_norms()  # u and v as loaded, for a conv run outside a model forward

    model.requires_grad_(train != "lora")
    model.encoder.arch.norm.requires_grad_(False)  # the classifier-side norm: loaded, never run
    if train == "decoder":
        model.encoder.requires_grad_(False)
    elif train == "lora":
        for module, name in lora_targets(model):
            # unsafe: skip the check that forms every adapted weight once (a weight-sized temporary
            # each, kept by the allocator); LowRankDelta keeps the weight's shape and dtype by construction.
            parametrize.register_parametrization(module, name, LowRankDelta(getattr(module, name), rank), unsafe=True)
    for module in model.modules():
        if hasattr(type(module), "gradient_checkpointing"):
            module.gradient_checkpointing = checkpointing
    return model.train()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates."""
    return [p for p in model.parameters() if p.requires_grad]


def published_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's tensors in the published layout, on the CPU in FP32.

    Spectral-norm convs as ``weight_orig``/``weight_u``/``weight_v``; LoRA
    adapters merged into their weights (no LoRA target is spectral-normed);
    the source's unused ``encoder.arch.head_cls.*`` kept when it had them. It
    loads strictly in ``ddcolor.load_model`` and in the original architecture.
    A model wrapped in DistributedDataParallel is unwrapped.
    """
    model = getattr(model, "module", model)
    state = {}
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if ".parametrizations." not in key:
                state[key] = tensor
            elif key.endswith(".original"):
                module_name, rest = key.split(".parametrizations.")
                name = rest[: -len(".original")]
                with autocast_off(tensor.device):
                    state[f"{module_name}.{name}"] = getattr(model.get_submodule(module_name), name)
        state.update(getattr(model, "passthrough", {}))
        return {k: (v.float() if v.is_floating_point() else v).detach().cpu().clone().contiguous() for k, v in state.items()}


def save_checkpoint(model_or_state: nn.Module | dict[str, Tensor], path: str | os.PathLike) -> Path:
    """Write a checkpoint: ``{'params': state}`` .pth, or a flat .safetensors when
    ``path`` ends so. Written under a temporary name in the same folder and renamed:
    ``path`` never holds a partial file. A model is exported with ``published_state_dict``."""
    from ..output import atomic_path

    state = published_state_dict(model_or_state) if isinstance(model_or_state, nn.Module) else model_or_state
    path = Path(path)
    with atomic_path(path) as temp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(temp), metadata={"format": "pt"})
        else:
            torch.save({"params": state}, temp)
    return path
