"""The DDColor network: ConvNeXt encoder, dual decoder, and a memory-lean head.

The head of the published model is::

    out3 = blur(pixel_shuffle(relu(conv_1x1(out2))))        # 256 ch, full resolution
    maps = einsum("bqc,bchw->bqhw", color_embed, out3)       # 100 ch, full resolution
    ab   = refine_1x1([maps, x])                             # 2 ch

Refine and the query product are linear per pixel, and shuffle and blur are
linear per channel, so ``refine[:, :Q] @ color_embed`` collapses to one
``(2, 256)`` matrix per image that can be applied at quarter resolution to
each sub-pixel group of the 1x1 conv before shuffling. ``DDColor.head`` does
exactly that, a few groups at a time: neither the 4096-channel pre-shuffle map
nor the 256- or 100-channel full-resolution maps are ever built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convnext import VARIANTS, Encoder
from .decoder import Decoder
from .layers import CHUNK_ELEMENTS, GRAD_CHUNK_ELEMENTS, Conv2d, autocast_off, blur_upsampled, checkpointed, unit_scale
from .precision import full_precision, precision_plan

log = logging.getLogger("ddcolor")

# Every published network works on multiples of this (five 2x downsamplings).
SIZE_MULTIPLE = 32
# |ab| beyond this is no color: Lab's a/b span about +-128, a healthy network
# overshoots to about 180 on photos and to a few hundred on noise. A half-precision
# result past it (or not finite) is an overflow, and the image is redone in fp32.
PLAUSIBLE_AB = 1000.0


@dataclass(frozen=True)
class DDColorConfig:
    """Hyperparameters; ``checkpoint.config_from_state_dict`` reads them off a checkpoint."""

    depths: tuple[int, ...] = VARIANTS["large"][0]
    dims: tuple[int, ...] = VARIANTS["large"][1]
    nf: int = 512
    num_queries: int = 100
    num_scales: int = 3
    dec_layers: int = 9
    hidden_dim: int = 256
    ffn_dim: int = 2048
    num_heads: int = 8

    @property
    def variant(self) -> str:
        for name, (depths, dims) in VARIANTS.items():
            if (self.depths, self.dims) == (depths, dims):
                return name
        return "custom"


class DDColor(nn.Module):
    """Gray RGB (B, 3, H, W) in [0, 1] -> predicted ab (B, 2, H, W), float32.

    H and W must be multiples of 32. Build it with ``ddcolor.load_model``.
    """

    # Input normalization constants; half of them would shift the input.
    fp32_tensors = ("mean", "std")
    # Training: recompute the head's sub-pixel groups in the backward pass instead of keeping them.
    gradient_checkpointing = False

    def __init__(self, config: DDColorConfig):
        super().__init__()
        self.config = config
        self.name = "DDColor"  # the checkpoint's file name, set by the loader (for log lines)
        self.encoder = Encoder(config.depths, config.dims)
        self.decoder = Decoder(
            config.dims,
            config.nf,
            dict(
                num_queries=config.num_queries,
                num_layers=config.dec_layers,
                hidden_dim=config.hidden_dim,
                ffn_dim=config.ffn_dim,
                num_heads=config.num_heads,
            ),
        )
        self.refine_net = nn.Sequential(nn.Sequential(Conv2d(config.num_queries + 3, 2, kernel_size=1)))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"DDColor expects gray RGB images shaped (B, 3, H, W); got {tuple(x.shape)}")
        if x.shape[2] % SIZE_MULTIPLE or x.shape[3] % SIZE_MULTIPLE:
            raise ValueError(
                f"DDColor needs height and width that are multiples of {SIZE_MULTIPLE}; got {tuple(x.shape[2:])}. "
                "Resize the input (ddcolor.colorize does this for you)."
            )
        x = x.float()
        ab = self.predict(x)
        if precision_plan(self).precision != "fp32":
            failed = ~plausible_ab(ab)
            if failed.any():
                # A checkpoint whose activations leave the half range in a place
                # the design does not protect: those images are redone in fp32.
                _log_fallback_once(self)
                with full_precision(self):
                    ab[failed] = self.predict(x[failed])
        return ab

    @torch.no_grad()
    def balance_for_half(self) -> None:
        """The encoder's taps at unit scale, their readers in the decoder taking it. Exact, in place, FP32.

        A tap is a LayerNorm's output handed to the pixel decoder in half; a
        checkpoint may scale its affine by anything its readers (a BatchNorm,
        or a conv before one) undo. Each channel is divided by the norm of its
        affine, so the tap is bounded by sqrt(channels) + 1.
        """
        for i in range(4):
            norm = getattr(self.encoder.arch, f"norm{i}")
            scale = unit_scale((norm.weight.square() + norm.bias.square()).sqrt())
            norm.weight.div_(scale)
            norm.bias.div_(scale)
            self.decoder.absorb_tap_scale(i, scale)

    def predict(self, x: Tensor) -> Tensor:
        """The network itself, in the model's precision, with no safety net (``forward`` adds it)."""
        taps = self.encoder((x - self.mean) / self.std, tap_dtype=self.decoder.compute_dtype)
        scales = self.decoder.pixel_features(taps)
        del taps
        color_embed = self.decoder.color_decoder(scales)
        return self.head(color_embed, scales[2], x)

    def head(self, color_embed: Tensor, features: Tensor, x: Tensor) -> Tensor:
        """Fused ``refine([color_embed . last_shuf(features), x])`` (see module docstring).

        color_embed (B, Q, C), features (B, C_in, h, w), x the input (B, 3, 4h, 4w).
        """
        refine = self.refine_net[0][0]
        conv = self.decoder.last_shuf.conv[0]
        scale = self.decoder.last_shuf.scale
        groups = scale * scale
        weight_q, weight_x = refine.weight.flatten(1).float().split([color_embed.shape[1], 3], dim=1)
        with autocast_off(x.device):
            # (B, 2, C): what refine does with the query maps, per feature channel.
            mixing = (weight_q @ color_embed.float()).to(conv.weight.dtype)

        channels = conv.weight.shape[0] // groups
        # Pixel shuffle reads conv channel c * groups + g into sub-pixel g of channel c.
        conv_weight = conv.weight.view(channels, groups, -1).transpose(0, 1)
        conv_bias = conv.bias.view(channels, groups).transpose(0, 1)
        batch, _, height, width = features.shape
        chunk = GRAD_CHUNK_ELEMENTS if torch.is_grad_enabled() else CHUNK_ELEMENTS
        step = max(1, chunk // (batch * channels * height * width))
        features = features.to(conv.weight.dtype)
        sub_pixels = torch.empty(batch, 2, groups, height, width, dtype=torch.float32, device=features.device)
        for g in range(0, groups, step):
            n = min(step, groups - g)
            w = conv_weight[g : g + n].reshape(n * channels, -1, 1, 1)
            b = conv_bias[g : g + n].reshape(n * channels)
            mixed = checkpointed(_mixed_sub_pixels, features, w, b, mixing, enabled=self.gradient_checkpointing)
            sub_pixels[:, :, g : g + n] = mixed.transpose(1, 2)
        with autocast_off(x.device):
            ab = blur_upsampled(F.pixel_shuffle(sub_pixels.view(batch, 2 * groups, height, width), scale))
            # refine sees the normalized input (x - mean) / std; fold that into its
            # weights rather than keep a normalized copy of the image alive.
            weight_x = weight_x / self.std.view(1, 3)
            bias = refine.bias.float() - weight_x @ self.mean.view(3)
            return ab + F.conv2d(x, weight_x[:, :, None, None], bias)


def _mixed_sub_pixels(features: Tensor, weight: Tensor, bias: Tensor, mixing: Tensor) -> Tensor:
    """``mixing`` (B, 2, C) applied to ``relu(conv_1x1(features))`` for n sub-pixel groups -> (B, n, 2, h, w)."""
    batch, _, height, width = features.shape
    y = F.relu_(F.conv2d(features, weight, bias)).view(batch, -1, mixing.shape[2], height * width)
    return (mixing[:, None] @ y).view(batch, -1, 2, height, width)


def plausible_ab(ab: Tensor) -> Tensor:
    """Per image of ``ab`` (B, 2, H, W): finite and within ``PLAUSIBLE_AB``."""
    return (ab.abs() <= PLAUSIBLE_AB).flatten(1).all(dim=1)  # NaN compares False


_FALLBACKS_LOGGED: set[tuple[str, str]] = set()


def _log_fallback_once(model: DDColor) -> None:
    key = (model.name, precision_plan(model).precision)
    if key not in _FALLBACKS_LOGGED:
        _FALLBACKS_LOGGED.add(key)
        log.warning(
            "ddcolor: %s overflowed in %s on some images; those were redone in fp32 "
            "(correct, but slower: choose fp32 for this model to skip the retry)",
            *key,
        )
