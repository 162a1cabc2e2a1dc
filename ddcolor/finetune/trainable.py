"""A DDColor to fine-tune, and the way back to an ordinary checkpoint.

``trainable_model`` builds the network from a checkpoint in the published
layout the way the original trains it:

* spectral norm is live: each spectral-norm conv keeps ``weight_orig``,
  ``weight_u`` and ``weight_v`` (the published keys) and its weight is
  ``weight_orig / (u . W v)``, recomputed at every forward after one power
  iteration in train mode, as ``torch.nn.utils.spectral_norm`` does. It is
  computed for all of them when the model's forward starts, because the fused
  head reads two of those weights without calling their convs;
* what trains is chosen by ``train``: ``all``; ``decoder`` (the encoder is
  frozen); ``lora`` (low-rank adapters on the encoder MLPs and the color
  decoder's linear layers, everything else frozen). A frozen layer's stored
  tensors never change: frozen BatchNorm and spectral-norm layers run in eval
  mode (running statistics and power iteration stay as loaded);
* ``checkpointing`` recomputes each ConvNeXt block, each color-decoder
  layer and each group of the head's sub-pixels in the backward pass instead
  of keeping their activations.

The ConvNeXt MLPs are not rebalanced for half precision as inference does
(``convnext.Block.balance_for_half``): the optimizer sees the checkpoint's own
parameters, as the original trains them, fp32 and mixed-precision runs train
the same parameters, and frozen tensors are exported exactly as loaded. Under
autocast the tensors that carry a checkpoint's large scales (the stream, its
writers, the layer scales) stay FP32, which keeps the stress checkpoints
finite in fp16 (tests/test_finetune_model.py); a checkpoint that put such
scales into the MLP weights themselves would give a non-finite loss at once.

``published_state_dict`` turns the model back into the published layout,
adapters merged into their weights, and ``save_checkpoint`` writes it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..checkpoint import IGNORED_KEYS, config_from_state_dict, load_strictly, network_tensors, spectral_sigma
from ..layers import Linear, MultiheadAttention, autocast_off
from ..model import DDColor, DDColorConfig
from .config import TRAIN_CHOICES

# torch.nn.utils.spectral_norm's defaults, which the original uses.
SPECTRAL_EPS = 1e-12


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
            conv.weight = weight.detach()  # a plain attribute, set from weight_orig at each forward
        # Tensors of the source checkpoint the network does not use, saved back as they came.
        self.passthrough: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        self.normalize_spectral_weights()
        try:
            return super().forward(x)
        finally:
            # Autograd holds what it needs; detached, the model can be copied between steps.
            for name in self.spectral:
                conv = self.get_submodule(name)
                conv.weight = conv.weight.detach()

    def normalize_spectral_weights(self) -> None:
        """Set each spectral-norm conv's weight; one power iteration first if it trains."""
        for name in self.spectral:
            conv = self.get_submodule(name)
            with autocast_off(conv.weight_orig.device):
                if conv.training:
                    _power_iteration(conv.weight_orig.detach().flatten(1), conv.weight_u, conv.weight_v)
                # Clones: the next iteration updates the buffers in place, and autograd keeps these.
                u, v = conv.weight_u.clone(), conv.weight_v.clone()
                conv.weight = conv.weight_orig / spectral_sigma(conv.weight_orig, u, v)

    def train(self, mode: bool = True) -> TrainableDDColor:
        super().train(mode)
        for module in self.modules():
            stateful = isinstance(module, nn.modules.batchnorm._BatchNorm) or hasattr(module, "weight_orig")
            if stateful and not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self


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

    ``state``'s tensors are copied, never changed. ``train="lora"`` draws the
    adapters' initial values from torch's global generator.
    """
    if train not in TRAIN_CHOICES:
        raise ValueError(f"train must be one of {', '.join(TRAIN_CHOICES)}; got {train!r}")
    if train == "lora" and rank < 1:
        raise ValueError(f"the LoRA rank must be a positive integer; got {rank}")
    passthrough = {k.removeprefix("module."): v.clone() for k, v in state.items() if k.removeprefix("module.") in IGNORED_KEYS}
    state = {k: v.detach().clone() for k, v in network_tensors(state).items()}
    config = config_from_state_dict(state, source)
    spectral = sorted(k[: -len(".weight_orig")] for k in state if k.endswith(".weight_orig"))
    with torch.device("meta"):
        model = TrainableDDColor(config, spectral)
    load_strictly(model, state, source)
    model.passthrough = passthrough
    with torch.no_grad():
        model.eval().normalize_spectral_weights()

    model.requires_grad_(train != "lora")
    model.encoder.arch.norm.requires_grad_(False)  # the classifier-side norm: loaded, never run
    if train == "decoder":
        model.encoder.requires_grad_(False)
    elif train == "lora":
        for module, name in lora_targets(model):
            parametrize.register_parametrization(module, name, LowRankDelta(getattr(module, name), rank))
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
    from ..cli.imageio import atomic_path

    state = published_state_dict(model_or_state) if isinstance(model_or_state, nn.Module) else model_or_state
    path = Path(path)
    with atomic_path(path) as temp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(temp), metadata={"format": "pt"})
        else:
            torch.save({"params": state}, temp)
    return path
