"""Synthetic DDColor checkpoints whose activations have trained-model scale.

Real weights cannot be downloaded here, and a freshly initialized DDColor is
useless for testing: its spectral-norm vectors are unconverged and its
BatchNorm statistics are defaults, so it outputs values near 1e15. A
calibrated checkpoint fixes that:

* spectral-norm ``weight_u``/``weight_v`` converged by power iteration (the
  loader must use them as stored, like PyTorch's eval mode);
* ConvNeXt layer scales set block by block on natural images so the residual
  stream grows stage by stage with a few outlier channels, as trained ConvNeXts
  do (max |x - mean| in the hundreds to thousands, past fp16's LayerNorm limit);
* BatchNorm running statistics measured on natural images (../shared/fixtures,
  or generated scenes when that folder is absent);
* attention query/key projections scaled so attention is far from uniform;
* the color embedding scaled so ab has std ~25 (a few hot pixels, as in real
  outputs, overshoot +-110; the pipeline clamps ab to the Lab range).

Stress recipes (``stress=``, ``STRESS_RECIPES``) make checkpoints whose FP32
output is that of a calibrated one (to ~1e-4) but whose activations leave
fp16's range (65504), each the way a trained network could: a tensor handed
to (or made by) a half layer is scaled to a peak of ``STREAM_PEAK`` on real
photos, and what reads it undoes the scale exactly (``boundary_peaks`` says
where each recipe measures).

* ``blocks``: stage-3 layer scales inflated during calibration until the FP32
  residual stream exceeds 70000;
* ``stem``, ``stage1``, ``stage2``, ``stage3`` (``STREAM_RECIPES``): one
  stage's residual stream through its writers: the stem conv and the
  LayerNorm after it (stage 0), or the downsample conv (stages 1-3), plus
  every block's depthwise-conv bias and layer scale. Every reader of the
  stream is a LayerNorm;
* ``BOUNDARY_RECIPES``, one per kind of boundary outside the stream:
  ``taps``: the encoder's four outputs (the affine of the LayerNorms after
  each stage), read by the pixel decoder's BatchNorms (statistics scaled) or
  by a bias-free 1x1 conv before one; ``concat``: the two BatchNorms feeding a
  U-Net block's 3x3 conv, whose output BatchNorm's statistics take the scale;
  ``pixel_features``: each U-Net block's output BatchNorm, read by the next
  block's 1x1 conv and BatchNorm, the color decoder's input projection and
  (last block) the head's conv and ReLU, then the color embedding;
  ``head``: the head's mixing matrix (color embedding) up and the features
  it multiplies down; ``queries``: the color decoder's whole query stream
  (queries, positions, norms, every branch written into it; every projection
  reading it divides); ``attention``: each attention's q up and k down, v up
  and ``out_proj``'s input weights down; ``ffn``: each FFN's hidden layer up,
  ``linear2`` down (ReLU); ``color_embed``: the decoder norm's output and the
  color embedding's hidden layers up, each next layer down;
* ``overflow``: the cross-attention memory of the first scale scaled to
  ``OVERFLOW_PEAK``, the key and value weights reading it scaled down. No
  exact rescaling exists there (the position encoding added to the memory has
  a fixed scale), so FP32's output changes too: a checkpoint whose
  activations are truly beyond fp16, to test the fp32 fallback.

The result is a state dict in the *published* layout (``weight_orig`` /
``weight_u`` / ``weight_v``, leftover ``head_cls``), ready to save as
``{'params': state}``.

Command line (used by the benchmark and end-to-end tests)::

    python -m tests.calibrated --variant large --out /tmp/large.pth
"""

from __future__ import annotations

import argparse
import math
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddcolor.color import gray_rgb_from_lightness, rgb_to_lab
from ddcolor.layers import BatchNorm2d, MultiheadAttention
from ddcolor.model import DDColor, DDColorConfig

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"

CONFIGS = {
    "tiny": DDColorConfig(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "large": DDColorConfig(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
    # Fast unit tests: same structure, small widths.
    "small": DDColorConfig(
        depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), nf=64, num_queries=10, dec_layers=3, hidden_dim=32, ffn_dim=64
    ),
}

# Target RMS of each block's contribution to the stream, per stage, as a
# multiple of the stream's RMS entering the stage; outlier channels get more.
STAGE_GROWTH = (0.2, 0.2, 0.2, 0.2)
OUTLIER_FRACTION = 0.02
OUTLIER_GAIN = 40.0
STRESS_GAIN = 4000.0
# Each exact: FP32's output does not change (see the module docstring).
STREAM_RECIPES = ("stem", "stage1", "stage2", "stage3")
BOUNDARY_RECIPES = ("taps", "concat", "pixel_features", "head", "queries", "attention", "ffn", "color_embed")
STRESS_RECIPES = ("blocks", *STREAM_RECIPES, *BOUNDARY_RECIPES, "overflow")
STREAM_PEAK = 1.2e5
OVERFLOW_PEAK = 2e5  # past fp16 (65504), with input projection weights that fp16 still holds
ATTENTION_SHARPNESS = 1.2
AB_STD = 25.0


def calibration_images(size: int = 128, count: int = 8, seed: int = 0) -> Tensor:
    """Gray RGB model inputs (count, 3, size, size) from the fixture photos, or generated scenes."""
    generator = torch.Generator().manual_seed(seed)
    photos = _fixture_photos()
    if not photos:
        photos = [_generated_scene(256, generator) for _ in range(4)]
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[-2:]
        side = int(min(h, w) * (0.6 + 0.4 * torch.rand(1, generator=generator).item()))
        top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        crop = photo[:, :, top : top + side, left : left + side]
        if i % 2:
            crop = crop.flip(-1)
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    rgb = torch.cat(crops).clamp(0, 1)
    return gray_rgb_from_lightness(rgb_to_lab(rgb)[:, :1])


def _fixture_photos() -> list[Tensor]:
    if not FIXTURES.is_dir():
        return []
    from PIL import Image

    photos = []
    for path in sorted(FIXTURES.glob("*.*")):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
        photos.append(torch.from_numpy(array).permute(2, 0, 1)[None])
    return photos


def _generated_scene(size: int, generator: torch.Generator) -> Tensor:
    """Smooth gradients, blobs and edges: enough structure for BatchNorm statistics."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = 0.3 + 0.4 * y
    for _ in range(6):
        cy, cx, r = torch.rand(3, generator=generator).tolist()
        image = image + 0.3 * torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (0.02 + 0.1 * r))
    image = image + 0.2 * (x > torch.rand(1, generator=generator)).float()
    noise = F.interpolate(torch.rand(1, 1, size // 8, size // 8, generator=generator), size=(size, size), mode="bilinear")
    return (image + 0.1 * noise[0, 0]).clamp(0, 1).expand(1, 3, size, size).contiguous()


def make_checkpoint(
    variant: str = "tiny", *, stress: str | None = None, seed: int = 0, calib_size: int = 256, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """A calibrated state dict in the published layout, optionally stressed (see module docstring).

    ``device``: where the calibration passes run (a GPU makes DDColor-L take
    seconds instead of minutes); random draws stay on the CPU and the state
    comes back on the CPU.
    """
    if stress is not None and stress not in STRESS_RECIPES:
        raise ValueError(f"stress must be one of {', '.join(STRESS_RECIPES)}; got {stress!r}")
    config = CONFIGS[variant]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DDColor(config).eval()
    spectral = _init_weights(model, generator)
    model.to(device)
    images = calibration_images(calib_size, seed=seed).to(device)
    x = (images - model.mean) / model.std
    with torch.no_grad():
        _calibrate_encoder(model, x, generator, stress == "blocks")
        _calibrate_batchnorm(model, x)
        _calibrate_output(model, images)
    state = _published_layout(model, spectral)
    if stress not in (None, "blocks"):
        state = stressed(state, stress, images, device=device)
    return state


def stressed(
    state: dict[str, Tensor], recipe: str, images: Tensor | None = None, *, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """A copy of a calibrated published-layout ``state`` with a scaling ``recipe`` applied.

    ``images``: gray RGB inputs to measure peaks on (default: ``calibration_images()``).
    ``blocks`` needs calibration itself: use ``make_checkpoint(stress="blocks")``.
    """
    from ddcolor.checkpoint import model_from_state_dict

    if recipe not in STRESS_RECIPES or recipe == "blocks":
        raise ValueError(f"recipe must be one of {', '.join(STRESS_RECIPES[1:])}; got {recipe!r}")
    images = (calibration_images() if images is None else images).to(device)
    model = model_from_state_dict(dict(state)).to(device)
    with torch.no_grad(), boundary_peaks(model, recipe) as peaks:
        model.predict(images)
    target = OVERFLOW_PEAK if recipe == "overflow" else STREAM_PEAK
    state = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        _WRITERS[recipe](state, {site: target / peak for site, peak in peaks.items()}, model)
    return state


@contextmanager
def boundary_peaks(model: DDColor, recipe: str) -> Iterator[dict]:
    """Within the block, forwards of ``model`` record max |x| of each tensor ``recipe`` scales, by site.

    A stressed checkpoint has every one of them at ``STREAM_PEAK`` (``OVERFLOW_PEAK``
    for ``overflow``) on the images it was stressed on, past fp16's 65504.
    """
    peaks: dict = {}

    def record(site, measure, module, args, kwargs, out):
        peaks[site] = max(peaks.get(site, 0.0), measure(args, out).abs().max().item())

    hooks = [
        module.register_forward_hook(partial(record, site, measure), with_kwargs=True)
        for site, module, measure in _SITES[recipe](model)
    ]
    try:
        yield peaks
    finally:
        for hook in hooks:
            hook.remove()


# Where each recipe measures: (site, module, measure(args, output) -> the tensor), a
# site being what the recipe's writer reads: a stage, tap, block or layer index, or a
# prefix. A site measured at several modules records their largest value.

COLOR = "decoder.color_decoder"


def _output(args, out):
    return out


def _relu_output(args, out):
    return out.relu()


def _stream_sites(stage: int):
    def sites(model: DDColor) -> list:
        arch = model.encoder.arch
        return [(stage, module, _output) for module in [arch.downsample_layers[stage], *arch.stages[stage]]]

    return sites


def _attention_sites(model: DDColor) -> list:
    sites = []
    decoder = model.decoder.color_decoder
    for kind, layers in (("cross", decoder.transformer_cross_attention_layers), ("self", decoder.transformer_self_attention_layers)):
        for i, layer in enumerate(layers):
            attention = layer.multihead_attn if kind == "cross" else layer.self_attn
            prefix = f"{COLOR}.transformer_{kind}_attention_layers.{i}.{'multihead_attn' if kind == 'cross' else 'self_attn'}"
            w_q, _, w_v = attention.in_proj_weight.chunk(3)
            b_q, _, b_v = attention.in_proj_bias.chunk(3)
            # args: (query, key, value); q and v as the forward projects them.
            sites.append(((prefix, "q"), attention, lambda args, out, w=w_q, b=b_q: F.linear(args[0], w, b)))
            sites.append(((prefix, "v"), attention, lambda args, out, w=w_v, b=b_v: F.linear(args[2], w, b)))
    return sites


def _mixing_site(model: DDColor) -> list:
    decoder = model.decoder.color_decoder
    queries = decoder.query_feat.weight.shape[0]
    refine = model.refine_net[0][0].weight.flatten(1)[:, :queries]
    return [("mixing", decoder.color_embed, lambda args, out: refine @ out)]


_SITES = {
    **{recipe: _stream_sites(stage) for stage, recipe in enumerate(STREAM_RECIPES)},
    "taps": lambda m: [(i, getattr(m.encoder.arch, f"norm{i}"), _output) for i in range(4)],
    "concat": lambda m: [(k, block.conv[0], _output) for k, block in enumerate(m.decoder.layers)],
    "pixel_features": lambda m: [(k, block, _output) for k, block in enumerate(m.decoder.layers)],
    "head": _mixing_site,
    "queries": lambda m: [
        ("stream", layer.norm, _output)
        for group in ("cross_attention", "self_attention", "ffn")
        for layer in getattr(m.decoder.color_decoder, f"transformer_{group}_layers")
    ],
    "attention": _attention_sites,
    "ffn": lambda m: [(i, layer.linear1, _relu_output) for i, layer in enumerate(m.decoder.color_decoder.transformer_ffn_layers)],
    "color_embed": lambda m: [
        ("norm", m.decoder.color_decoder.decoder_norm, _output),
        *[(i, layer, _relu_output) for i, layer in enumerate(m.decoder.color_decoder.color_embed.layers[:-1])],
    ],
    "overflow": lambda m: [(0, m.decoder.color_decoder.input_proj[0], _output)],
}


# Writers: scale each site of a (cloned) published-layout state by its factor, and
# its readers by the inverse, so the FP32 output does not change.


def _scale(state: dict, prefix: str, factor, keys=("weight", "bias")) -> None:
    for key in keys:
        state[f"{prefix}.{key}"] *= factor


def _scale_bn_input(state: dict, prefix: str, factor: float, eps: float = 1e-5) -> None:
    """Statistics of a BatchNorm (default eps) whose input is multiplied by ``factor``; exact."""
    state[f"{prefix}.running_mean"] *= factor
    state[f"{prefix}.running_var"] = (state[f"{prefix}.running_var"] + eps) * factor**2 - eps


def _stress_stream(state: dict, factors: dict, model: DDColor) -> None:
    """A stage's residual stream through all its writers; its readers are LayerNorms."""
    ((stage, s),) = factors.items()
    arch = "encoder.arch"
    writers = [f"{arch}.downsample_layers.0.0", f"{arch}.downsample_layers.0.1"] if stage == 0 else [f"{arch}.downsample_layers.{stage}.1"]
    for writer in writers:
        _scale(state, writer, s)
    for block in range(len(model.encoder.arch.stages[stage])):
        _scale(state, f"{arch}.stages.{stage}.{block}", s, ("dwconv.bias", "gamma"))


def _stress_taps(state: dict, factors: dict, model: DDColor) -> None:
    """Tap i's LayerNorm affine; its reader is a BatchNorm (skips) or a bias-free conv before one (tap 3)."""
    for i, s in factors.items():
        _scale(state, f"encoder.arch.norm{i}", s)
        _scale_bn_input(state, "decoder.layers.0.shuf.conv.1" if i == 3 else f"decoder.layers.{2 - i}.bn", s)


def _stress_concat(state: dict, factors: dict, model: DDColor) -> None:
    """Both BatchNorms feeding a block's 3x3 conv; the BatchNorm after it (through ReLU) sees the scale."""
    for k, s in factors.items():
        _scale(state, f"decoder.layers.{k}.shuf.conv.1", s)
        _scale(state, f"decoder.layers.{k}.bn", s)
        _scale_bn_input(state, f"decoder.layers.{k}.conv.2", s)


def _stress_pixel_features(state: dict, factors: dict, model: DDColor) -> None:
    """A block's output BatchNorm; its readers: the next 1x1 conv's BatchNorm, the color decoder's input
    projection, and (last block) the head, whose ReLU passes the scale to the color embedding."""
    for k, s in factors.items():
        _pixel_features_scale(state, k, s)


def _pixel_features_scale(state: dict, k: int, s: float) -> None:
    _scale(state, f"decoder.layers.{k}.conv.2", s)
    _scale(state, f"{COLOR}.input_proj.{k}", 1 / s, ("weight",))
    if k < 2:
        _scale_bn_input(state, f"decoder.layers.{k + 1}.shuf.conv.1", s)
    else:
        _scale(state, "decoder.last_shuf.conv.0", s, ("bias",))
        _scale(state, f"{COLOR}.color_embed.layers.2", 1 / s)


def _stress_head(state: dict, factors: dict, model: DDColor) -> None:
    """The head's mixing matrix up, the features it multiplies (the last block's output) down."""
    _pixel_features_scale(state, 2, 1 / factors["mixing"])


def _stress_queries(state: dict, factors: dict, model: DDColor) -> None:
    """The whole query stream: queries, positions, every norm and every branch written into it; every
    projection reading it divides. The norms between layers do not see the scale (to their eps)."""
    s = factors["stream"]
    dim = model.config.hidden_dim
    _scale(state, COLOR, s, ("query_feat.weight", "query_embed.weight"))
    for i in range(model.config.dec_layers):
        cross = f"{COLOR}.transformer_cross_attention_layers.{i}"
        state[f"{cross}.multihead_attn.in_proj_weight"][:dim] /= s
        _scale(state, f"{cross}.multihead_attn.out_proj", s)
        attention = f"{COLOR}.transformer_self_attention_layers.{i}"
        state[f"{attention}.self_attn.in_proj_weight"][: 2 * dim] /= s
        state[f"{attention}.self_attn.in_proj_bias"][2 * dim :] *= s
        _scale(state, f"{attention}.self_attn.out_proj", s, ("bias",))
        ffn = f"{COLOR}.transformer_ffn_layers.{i}"
        _scale(state, f"{ffn}.linear1", 1 / s, ("weight",))
        _scale(state, f"{ffn}.linear2", s)
        for prefix in (cross, attention, ffn):
            _scale(state, f"{prefix}.norm", s)


def _stress_attention(state: dict, factors: dict, model: DDColor) -> None:
    """Per attention: q up and k down (logits unchanged), v up and out_proj's input weights down."""
    for (prefix, part), s in factors.items():
        weight, bias = state[f"{prefix}.in_proj_weight"], state[f"{prefix}.in_proj_bias"]
        dim = weight.shape[1]
        if part == "q":
            for tensor in (weight, bias):
                tensor[:dim] *= s
                tensor[dim : 2 * dim] /= s
        else:
            for tensor in (weight, bias):
                tensor[2 * dim :] *= s
            state[f"{prefix}.out_proj.weight"] /= s


def _stress_ffn(state: dict, factors: dict, model: DDColor) -> None:
    """Each FFN's hidden layer up, linear2 down (ReLU keeps the product)."""
    for i, s in factors.items():
        ffn = f"{COLOR}.transformer_ffn_layers.{i}"
        _scale(state, f"{ffn}.linear1", s)
        _scale(state, f"{ffn}.linear2", 1 / s, ("weight",))


def _stress_color_embed(state: dict, factors: dict, model: DDColor) -> None:
    """The decoder norm's output and each hidden layer of the color embedding up, the next layer down."""
    for site, s in factors.items():
        first = f"{COLOR}.decoder_norm" if site == "norm" else f"{COLOR}.color_embed.layers.{site}"
        _scale(state, first, s)
        _scale(state, f"{COLOR}.color_embed.layers.{0 if site == 'norm' else site + 1}", 1 / s, ("weight",))


def _stress_overflow(state: dict, factors: dict, model: DDColor) -> None:
    """The first scale's cross-attention memory up, the key and value weights reading it down. The
    position encoding added to the memory keeps its scale, so no exact rescaling brings the memory back
    and the FP32 output changes (keys lose most of their position term), but stays as well-conditioned
    as the calibrated one's."""
    s = factors[0]
    dim = model.config.hidden_dim
    _scale(state, f"{COLOR}.input_proj.0", s)
    for i in range(0, model.config.dec_layers, model.config.num_scales):
        state[f"{COLOR}.transformer_cross_attention_layers.{i}.multihead_attn.in_proj_weight"][dim:] /= s


_WRITERS = {
    **{recipe: _stress_stream for recipe in STREAM_RECIPES},
    "taps": _stress_taps,
    "concat": _stress_concat,
    "pixel_features": _stress_pixel_features,
    "head": _stress_head,
    "queries": _stress_queries,
    "attention": _stress_attention,
    "ffn": _stress_ffn,
    "color_embed": _stress_color_embed,
    "overflow": _stress_overflow,
}


def _spectral_triplet(weight: Tensor, generator: torch.Generator, iterations: int = 200) -> tuple[Tensor, Tensor, Tensor]:
    """Converged spectral-norm vectors, updated exactly as torch's spectral_norm does."""
    matrix = weight.flatten(1)
    u = F.normalize(torch.randn(matrix.shape[0], generator=generator), dim=0, eps=1e-12)
    v = F.normalize(torch.randn(matrix.shape[1], generator=generator), dim=0, eps=1e-12)
    for _ in range(iterations):
        v = F.normalize(torch.mv(matrix.t(), u), dim=0, eps=1e-12)
        u = F.normalize(torch.mv(matrix, v), dim=0, eps=1e-12)
    return weight, u, v


def _spectral_modules(model: DDColor) -> dict[str, nn.Conv2d]:
    names = ["decoder.last_shuf.conv.0", "refine_net.0.0"]
    for i in range(3):
        names += [f"decoder.layers.{i}.shuf.conv.0", f"decoder.layers.{i}.conv.0"]
    return {name: model.get_submodule(name) for name in names}


def _init_weights(model: DDColor, generator: torch.Generator) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    def normal(shape, std):
        return torch.randn(shape, generator=generator) * std

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(normal(module.weight.shape, 1 / math.sqrt(fan_in)))
                if module.bias is not None:
                    module.bias.copy_(normal(module.bias.shape, 0.05))
            elif isinstance(module, BatchNorm2d):
                module.weight.copy_(0.6 + 0.8 * torch.rand(module.weight.shape, generator=generator))
                module.bias.copy_(normal(module.bias.shape, 0.1))
            elif isinstance(module, (nn.LayerNorm,)) or type(module).__name__ == "LayerNorm2d":
                module.weight.copy_(1 + normal(module.weight.shape, 0.1))
                module.bias.copy_(normal(module.bias.shape, 0.05))
            elif isinstance(module, MultiheadAttention):
                dim = module.in_proj_weight.shape[1]
                module.in_proj_weight.copy_(normal(module.in_proj_weight.shape, 1 / math.sqrt(dim)))
                # Sharpen attention: scale query and key projections.
                module.in_proj_weight[: 2 * dim] *= ATTENTION_SHARPNESS
                module.in_proj_bias.copy_(normal(module.in_proj_bias.shape, 0.05))
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(normal(module.weight.shape, 1.0))
        spectral = {}
        for name, conv in _spectral_modules(model).items():
            fan_in = conv.weight[0].numel()
            weight = normal(conv.weight.shape, math.sqrt(2 / fan_in))
            # Zero-mean filters keep ReLU after a conv of non-negative inputs
            # active about half the time, as in trained nets; otherwise the
            # BatchNorm after it blows rare activations up into hot pixels.
            weight -= weight.mean(dim=(1, 2, 3), keepdim=True)
            weight, u, v = _spectral_triplet(weight, generator)
            spectral[name] = (weight, u, v)
            conv.weight.copy_(weight / torch.dot(u, torch.mv(weight.flatten(1), v)))
    return spectral


def _calibrate_encoder(model: DDColor, x: Tensor, generator: torch.Generator, stress: bool) -> None:
    """Set each layer scale from the RMS of its block's branch on real inputs."""
    arch = model.encoder.arch
    stream = x
    for i, stage in enumerate(arch.stages):
        stream = arch.downsample_layers[i](stream).float()
        dim = stream.shape[1]
        gain = torch.exp(0.5 * torch.randn(dim, generator=generator))
        gain *= torch.where(torch.rand(dim, generator=generator) < 0.5, -1.0, 1.0)
        outliers = torch.randperm(dim, generator=generator)[: max(1, int(OUTLIER_FRACTION * dim))]
        gain[outliers] *= OUTLIER_GAIN
        if stress and i == 3:
            gain[outliers] *= STRESS_GAIN
        gain, outliers = gain.to(stream.device), outliers.to(stream.device)
        # Trained nets give massive-activation channels small norm weights,
        # so they dominate the stream but not the normalized features.
        quiet = [block.norm for block in stage] + [getattr(arch, f"norm{i}")]
        if i < 3:
            quiet.append(arch.downsample_layers[i + 1][0])
        for norm in quiet:
            norm.weight[outliers] /= OUTLIER_GAIN
        entering = stream.pow(2).mean().sqrt()
        for block in stage:
            branch_rms = block.mlp_output(stream).pow(2).mean(dim=(0, 2, 3)).sqrt().clamp(min=1e-6)
            block.gamma.copy_(STAGE_GROWTH[i] * entering * gain / branch_rms)
            stream = block(stream)


def _calibrate_batchnorm(model: DDColor, x: Tensor) -> None:
    """One pass in train mode with cumulative averaging sets running stats to the batch stats."""
    norms = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    # Every BatchNorm is in the pixel decoder: the color decoder and head need not run.
    _pixel_features(model, _denormalize(model, x))
    for bn in norms:
        bn.momentum = 0.1
        bn.eval()


def _calibrate_output(model: DDColor, images: Tensor) -> None:
    """Scale the color embedding so ab has std AB_STD, centered on a warm tint.

    The refine conv is spectral-normalized, which cancels any scale put on its
    own weights, so the scale goes on the last color-embedding layer.
    """
    last = model.decoder.color_decoder.color_embed.layers[-1]
    refine = model.refine_net[0][0]
    # What model(images) computes; encoder and pixel decoder do not change here, so they run once.
    scales = _pixel_features(model, images)
    ab = model.head(model.decoder.color_decoder(scales), scales[2], images)
    scale = AB_STD / (ab - ab.mean(dim=(0, 2, 3), keepdim=True)).std().item()
    last.weight.mul_(scale)
    last.bias.mul_(scale)
    ab = model.head(model.decoder.color_decoder(scales), scales[2], images)
    refine.bias.sub_(ab.mean(dim=(0, 2, 3)) - torch.tensor([4.0, 10.0], device=ab.device))


def _pixel_features(model: DDColor, images: Tensor) -> list[Tensor]:
    """The pixel decoder's scales for gray RGB ``images``, computed as ``model(images)`` does."""
    return model.decoder.pixel_features(model.encoder((images - model.mean) / model.std))


def _denormalize(model: DDColor, x: Tensor) -> Tensor:
    return x * model.std + model.mean


def _published_layout(model: DDColor, spectral: dict[str, tuple[Tensor, Tensor, Tensor]]) -> dict[str, Tensor]:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for name, (weight, u, v) in spectral.items():
        del state[f"{name}.weight"]
        state[f"{name}.weight_orig"] = weight.clone()
        state[f"{name}.weight_u"] = u.clone()
        state[f"{name}.weight_v"] = v.clone()
    dim = model.config.dims[-1]
    state["encoder.arch.head_cls.weight"] = torch.zeros(4, dim)
    state["encoder.arch.head_cls.bias"] = torch.zeros(4)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--stress", choices=STRESS_RECIPES, help="a stress recipe (default: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    state = make_checkpoint(args.variant, stress=args.stress, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": state}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
