"""DDColor's dual decoder: a pixel decoder (U-Net upsampling of the encoder taps)
and a multi-scale transformer color decoder (learnable color queries that
cross-attend to the pixel decoder's three scales).

Module names follow the published checkpoints (``decoder.*``). Spectral-norm
convs hold plain folded weights for inference (``checkpoint.py`` folds them at
load time); ``finetune/trainable.py`` keeps them live for training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    BatchNorm2d,
    Conv2d,
    FP32Embedding,
    LayerNorm,
    Linear,
    MultiheadAttention,
    blur_upsampled,
    checkpointed,
    sine_position_encoding,
)


class PixelShuffleUpsample(nn.Module):
    """1x1 conv to ``out * scale**2`` channels -> ReLU -> pixel shuffle -> 2x2 blur.

    ``conv`` is ``[conv, BatchNorm]`` inside U-Net blocks and ``[conv + bias]``
    for the final x4 upsampling, as in the published layout.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int, batchnorm: bool):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [Conv2d(in_channels, out_channels * scale**2, kernel_size=1, bias=not batchnorm)]
        if batchnorm:
            layers.append(BatchNorm2d(out_channels * scale**2))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return blur_upsampled(F.pixel_shuffle(F.relu(self.conv(x)), self.scale))


class UnetBlockWide(nn.Module):
    """Upsample x2, concatenate the batch-normed skip feature, 3x3 conv -> ReLU -> BatchNorm."""

    def __init__(self, up_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.shuf = PixelShuffleUpsample(up_channels, out_channels, scale=2, batchnorm=True)
        self.bn = BatchNorm2d(skip_channels)
        self.conv = nn.Sequential(
            Conv2d(out_channels + skip_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            BatchNorm2d(out_channels),
        )

    def forward(self, up_in: Tensor, skip: Tensor) -> Tensor:
        x = torch.cat([self.shuf(up_in), self.bn(skip)], dim=1)
        return self.conv(F.relu_(x))


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.multihead_attn = MultiheadAttention(dim, num_heads)
        self.norm = LayerNorm(dim)

    def forward(self, queries: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor) -> Tensor:
        attended = self.multihead_attn(queries + query_pos, memory, memory, key_pos=memory_pos)
        return self.norm(queries + attended)


class SelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads)
        self.norm = LayerNorm(dim)

    def forward(self, queries: Tensor, query_pos: Tensor) -> Tensor:
        q = queries + query_pos
        return self.norm(queries + self.self_attn(q, q, queries))


class FFNLayer(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = Linear(dim, hidden)
        self.linear2 = Linear(hidden, dim)
        self.norm = LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    def __init__(self, dims: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MultiScaleColorDecoder(nn.Module):
    """Color queries refined by ``num_layers`` x (cross-attn -> self-attn -> FFN),
    cycling over the feature scales, then embedded to the pixel feature width."""

    # Training: recompute each layer in the backward pass instead of keeping its activations.
    gradient_checkpointing = False

    def __init__(
        self,
        in_channels: list[int],
        num_queries: int,
        num_layers: int,
        hidden_dim: int,
        ffn_dim: int,
        embed_dim: int,
        num_heads: int = 8,
    ):
        super().__init__()
        self.transformer_self_attention_layers = nn.ModuleList(SelfAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(CrossAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers))
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, ffn_dim) for _ in range(num_layers))
        self.decoder_norm = LayerNorm(hidden_dim)
        self.query_feat = FP32Embedding(num_queries, hidden_dim)
        self.query_embed = FP32Embedding(num_queries, hidden_dim)
        self.level_embed = FP32Embedding(len(in_channels), hidden_dim)
        self.input_proj = nn.ModuleList(Conv2d(c, hidden_dim, kernel_size=1) for c in in_channels)
        self.color_embed = MLP([hidden_dim, hidden_dim, hidden_dim, embed_dim])

    def forward(self, features: list[Tensor]) -> Tensor:
        """Pixel-decoder scales [(B, C_i, H_i, W_i)] -> color embeddings (B, queries, embed_dim)."""
        dtype = self.input_proj[0].weight.dtype
        memories, positions = [], []
        for i, feature in enumerate(features):
            height, width = feature.shape[-2:]
            positions.append(sine_position_encoding(height, width, self.query_feat.weight.shape[1], feature.device).to(dtype))
            projected = self.input_proj[i](feature).flatten(2).transpose(1, 2)
            memories.append(projected + self.level_embed.weight[i].to(dtype))
            del projected  # else the largest scale's projection outlives the loop

        batch = features[0].shape[0]
        # The query stream (100 x 256 per image) is kept FP32: it costs nothing
        # and it is where half-precision rounding would compound over layers.
        queries = self.query_feat.weight.expand(batch, -1, -1)
        query_pos = self.query_embed.weight.expand(batch, -1, -1)
        for i in range(len(self.transformer_ffn_layers)):
            level = i % len(features)
            queries = checkpointed(
                self.layer, i, queries, query_pos, memories[level], positions[level], enabled=self.gradient_checkpointing
            )
        return self.color_embed(self.decoder_norm(queries))

    def layer(self, i: int, queries: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor) -> Tensor:
        """Layer ``i``: cross-attention to one scale, self-attention, FFN."""
        queries = self.transformer_cross_attention_layers[i](queries, query_pos, memory, memory_pos)
        queries = self.transformer_self_attention_layers[i](queries, query_pos)
        return self.transformer_ffn_layers[i](queries)


class Decoder(nn.Module):
    """Pixel decoder (``layers``, ``last_shuf``) plus the color decoder."""

    def __init__(self, encoder_dims: tuple[int, ...], nf: int, config_color: dict):
        super().__init__()
        # Three wide U-Net blocks, deepest tap first; the last one halves nf.
        up_channels = [encoder_dims[3], nf, nf]
        out_channels = [nf, nf, nf // 2]
        skips = [encoder_dims[2], encoder_dims[1], encoder_dims[0]]
        self.layers = nn.Sequential(*[UnetBlockWide(u, s, o) for u, s, o in zip(up_channels, skips, out_channels)])
        self.last_shuf = PixelShuffleUpsample(nf // 2, nf // 2, scale=4, batchnorm=False)
        self.color_decoder = MultiScaleColorDecoder(in_channels=out_channels, embed_dim=nf // 2, **config_color)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the pixel decoder computes in (that of its weights), which the encoder's taps are handed in."""
        return self.layers[0].shuf.conv[0].weight.dtype

    def pixel_features(self, taps: list[Tensor]) -> list[Tensor]:
        """Encoder taps (1/4 .. 1/32) -> pixel features at 1/16, 1/8, 1/4 scale."""
        out = taps[3]
        scales = []
        for block, skip in zip(self.layers, reversed(taps[:3])):
            out = block(out, skip)
            scales.append(out)
        return scales
