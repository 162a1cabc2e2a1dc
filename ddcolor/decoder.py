"""DDColor's dual decoder: a pixel decoder (U-Net upsampling of the encoder taps)
and a multi-scale transformer color decoder (learnable color queries that
cross-attend to the pixel decoder's three scales).

Module names follow the published checkpoints (``decoder.*``). Spectral-norm
convs hold plain folded weights for inference (``checkpoint.py`` folds them at
load time); ``finetune/trainable.py`` keeps them live for training.

Half precision: every tensor here that is held in half sits between layers
that can trade a per-channel scale exactly (a BatchNorm, a LayerNorm, a ReLU,
a product), so a checkpoint can make it as large as it likes without changing
the FP32 result. Before weights go to half, the ``balance_for_half`` methods
(called parents first by ``precision.apply_precision``) take that freedom
away, in FP32: a conv feeding a BatchNorm gives it inputs of unit RMS (the
norm's running statistics measure them), a BatchNorm hands on outputs of unit
RMS (its affine says how large they are) and its readers take the scale, the
layers around a ReLU have unit rows, the two sides of each attention product
the same norm, and the color decoder's query stream the scale of its norms.
What is left in half is then of order one whatever the checkpoint's scales.
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
    balance_relu_pair,
    blur_upsampled,
    checkpointed,
    row_norms,
    scale_columns,
    scale_rows,
    sine_position_encoding,
    unit_scale,
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

    @torch.no_grad()
    def balance_for_half(self) -> None:
        """Bring the block's half tensors to unit RMS, exactly (see the module docstring). In place, FP32.

        The 1x1 and 3x3 convs' outputs enter their BatchNorms at unit RMS (the
        scale moves into the norm's statistics); the upsampled and skip
        BatchNorms hand the 3x3 conv unit-RMS channels (the scale moves into
        its weights). The block's output is balanced with its readers by
        ``Decoder.balance_for_half``.
        """
        up_conv, up_norm = self.shuf.conv
        conv, _, out_norm = self.conv
        for layer, norm in ((up_conv, up_norm), (conv, out_norm)):
            scale = unit_scale(norm.input_rms())
            scale_rows(layer, 1 / scale)  # through the ReLU before out_norm too
            norm.scale_input(1 / scale)
        # Pixel shuffle makes channel c from up_norm's channels c * s^2 .. c * s^2 + s^2 - 1,
        # and the 3x3 conv weighs the result: one scale per shuffled channel.
        groups = self.shuf.scale**2
        up = unit_scale(up_norm.output_rms().view(-1, groups).square().mean(dim=1).sqrt())
        skip = unit_scale(self.bn.output_rms())
        up_norm.scale_output(1 / up.repeat_interleave(groups))
        self.bn.scale_output(1 / skip)
        scale_columns(conv, torch.cat([up, skip]))


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

    def balance_for_half(self) -> None:
        """The hidden layer's scale moves into ``linear2`` (exact, ReLU): it stays of the input's order."""
        balance_relu_pair(self.linear1, self.linear2)


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

    def balance_for_half(self) -> None:
        """Each hidden layer's scale moves into the next layer (exact, ReLU); the last carries them all."""
        for first, second in zip(self.layers[:-1], self.layers[1:]):
            balance_relu_pair(first, second)


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

    @torch.no_grad()
    def balance_for_half(self) -> None:
        """Give the query stream the scale of order one its norms would have with unit affines. In place, FP32.

        The stream (queries, their positions and every branch added to them)
        enters half layers at each projection, and a checkpoint may scale all
        of it by one factor: the LayerNorms between layers do not see it, the
        layers reading the stream undo it. That factor, measured as the RMS of
        the stream norms' affine, is divided out everywhere it appears (the
        norms' eps with it, so the result is exact). Then ``decoder_norm``'s
        affine folds into the color embedding. The attention, FFN and MLP
        children balance themselves afterwards (``apply_precision`` visits
        parents first).
        """
        layers = list(zip(self.transformer_cross_attention_layers, self.transformer_self_attention_layers, self.transformer_ffn_layers))
        norms = [layer.norm for group in layers for layer in group]
        scale = torch.cat([n.weight.square() + n.bias.square() for n in norms]).mean().sqrt().item()
        if scale > 0:
            self.query_feat.weight.div_(scale)
            self.query_embed.weight.div_(scale)
            for norm in norms + [self.decoder_norm]:
                norm.eps /= scale**2  # its input is divided by scale
            for norm in norms:
                norm.weight.div_(scale)
                norm.bias.div_(scale)
            dim = self.query_feat.weight.shape[1]
            for cross, self_attention, ffn in layers:
                # Projections of the stream undo the scale; branches added to it take it.
                cross.multihead_attn.in_proj_weight[:dim].mul_(scale)
                cross.multihead_attn.out_proj.weight.div_(scale)
                cross.multihead_attn.out_proj.bias.div_(scale)
                attention = self_attention.self_attn
                attention.in_proj_weight[: 2 * dim].mul_(scale)
                attention.in_proj_bias[2 * dim :].div_(scale)
                attention.out_proj.bias.div_(scale)
                ffn.linear1.weight.mul_(scale)
                ffn.linear2.weight.div_(scale)
                ffn.linear2.bias.div_(scale)
        first = self.color_embed.layers[0]
        first.bias.add_(first.weight @ self.decoder_norm.bias)
        scale_columns(first, self.decoder_norm.weight)
        self.decoder_norm.weight.fill_(1.0)
        self.decoder_norm.bias.zero_()


class Decoder(nn.Module):
    """Pixel decoder (``layers``, ``last_shuf``) plus the color decoder."""

    # Training: recompute each U-Net block in the backward pass instead of keeping its activations.
    gradient_checkpointing = False

    def __init__(self, encoder_dims: tuple[int, ...], nf: int, config_color: dict):
        super().__init__()
        # Three wide U-Net blocks, deepest tap first; the last one halves nf.
        up_channels = [encoder_dims[3], nf, nf]
        out_channels = [nf, nf, nf // 2]
        skips = [encoder_dims[2], encoder_dims[1], encoder_dims[0]]
        self.layers = nn.Sequential(*[UnetBlockWide(u, s, o) for u, s, o in zip(up_channels, skips, out_channels)])
        self.last_shuf = PixelShuffleUpsample(nf // 2, nf // 2, scale=4, batchnorm=False)
        self.color_decoder = MultiScaleColorDecoder(in_channels=out_channels, embed_dim=nf // 2, **config_color)

    @torch.no_grad()
    def balance_for_half(self) -> None:
        """Balance each block's output and the head with their readers. In place, FP32.

        A block's output (its last BatchNorm) goes to unit RMS; the next
        block's 1x1 conv (or the head's), and the color decoder's input
        projection, take the scale. In the head, sub-pixel rows of ``last_shuf``
        for feature channel c meet color embedding channel c in one product
        after a ReLU: the rows go to unit norm and the embedding takes the scale.
        """
        readers = [block.shuf.conv[0] for block in self.layers[1:]] + [self.last_shuf.conv[0]]
        for block, projection, reader in zip(self.layers, self.color_decoder.input_proj, readers):
            norm = block.conv[2]
            scale = unit_scale(norm.output_rms())
            norm.scale_output(1 / scale)
            scale_columns(projection, scale)
            scale_columns(reader, scale)
        conv = self.last_shuf.conv[0]
        groups = self.last_shuf.scale**2
        scale = unit_scale(row_norms(conv).view(-1, groups).square().mean(dim=1).sqrt())
        scale_rows(conv, 1 / scale.repeat_interleave(groups))
        scale_rows(self.color_decoder.color_embed.layers[-1], scale)

    @torch.no_grad()
    def absorb_tap_scale(self, tap: int, scale: Tensor) -> None:
        """Encoder tap ``tap`` (0: 1/4 .. 3: 1/32) now comes divided by ``scale`` (per channel): its reader takes it."""
        if tap == 3:
            scale_columns(self.layers[0].shuf.conv[0], scale)
        else:
            self.layers[2 - tap].bn.scale_input(1 / scale)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the pixel decoder computes in (that of its weights), which the encoder's taps are handed in."""
        conv = self.layers[0].shuf.conv[0]
        # weight_orig: fine-tuning's live spectral norm forms the weight only while the conv runs.
        return getattr(conv, "weight_orig", conv.weight).dtype

    def pixel_features(self, taps: list[Tensor]) -> list[Tensor]:
        """Encoder taps (1/4 .. 1/32) -> pixel features at 1/16, 1/8, 1/4 scale."""
        out = taps[3]
        scales = []
        for block, skip in zip(self.layers, reversed(taps[:3])):
            out = checkpointed(block, out, skip, enabled=self.gradient_checkpointing)
            scales.append(out)
        return scales
