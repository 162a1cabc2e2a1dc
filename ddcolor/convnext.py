"""ConvNeXt encoder as DDColor uses it: four stages, a LayerNorm tap after each.

Module names follow the published checkpoints (``encoder.arch.*``).

Half precision: the residual stream of every stage is kept in FP32. A trained
ConvNeXt-L stream reaches magnitudes where fp16 overflows (65504), so the
stream, the depthwise conv that reads it and the layer-scale ``gamma`` stay
FP32; only the pointwise MLP (``pwconv1`` -> GELU -> ``pwconv2``, 96% of the
block's FLOPs) runs in half, on LayerNorm output that is bounded by
construction. Cost: one FP32 copy of the stream per stage instead of a half
one (e.g. 79 MB instead of 39 MB for stage 0 of the large model at 1280).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import CHUNK_ELEMENTS, Conv2d, FP32Conv2d, LayerNorm, LayerNorm2d, Linear

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
        # The 4x-wide MLP runs over row bands so its expansion never exists for
        # the whole image; each band overwrites its own rows of `out`.
        batch, height, width, dim = out.shape
        rows = max(1, CHUNK_ELEMENTS // (batch * width * 4 * dim))
        for r in range(0, height, rows):
            band = self.pwconv2(self.act(self.pwconv1(self.norm(out[:, r : r + rows]))))
            out[:, r : r + rows] = residual[:, r : r + rows] + band.float() * self.gamma
        return out.permute(0, 3, 1, 2)

    def mlp_output(self, x: Tensor) -> Tensor:
        """The branch added to the stream, before the layer scale (for calibration)."""
        out = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        return self.pwconv2(self.act(self.pwconv1(out))).float().permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...], in_chans: int = 3):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))]
            + [
                nn.Sequential(LayerNorm2d(dims[i]), Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
                for i in range(3)
            ]
        )
        self.stages = nn.ModuleList(nn.Sequential(*[Block(dim) for _ in range(depth)]) for depth, dim in zip(depths, dims))
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", LayerNorm2d(dim))
        # The classifier-side norm is part of every published checkpoint but
        # feeds nothing DDColor uses; it is loaded and never run.
        self.norm = LayerNorm(dims[-1], eps=1e-6)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Image (B, 3, H, W) -> the four normalized stage outputs at 1/4 .. 1/32 scale."""
        compute_dtype = self.downsample_layers[0][0].weight.dtype
        taps = []
        stream = x
        for i in range(4):
            # channels-last makes the NHWC views in Block free and suits oneDNN.
            stream = self.downsample_layers[i](stream).float().contiguous(memory_format=torch.channels_last)
            for block in self.stages[i]:
                stream = block(stream)
            taps.append(getattr(self, f"norm{i}")(stream).to(compute_dtype))
        return taps


class Encoder(nn.Module):
    """Wrapper that gives the ConvNeXt its checkpoint prefix ``encoder.arch``."""

    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...]):
        super().__init__()
        self.arch = ConvNeXt(depths, dims)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.arch(x)


