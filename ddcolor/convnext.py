"""ConvNeXt encoder as DDColor uses it: four stages, a LayerNorm tap after each.

Module names follow the published checkpoints (``encoder.arch.*``).

Half precision: the residual stream of every stage is kept in FP32, and so is
everything that writes it. A trained ConvNeXt-L stream reaches magnitudes where
fp16 overflows (65504), and a checkpoint may put that scale in any of its
writers: the stem, the downsample convs, the depthwise conv biases, the layer
scales. So the stem and downsample convs (3-6% of the encoder's weights), the
depthwise convs and the layer scales ``gamma`` stay FP32; only the pointwise
MLP (``pwconv1`` -> GELU -> ``pwconv2``, 96% of the block's FLOPs) runs in half.
``Block.balance_for_half`` first rewrites the MLP exactly so that its half
tensors stay in range whatever scale the checkpoint gives its norm or layer
scale. Cost: one FP32 copy of the stream per stage instead of a half one
(e.g. 79 MB instead of 39 MB for stage 0 of the large model at 1280). The
taps (``norm{i}`` outputs, handed to the decoder in half) are brought to unit
scale by ``DDColor.balance_for_half``, the decoder's readers taking the scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import CHUNK_ELEMENTS, FP32Conv2d, LayerNorm, LayerNorm2d, Linear, checkpointed

VARIANTS = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}


class Block(nn.Module):
    """depthwise 7x7 -> LayerNorm -> Linear(4x) -> GELU -> Linear -> layer scale, plus residual."""

    fp32_tensors = ("gamma",)

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = FP32Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: FP32 residual stream (B, C, H, W) -> the next one."""
        out = self.dwconv(x).permute(0, 2, 3, 1)  # B, H, W, C view
        residual = x.permute(0, 2, 3, 1)
        if torch.is_grad_enabled():
            # Training: autograd keeps the expansion anyway, so bands would save
            # nothing, and writing over `out` would destroy what the norm saved.
            band = self.pwconv2(self.act(self.pwconv1(self.norm(out))))
            return (residual + band.float() * self.gamma).permute(0, 3, 1, 2)
        # The 4x-wide MLP runs over row bands so its expansion never exists for
        # the whole image; each band overwrites its own rows of `out`.
        batch, height, width, dim = out.shape
        rows = max(1, CHUNK_ELEMENTS // (batch * width * 4 * dim))
        for r in range(0, height, rows):
            band = self.pwconv2(self.act(self.pwconv1(self.norm(out[:, r : r + rows]))))
            out[:, r : r + rows] = residual[:, r : r + rows] + band.float() * self.gamma
        return out.permute(0, 3, 1, 2)

    @torch.no_grad()
    def balance_for_half(self) -> None:
        """Rewrite the MLP exactly so no half tensor in it depends on the checkpoint's scales. In place, FP32.

        The norm's affine folds into ``pwconv1`` (its input becomes the plain
        normalized stream, bounded by sqrt(C)), and ``gamma`` folds into
        ``pwconv2`` whose rows are then scaled to unit norm, the scale moving
        back into ``gamma`` (applied in FP32). A checkpoint that puts a large
        scale in the norm weights or in ``pwconv2`` instead of ``gamma`` gives
        the same half tensors as one that does not.
        """
        w1, w2 = self.pwconv1.weight.float(), self.pwconv2.weight.float()
        self.pwconv1.bias.copy_(self.pwconv1.bias.float() + w1 @ self.norm.bias)
        self.pwconv1.weight.copy_(w1 * self.norm.weight)
        self.norm.weight.fill_(1.0)
        self.norm.bias.zero_()
        rows = w2 * self.gamma[:, None]
        scale = rows.norm(dim=1)
        # A dead channel (gamma or its row all zero) stays zero.
        inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
        self.pwconv2.bias.copy_(self.pwconv2.bias.float() * self.gamma * inverse)
        self.pwconv2.weight.copy_(rows * inverse[:, None])
        self.gamma.copy_(scale)

    def mlp_output(self, x: Tensor) -> Tensor:
        """The branch added to the stream, before the layer scale (for calibration)."""
        out = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        return self.pwconv2(self.act(self.pwconv1(out))).float().permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    # Training: recompute each block in the backward pass instead of keeping its activations.
    gradient_checkpointing = False

    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...], in_chans: int = 3):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(FP32Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))]
            + [
                nn.Sequential(LayerNorm2d(dims[i]), FP32Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
                for i in range(3)
            ]
        )
        self.stages = nn.ModuleList(nn.Sequential(*[Block(dim) for _ in range(depth)]) for depth, dim in zip(depths, dims))
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", LayerNorm2d(dim))
        # The classifier-side norm is part of every published checkpoint but
        # feeds nothing DDColor uses; it is loaded and never run.
        self.norm = LayerNorm(dims[-1], eps=1e-6)

    def forward(self, x: Tensor, tap_dtype: torch.dtype = torch.float32) -> list[Tensor]:
        """Image (B, 3, H, W) -> the four normalized stage outputs at 1/4 .. 1/32 scale, in ``tap_dtype``."""
        taps = []
        stream = x
        for i in range(4):
            # channels-last makes the NHWC views in Block free and suits oneDNN.
            stream = self.downsample_layers[i](stream).contiguous(memory_format=torch.channels_last)
            for block in self.stages[i]:
                stream = checkpointed(block, stream, enabled=self.gradient_checkpointing)
            taps.append(getattr(self, f"norm{i}")(stream).to(tap_dtype))
        return taps


class Encoder(nn.Module):
    """Wrapper that gives the ConvNeXt its checkpoint prefix ``encoder.arch``."""

    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...]):
        super().__init__()
        self.arch = ConvNeXt(depths, dims)

    def forward(self, x: Tensor, tap_dtype: torch.dtype = torch.float32) -> list[Tensor]:
        return self.arch(x, tap_dtype)


