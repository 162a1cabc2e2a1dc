"""The paper's training losses, each a small module with its weight beside it.

DDColor (Kang et al., ICCV 2023), Sec. 3.4 and the authors' ``train_ddcolor.yml``::

    L_G = 0.1 L_pix + 5.0 L_per + 1.0 L_adv + 0.5 L_col        (L_adv only with --gan)

* ``PixelLoss``: L1 between predicted and true ab;
* ``PerceptualLoss``: L1 between VGG16-bn features (before BatchNorm, at the
  first conv of each block, deeper layers weighted more) of the predicted and
  the true color image; torchvision's ImageNet weights, read from torch's hub cache;
* ``ColorfulnessLoss``: 1 - colorfulness of the prediction (Hasler and
  Suesstrunk's measure on the absolute opponent channels, as the authors write it);
* ``AdversarialLoss``: the vanilla GAN loss (binary cross-entropy on logits)
  with ``Discriminator``, the authors' small spectral-norm convnet.

As in the original, the true image that the perceptual and adversarial terms
compare against is made 1.2x more colorful first (``enhance_colors``); the pixel
loss sees the true ab as it is. Every term is a mean over the batch, so the same
global batch gives the same gradient on one process or shared among several
(the original sums the colorfulness term over each GPU's 4 images instead).
Losses compute in FP32; only the VGG and discriminator forwards run under the
training precision's autocast.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..color import lab_to_rgb
from ..layers import checkpointed

PIXEL_WEIGHT = 0.1
PERCEPTUAL_WEIGHT = 5.0
ADVERSARIAL_WEIGHT = 1.0
COLORFULNESS_WEIGHT = 0.5
TARGET_COLOR_ENHANCE = 1.2

VGG16_BN_URL = "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"
# torchvision's VGG16 feature layers: channels of each 3x3 conv, "M" a 2x2 max pool;
# with BatchNorm each conv is three modules (conv, bn, relu) of ``features``.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# The first conv of each block, and its weight in the perceptual loss.
PERCEPTUAL_LAYERS = {"conv1_1": 0.0625, "conv2_1": 0.125, "conv3_1": 0.25, "conv4_1": 0.5, "conv5_1": 1.0}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Autocast = Callable[[], contextlib.AbstractContextManager]


class PerceptualWeightsMissing(FileNotFoundError):
    """The VGG16-bn weights are not in torch's cache; the message says where to put them."""


def enhance_colors(rgb: Tensor, factor: float = TARGET_COLOR_ENHANCE) -> Tensor:
    """Push sRGB (B, 3, H, W) away from its gray by ``factor``, clipped to [0, 1] (the authors' target boost)."""
    r, g, b = rgb.unbind(1)
    gray = (0.299 * r + 0.587 * g + 0.114 * b)[:, None]
    return (gray + factor * (rgb - gray)).clamp(0, 1)


class PixelLoss(nn.Module):
    """L_pix: mean absolute error on ab."""

    def __init__(self, weight: float = PIXEL_WEIGHT):
        super().__init__()
        self.weight = weight

    def forward(self, ab: Tensor, ab_true: Tensor) -> Tensor:
        return self.weight * F.l1_loss(ab.float(), ab_true.float())


class ColorfulnessLoss(nn.Module):
    """L_col: 1 - colorfulness of the predicted sRGB in [0, 1], averaged over the batch."""

    # sqrt(0) has an infinite slope: an exactly gray prediction would make NaN gradients.
    EPSILON = 1e-12

    def __init__(self, weight: float = COLORFULNESS_WEIGHT):
        super().__init__()
        self.weight = weight

    def forward(self, rgb: Tensor) -> Tensor:
        r, g, b = rgb.float().flatten(2).unbind(1)  # (B, H*W) each
        rg = (r - g).abs()
        yb = (0.5 * (r + g) - b).abs()
        spread = torch.sqrt(rg.var(dim=1) + yb.var(dim=1) + self.EPSILON)
        center = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2 + self.EPSILON)
        return self.weight * (1 - (spread + 0.3 * center)).mean()


def vgg16_bn_features(depth: int) -> nn.Sequential:
    """torchvision's ``vgg16_bn().features[:depth]``, built here (the same module indices)."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers[:depth])


def perceptual_vgg() -> nn.Sequential:
    """The VGG16-bn layers the perceptual loss runs (up to its deepest tap), untrained and frozen."""
    return vgg16_bn_features(max(vgg_layer_indices().values()) + 1).eval().requires_grad_(False)


def vgg_layer_indices() -> dict[str, int]:
    """Where each ``convB_1`` of ``PERCEPTUAL_LAYERS`` sits in ``features``."""
    indices, index, block, first = {}, 0, 1, True
    for item in VGG16_LAYOUT:
        if item == "M":
            index, block, first = index + 1, block + 1, True
            continue
        if first:
            indices[f"conv{block}_1"] = index
        index, first = index + 3, False
    return {name: indices[name] for name in PERCEPTUAL_LAYERS}


def vgg16_bn_weights_path() -> Path:
    """Where torchvision keeps (and we look for) the ImageNet VGG16-bn weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG16_BN_URL).name


def load_vgg16_bn_features(path: Path | None = None) -> nn.Sequential:
    """The frozen VGG16-bn layers the perceptual loss needs, with ImageNet weights from ``path``.

    Nothing is downloaded: training machines are often offline, and a silent
    500 MB download in the middle of a command is worse than a clear message.
    """
    path = path or vgg16_bn_weights_path()
    if not path.is_file():
        raise PerceptualWeightsMissing(
            f"the perceptual loss needs torchvision's VGG16-bn ImageNet weights, not found at {path}. "
            f"Download {VGG16_BN_URL} and save it there (or set TORCH_HOME to the folder that holds hub/checkpoints/), "
            "or train without it: --no-perceptual"
        )
    features = perceptual_vgg()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise PerceptualWeightsMissing(f"{path} is not a readable PyTorch file ({e}); download {VGG16_BN_URL} again") from e
    wanted = {key: state.get(f"features.{key}") for key in features.state_dict()}
    missing = [key for key, tensor in wanted.items() if tensor is None]
    if missing:
        raise PerceptualWeightsMissing(f"{path} is not torchvision's vgg16_bn: it lacks features.{missing[0]}; download {VGG16_BN_URL} again")
    features.load_state_dict({key: tensor.clone() for key, tensor in wanted.items()})
    return features


class PerceptualLoss(nn.Module):
    """L_per: weighted L1 between VGG16-bn features of the prediction and of the (enhanced) truth.

    The prediction runs through VGG one layer at a time (a conv with its
    BatchNorm, ReLU and the pool after it), and each tap's term is taken in the
    layer that makes it; with ``checkpointing`` a layer and its term are
    recomputed in the backward pass instead of kept, as the model's blocks are:
    VGG's first layers at full resolution make the largest activations of a
    step. Taps stay in the autocast dtype until their term (an exact widening),
    so the truth's taps take half the memory under autocast.
    """

    def __init__(self, features: nn.Sequential, weight: float = PERCEPTUAL_WEIGHT, autocast: Autocast = contextlib.nullcontext,
                 checkpointing: bool = False):
        super().__init__()
        self.weight = weight
        self.features = features
        self.taps = {index: PERCEPTUAL_LAYERS[name] for name, index in vgg_layer_indices().items()}
        self.autocast = autocast
        self.checkpointing = checkpointing
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # frozen ImageNet statistics, whatever the trainer asks

    def layers(self) -> list[tuple[nn.Sequential, float | None]]:
        """VGG split before each conv: (the conv and what follows it up to the next conv, the conv's tap weight or None)."""
        starts = [i for i, module in enumerate(self.features) if isinstance(module, nn.Conv2d)]
        return [(self.features[start:end], self.taps.get(start)) for start, end in zip(starts, starts[1:] + [len(self.features)])]

    def tapped(self, rgb: Tensor) -> list[Tensor]:
        x = (rgb - self.mean) / self.std
        taps = []
        with self.autocast():
            for layer, weight in self.layers():
                x = layer[0](x)
                if weight is not None:
                    taps.append(x)
                x = layer[1:](x)
        return taps

    def forward(self, rgb: Tensor, rgb_true: Tensor) -> Tensor:
        with torch.no_grad():
            targets = iter(self.tapped(rgb_true))
        x = (rgb - self.mean) / self.std
        total = 0
        for layer, weight in self.layers():
            if weight is not None:
                x, term = checkpointed(self._tapped_layer, layer, x, next(targets), enabled=self.checkpointing)
                total = total + weight * term
            else:
                x = checkpointed(self._layer, layer, x, enabled=self.checkpointing)
        return self.weight * total

    def _layer(self, layer: nn.Sequential, x: Tensor) -> Tensor:
        with self.autocast():
            return layer(x)

    def _tapped_layer(self, layer: nn.Sequential, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        with self.autocast():
            tap = layer[0](x)
            x = layer[1:](tap)
        return x, tap_distance(tap, target)


def tap_distance(tap: Tensor, target: Tensor) -> Tensor:
    """Mean absolute difference of two feature maps, accumulated in FP32.

    The difference is formed in the taps' dtype: its sign, all the gradient
    reads, is exact in any float format, and FP32 copies of VGG's first
    full-resolution maps would be a step's largest tensors. Each element's
    difference is rounded once: by at most 2^-8 of it in bf16 (fp16: 2^-11).
    """
    return torch.mean((tap - target).abs(), dtype=torch.float32)


# ----------------------------------------------------------------------------- adversarial


class SelfAttention(nn.Module):
    """SAGAN self-attention over the pixels, added through a learned gate that starts closed."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = spectral_conv1d(channels, channels // 8)
        self.key = spectral_conv1d(channels, channels // 8)
        self.value = spectral_conv1d(channels, channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(2)  # (B, C, N)
        query, key, value = self.query(flat), self.key(flat), self.value(flat)
        attention = torch.softmax((query.transpose(1, 2) @ key).float(), dim=1).to(value.dtype)  # (B, N, N)
        return (self.gamma * (value @ attention) + flat).view_as(x)


def spectral_conv1d(inputs: int, outputs: int) -> nn.Module:
    conv = nn.Conv1d(inputs, outputs, kernel_size=1, bias=False)
    nn.init.kaiming_normal_(conv.weight)
    return nn.utils.parametrizations.spectral_norm(conv)


def spectral_conv(inputs: int, outputs: int, kernel: int, stride: int = 1, *, padding: int | None = None,
                  bias: bool = True, relu: bool = True, attention: bool = False) -> nn.Sequential:
    """Spectral-norm conv (Kaiming init), then ReLU and optionally self-attention."""
    conv = nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=(kernel - 1) // 2 if padding is None else padding, bias=bias)
    nn.init.kaiming_normal_(conv.weight)
    if bias:
        nn.init.zeros_(conv.bias)
    layers: list[nn.Module] = [nn.utils.parametrizations.spectral_norm(conv)]
    layers += [nn.ReLU(inplace=True)] if relu else []
    layers += [SelfAttention(outputs)] if attention else []
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    """The authors' ``DynamicUNetDiscriminator`` (nf 64, 3 blocks): sRGB (B, 3, H, W) -> logits (B, N).

    Strided 4x4 convs halve the image four times, with a 3x3 conv between and
    self-attention after the first block; a last 4x4 conv gives one logit per
    patch. Needs at least 64 x 64 pixels.
    """

    MIN_SIZE = 64

    def __init__(self, channels: int = 3, width: int = 64, blocks: int = 3):
        super().__init__()
        layers = [spectral_conv(channels, width, 4, 2)]
        for block in range(blocks):
            layers += [spectral_conv(width, width, 3), spectral_conv(width, 2 * width, 4, 2, attention=block == 0)]
            width *= 2
        layers += [spectral_conv(width, width, 3), spectral_conv(width, 1, 4, padding=0, bias=False, relu=False)]
        self.layers = nn.Sequential(*layers)

    def forward(self, rgb: Tensor) -> Tensor:
        return self.layers(rgb).flatten(1)


class AdversarialLoss(nn.Module):
    """L_adv: the vanilla GAN loss on the discriminator's logits."""

    def __init__(self, weight: float = ADVERSARIAL_WEIGHT):
        super().__init__()
        self.weight = weight

    def forward(self, logits_of_fake: Tensor) -> Tensor:
        """The generator's term: its colors should be taken for real ones."""
        logits = logits_of_fake.float()
        return self.weight * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    @staticmethod
    def discriminator_loss(logits_of_real: Tensor, logits_of_fake: Tensor) -> Tensor:
        """The discriminator's loss (weight 1, as in the original): real is 1, generated is 0."""
        real, fake = logits_of_real.float(), logits_of_fake.float()
        return F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
            fake, torch.zeros_like(fake)
        )


# ----------------------------------------------------------------------------- together


class PaperLosses(nn.Module):
    """The generator's loss terms for one batch, by the paper's names: pix, per, col, adv."""

    def __init__(self, *, perceptual: bool, gan: bool, autocast: Autocast = contextlib.nullcontext,
                 vgg_weights: Path | None = None, checkpointing: bool = False):
        super().__init__()
        self.pix = PixelLoss()
        self.per = (PerceptualLoss(load_vgg16_bn_features(vgg_weights), autocast=autocast, checkpointing=checkpointing)
                    if perceptual else None)
        self.col = ColorfulnessLoss()
        self.adv = AdversarialLoss() if gan else None
        self.autocast = autocast

    def forward(self, ab: Tensor, lightness: Tensor, rgb_true: Tensor, ab_true: Tensor,
                discriminator: nn.Module | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """Terms for predicted ``ab`` (B, 2, H, W), and the predicted sRGB (for the discriminator's step)."""
        rgb = lab_to_rgb(torch.cat((lightness, ab.float()), dim=1))
        target = enhance_colors(rgb_true)
        terms = {"pix": self.pix(ab, ab_true)}
        if self.per is not None:
            terms["per"] = self.per(rgb, target)
        terms["col"] = self.col(rgb)
        if self.adv is not None and discriminator is not None:
            with self.autocast():
                logits = discriminator(rgb)
            terms["adv"] = self.adv(logits)
        return terms, rgb
