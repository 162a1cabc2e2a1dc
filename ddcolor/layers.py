"""Building blocks shared by the encoder and the decoders.

Precision contract used throughout the network:

* compute layers (``Conv2d``, ``Linear``, attention products) cast their input
  to the dtype of their own weight, so they run in whatever precision the
  weights are held in (fp16 / bf16 / fp32);
* normalization layers are *pinned*: their parameters stay FP32 and they
  compute in FP32, then hand back the dtype they were given. Each pinned module
  lists the tensors it keeps in FP32 in ``fp32_tensors``; ``precision.py``
  reads that list and nothing else.

Training runs the same modules under ``torch.autocast`` with FP32 weights;
autocast would cast every conv and matmul to half, pinned ones included, so
pinned computations run with autocast off (``pinned``, ``autocast_off``).
Where the inference path saves memory by writing in place over tensors that
autograd would need, it takes an out-of-place branch while autograd records
(``torch.is_grad_enabled()``); inference is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Upper bound on the elements of one temporary (scores, MLP expansions, head
# groups). Chunks are sized to stay under it so peak memory grows with the
# image, not with the widest layer.
CHUNK_ELEMENTS = 1 << 24
# The same bound while autograd records (fine-tuning): the backward of a chunk
# holds several chunk-sized tensors at once (recomputed output, its gradient, ReLU's).
GRAD_CHUNK_ELEMENTS = 1 << 22
# FP32 temporaries made in half precision (norm bands, attention logits) are
# kept smaller still: they are what half precision would otherwise not save.
NORM_CHUNK_ELEMENTS = 1 << 20
ATTENTION_CHUNK_ELEMENTS = 1 << 20


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A block in which nothing on ``device`` is autocast: pinned FP32 computations inside a training forward."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def pinned(forward):
    """Decorate the ``forward(self, x, ...)`` of a pinned module: it computes in FP32 even under autocast."""

    @functools.wraps(forward)
    def run(self, x: Tensor, *args, **kwargs):
        with autocast_off(x.device):
            return forward(self, x, *args, **kwargs)

    return run


def checkpointed(fn, *args, enabled: bool):
    """``fn(*args)``; with ``enabled`` while autograd records, the activations inside
    ``fn`` are recomputed in the backward pass instead of kept (gradient checkpointing)."""
    if enabled and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class Conv2d(nn.Conv2d):
    """Conv2d that runs in the dtype of its weight."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(self.weight.dtype))


class Linear(nn.Linear):
    """Linear that runs in the dtype of its weight."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(self.weight.dtype))


class FP32Conv2d(nn.Conv2d):
    """Conv2d pinned to FP32 (ConvNeXt depthwise convs read the FP32 residual stream)."""

    fp32_tensors = ("weight", "bias")

    @pinned
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float())


class FP32Embedding(nn.Embedding):
    """Learned vectors (queries, level embeddings) kept FP32: a few kB that seed FP32 streams."""

    fp32_tensors = ("weight",)

    def reset_parameters(self) -> None:
        # On the meta device (checkpoint loading) the random init is pointless,
        # and nn.Embedding's pulls in torch's compiler stack, slowing every load.
        if not self.weight.is_meta:
            super().reset_parameters()


def in_fp32(x: Tensor, fn, dim: int) -> Tensor:
    """``fn`` computed in FP32, returned in ``x``'s dtype.

    A half ``x`` is upcast one band along ``dim`` at a time, so the FP32
    temporaries stay small instead of doubling the activation. ``fn`` must
    act independently on each slice along ``dim``.
    """
    if x.dtype == torch.float32:
        return fn(x)
    out = torch.empty_like(x)
    step = max(1, NORM_CHUNK_ELEMENTS * x.shape[dim] // max(1, x.numel()))
    for start in range(0, x.shape[dim], step):
        band = x.narrow(dim, start, min(step, x.shape[dim] - start))
        out.narrow(dim, start, band.shape[dim]).copy_(fn(band.float()))
    return out


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dim, computed in FP32, returning the input dtype."""

    fp32_tensors = ("weight", "bias")

    @pinned
    def forward(self, x: Tensor) -> Tensor:
        return in_fp32(x, lambda t: F.layer_norm(t, self.normalized_shape, self.weight, self.bias, self.eps), dim=-2)


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of an NCHW tensor, computed in FP32.

    The original squares ``x - mean`` in the input dtype, which overflows fp16
    once ``|x - mean| > 256``; here the statistics are always FP32.
    """

    fp32_tensors = ("weight", "bias")

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    @pinned
    def forward(self, x: Tensor) -> Tensor:
        def norm(t: Tensor) -> Tensor:
            y = F.layer_norm(t.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
            return y.permute(0, 3, 1, 2)

        return in_fp32(x, norm, dim=2)


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm computed in FP32 with FP32 statistics, returning the input dtype.

    Its running statistics are measurements of its input on the training
    data, so they say how large that input is (``input_rms``), and its affine
    says how large its output is (``output_rms``): half-precision balancing
    reads both, and rescales either exactly (``scale_input``, ``scale_output``).
    """

    fp32_tensors = ("weight", "bias", "running_mean", "running_var")

    @pinned
    def forward(self, x: Tensor) -> Tensor:
        if self.training:  # batch statistics need the whole batch at once
            return super().forward(x.float()).to(x.dtype)
        return in_fp32(x, super().forward, dim=2)

    def input_rms(self) -> Tensor:
        """Per channel, the RMS of the input the statistics were measured on."""
        return (self.running_mean.square() + self.running_var.clamp(min=0)).sqrt()

    def output_rms(self) -> Tensor:
        """Per channel, the RMS of the output on that input (about sqrt(weight^2 + bias^2))."""
        return (self.weight.square() + self.bias.square()).sqrt()

    @torch.no_grad()
    def scale_input(self, factor: Tensor) -> None:
        """The statistics of an input multiplied by ``factor`` (per channel, > 0): the output is unchanged.

        Exact, eps included: the variance term may dip below zero by at most
        eps, which BatchNorm only ever reads as ``var + eps``.
        """
        self.running_var.copy_((self.running_var + self.eps) * factor.square() - self.eps)
        self.running_mean.mul_(factor)

    @torch.no_grad()
    def scale_output(self, factor: Tensor) -> None:
        """Multiply the output by ``factor`` (per channel)."""
        self.weight.mul_(factor)
        self.bias.mul_(factor)


# ----------------------------------------------------------------------------- exact rescaling for half precision
# Conv and linear layers between FP32 neighbours, or around a ReLU, can take a
# per-channel scale from one side and give it to the other without changing
# the FP32 result. These helpers do that in FP32, in place, before weights go
# to half (the modules' ``balance_for_half`` methods).


def unit_scale(scale: Tensor) -> Tensor:
    """``scale`` where positive, else 1: a dead channel keeps its (zero) values."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def row_norms(layer: nn.Module) -> Tensor:
    """Per output channel, the L2 norm of a conv's or linear's weights with its bias."""
    rows = layer.weight.flatten(1)
    if layer.bias is not None:
        rows = torch.cat([rows, layer.bias[:, None]], dim=1)
    return rows.norm(dim=1)


@torch.no_grad()
def scale_rows(layer: nn.Module, factor: Tensor) -> None:
    """Multiply a conv's or linear's output channels (weights and bias) by ``factor``."""
    layer.weight.mul_(factor.view(-1, *[1] * (layer.weight.ndim - 1)))
    if layer.bias is not None:
        layer.bias.mul_(factor)


@torch.no_grad()
def scale_columns(layer: nn.Module, factor: Tensor) -> None:
    """Multiply the weights a conv or linear applies to each input channel by ``factor``."""
    layer.weight.mul_(factor.view(1, -1, *[1] * (layer.weight.ndim - 2)))


@torch.no_grad()
def balance_relu_pair(first: nn.Module, second: nn.Module) -> None:
    """``second(relu(first(x)))`` rewritten so ``first``'s rows (with bias) have unit norm. Exact.

    ReLU is positively homogeneous: each row's norm moves into the weights
    ``second`` applies to that channel. The hidden tensor is then bounded by
    the norm of ``[x, 1]`` whatever scale the checkpoint gave it.
    """
    scale = unit_scale(row_norms(first))
    scale_rows(first, 1 / scale)
    scale_columns(second, scale)


def blur_upsampled(x: Tensor) -> Tensor:
    """The 2x2 box blur after pixel shuffle (replication pad left/top, then mean)."""
    return F.avg_pool2d(F.pad(x, (1, 0, 1, 0), mode="replicate"), 2, stride=1)


class MultiheadAttention(nn.Module):
    """Multi-head attention with ``torch.nn.MultiheadAttention``'s parameter names.

    Batch-first ``(B, L, C)``. Projections and the value product run in the
    weights' dtype; logits and softmax in FP32, one head and a block of query
    rows at a time, so no FP32 temporary exceeds ``ATTENTION_CHUNK_ELEMENTS``.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_pos: Tensor | None = None) -> Tensor:
        """``key_pos`` (broadcast over the batch) is added to ``key`` band by band:
        for cross-attention over a large image the sum is never built whole."""
        dtype = self.in_proj_weight.dtype
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._heads(F.linear(query.to(dtype), w_q, b_q))
        k = self._heads(_project_with_position(key, key_pos, w_k, b_k))
        v = self._heads(F.linear(value.to(dtype), w_v, b_v))
        q = q * (1.0 / math.sqrt(q.shape[-1]))

        batch, heads, len_q, head_dim = q.shape
        len_k = k.shape[2]
        # Softmax is per query row, so heads and query rows can be blocked freely.
        rows = max(1, ATTENTION_CHUNK_ELEMENTS // (batch * len_k))
        out = torch.empty_like(q)
        for h in range(heads):
            # Logits are formed in FP32 from half q and k: rounded to half,
            # sharp attention would shift by percents.
            keys = k[:, h].float().transpose(-1, -2)
            for r in range(0, len_q, rows):
                with autocast_off(q.device):
                    scores = q[:, h, r : r + rows].float() @ keys
                    if torch.is_grad_enabled():  # in place would overwrite what autograd saved
                        scores = scores.softmax(dim=-1)
                    else:  # softmax, in place
                        scores -= scores.amax(dim=-1, keepdim=True)
                        scores.exp_()
                        scores /= scores.sum(dim=-1, keepdim=True)
                out[:, h, r : r + rows] = scores.to(dtype) @ v[:, h]
            del keys
        out = out.transpose(1, 2).reshape(batch, len_q, heads * head_dim)
        return self.out_proj(out)

    @torch.no_grad()
    def balance_for_half(self) -> None:
        """Rescale the projections exactly so neither side of a product holds the other's scale. In place, FP32.

        Logits sum q_j * k_j over dimensions j, and the output weighs v_j by
        a convex combination then applies ``out_proj``'s column j: a checkpoint
        may scale q_j up and k_j down, or v_j up and that column down, without
        changing anything but the half tensors. Each pair is set to the same
        norm (the geometric mean of the two).
        """
        weight, bias = self.in_proj_weight, self.in_proj_bias
        norms = torch.cat([weight, bias[:, None]], dim=1).norm(dim=1)
        q, k, v = norms.chunk(3)
        out_columns = self.out_proj.weight.norm(dim=0)
        qk = torch.where((q > 0) & (k > 0), (k / q).sqrt(), torch.ones_like(q))
        vo = torch.where((v > 0) & (out_columns > 0), (out_columns / v).sqrt(), torch.ones_like(v))
        factor = torch.cat([qk, 1 / qk, vo])
        weight.mul_(factor[:, None])
        bias.mul_(factor)
        scale_columns(self.out_proj, 1 / vo)

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)


def _project_with_position(x: Tensor, pos: Tensor | None, weight: Tensor, bias: Tensor) -> Tensor:
    """``linear(x + pos)`` over (B, L, C), computed over bands of L when ``pos`` is given."""
    if pos is None:
        return F.linear(x.to(weight.dtype), weight, bias)
    out = x.new_empty(*x.shape[:-1], weight.shape[0], dtype=weight.dtype)
    step = max(1, NORM_CHUNK_ELEMENTS // (x.shape[0] * x.shape[-1]))
    for start in range(0, x.shape[1], step):
        band = x[:, start : start + step] + pos[:, start : start + step]
        out[:, start : start + step] = F.linear(band.to(weight.dtype), weight, bias)
    return out


def sine_position_encoding(height: int, width: int, dim: int, device: torch.device) -> Tensor:
    """DETR's normalized sine encoding of an ``height x width`` grid, as ``(1, H*W, dim)`` FP32.

    The first ``dim/2`` channels encode the row, the rest the column; each
    half interleaves sin (even) and cos (odd) frequencies.
    """
    feats = dim // 2
    eps, scale, temperature = 1e-6, 2 * math.pi, 10000.0
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * scale
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * scale
    freqs = torch.arange(feats, dtype=torch.float32, device=device)
    freqs = temperature ** (2 * torch.div(freqs, 2, rounding_mode="floor") / feats)

    def encode(positions: Tensor) -> Tensor:
        angles = positions[:, None] / freqs
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(rows)[:, None, :].expand(height, width, feats)
    pos_x = encode(cols)[None, :, :].expand(height, width, feats)
    return torch.cat((pos_y, pos_x), dim=-1).reshape(1, height * width, dim)
