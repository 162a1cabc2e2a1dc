"""Training photos: checked once, kept small, cropped at random; gray input and ab target from Lab.

A ``Photo`` is a name and a way to load it as (H, W, C) float in [0, 1]: a
file read by the command line's reader, or one image of an in-memory batch
(the ComfyUI node). ``prepare`` loads each once: files that do not decode are
reported and skipped, photos with no color to learn from (gray, or nearly:
the 99th percentile of their chroma under ``GRAY_CHROMA``) are skipped and
counted, and the rest are kept as 8-bit RGB with their short side at the
training size (about size^2 x 4 / 3 x 3 bytes each: 260 kB at 256).

Everything random is drawn from generators seeded by (seed, what, index), never
from global state: the same seed gives the same hold-out, sample order, crops
and flips, on one process or several, and a resumed run continues the same
sequence without replaying anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..color import gray_rgb_from_lightness, rgb_to_lab

# Chroma (Lab units) below which a photo counts as gray: a difference of about 5
# is barely visible at a glance, and the JPEG noise of gray scans stays under 2.
GRAY_CHROMA = 5.0
# The share of the photos held out for validation when no --val folder is given.
VALIDATION_SHARE = 0.1
VALIDATION_MAX = 16


@dataclass(frozen=True)
class Photo:
    name: str
    load: Callable[[], np.ndarray | Tensor]  # (H, W, C) float in [0, 1], C = 1, 3 or 4


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str
    unreadable: bool = False  # else: gray
    validation: bool = False  # one of the --val photos


def photos_from_images(images: Tensor | Sequence[Tensor], prefix: str = "image") -> list[Photo]:
    """One ``Photo`` per image of ComfyUI IMAGEs: a (B, H, W, C) batch, or a list of batches
    or single (H, W, C) images (dataset loaders give lists when sizes differ)."""
    parts = [images] if isinstance(images, Tensor) else list(images)
    singles: list[Tensor] = []
    for part in parts:
        if part.ndim not in (3, 4):
            raise ValueError(f"expected images shaped (B, H, W, C) or (H, W, C); got {tuple(part.shape)}")
        singles += list(part) if part.ndim == 4 else [part]
    return [Photo(f"{prefix} {i + 1}", lambda image=image: image.detach().cpu()) for i, image in enumerate(singles)]


def seeded(seed: int, stream: str, index: int = 0) -> torch.Generator:
    """A generator for one purpose (``stream``) and position, independent of every other."""
    digest = hashlib.blake2b(f"{seed}:{stream}:{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


class PhotoSet:
    """Color photos at the training size: 8-bit RGB (3, h, w), short side ``size``."""

    def __init__(self, names: list[str], images: list[Tensor], size: int):
        self.names, self.images, self.size = names, images, size

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int]) -> "PhotoSet":
        return PhotoSet([self.names[i] for i in indices], [self.images[i] for i in indices], self.size)

    def crops(self, indices: Sequence[int], generator: torch.Generator | None) -> Tensor:
        """sRGB (n, 3, size, size) float: random crops with random flips, or centered ones without a generator."""
        out = []
        for index in indices:
            image = self.images[index]
            height, width = image.shape[1:]
            if generator is None:
                top, left, flip = (height - self.size) // 2, (width - self.size) // 2, False
            else:
                top = int(torch.randint(height - self.size + 1, (1,), generator=generator))
                left = int(torch.randint(width - self.size + 1, (1,), generator=generator))
                flip = bool(torch.rand((), generator=generator) < 0.5)
            crop = image[:, top : top + self.size, left : left + self.size]
            out.append(crop.flip(-1) if flip else crop)
        return torch.stack(out).float() / 255


def prepare(photos: Sequence[Photo], size: int) -> tuple[PhotoSet, list[Skipped]]:
    """Load ``photos`` once; keep the color ones at ``size``, say why the others were left out."""
    names, images, skipped = [], [], []
    for photo in photos:
        try:
            image = torch.as_tensor(np.asarray(photo.load(), dtype=np.float32))
        except (OSError, ValueError, RuntimeError) as e:  # the reader's errors name the file
            skipped.append(Skipped(photo.name, f"cannot read: {str(e).removeprefix(f'{photo.name}: ')}", unreadable=True))
            continue
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            skipped.append(Skipped(photo.name, f"not an image (shape {tuple(image.shape)})", unreadable=True))
            continue
        if image.shape[-1] == 1:
            skipped.append(Skipped(photo.name, "grayscale"))
            continue
        rgb = shrink(image[..., :3].permute(2, 0, 1).clamp(0, 1), size)  # any alpha is dropped
        if not has_color(rgb):
            skipped.append(Skipped(photo.name, "grayscale (no color to learn from)"))
            continue
        names.append(photo.name)
        images.append((rgb * 255).round().to(torch.uint8))
    return PhotoSet(names, images, size), skipped


def shrink(rgb: Tensor, size: int) -> Tensor:
    """Resize (3, H, W) so its short side is ``size`` (antialiased; small photos grow)."""
    height, width = rgb.shape[1:]
    scale = size / min(height, width)
    target = (max(size, round(height * scale)), max(size, round(width * scale)))
    if target == (height, width):
        return rgb
    return F.interpolate(rgb[None], size=target, mode="bilinear", antialias=scale < 1, align_corners=False)[0].clamp(0, 1)


def has_color(rgb: Tensor) -> bool:
    chroma = rgb_to_lab(rgb)[1:].norm(dim=0).flatten()
    return bool(torch.quantile(chroma[:: max(1, chroma.numel() // 100_000)], 0.99) >= GRAY_CHROMA)


def hold_out(count: int, seed: int) -> tuple[list[int], list[int]]:
    """Split ``count`` photos into training and validation indices, the same for the same seed.

    ``VALIDATION_SHARE`` of them (at least one, at most ``VALIDATION_MAX``) are
    held out; a single photo is all training.
    """
    if count < 2:
        return list(range(count)), []
    held = min(VALIDATION_MAX, max(1, round(count * VALIDATION_SHARE)))
    order = torch.randperm(count, generator=seeded(seed, "validation")).tolist()
    return sorted(order[held:]), sorted(order[:held])


class SampleOrder:
    """Which photos make up each step's batch: every photo once per epoch, in a seeded order per epoch."""

    def __init__(self, count: int, seed: int):
        self.count, self.seed = count, seed
        self._epoch, self._order = -1, []

    def batch(self, step: int, batch: int) -> list[int]:
        """Photo indices of the 0-based ``step``'s batch."""
        return [self._at(position) for position in range(step * batch, (step + 1) * batch)]

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, self.count)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, torch.randperm(self.count, generator=seeded(self.seed, "epoch", epoch)).tolist()
        return self._order[offset]


@dataclass
class Batch:
    """What one training or validation batch holds, on the training device."""

    gray: Tensor  # the network's input: gray sRGB (B, 3, S, S) with the photos' lightness
    lightness: Tensor  # L (B, 1, S, S)
    ab: Tensor  # the true ab (B, 2, S, S)
    rgb: Tensor  # the true sRGB (B, 3, S, S)

    @classmethod
    def from_rgb(cls, rgb: Tensor, device: torch.device | str) -> "Batch":
        rgb = rgb.to(device)
        lab = rgb_to_lab(rgb)
        return cls(gray_rgb_from_lightness(lab[:, :1]), lab[:, :1], lab[:, 1:], rgb)

    def split(self, size: int) -> list["Batch"]:
        """Consecutive batches of at most ``size`` images."""
        return [Batch(*parts) for parts in zip(self.gray.split(size), self.lightness.split(size), self.ab.split(size), self.rgb.split(size))]


def training_batch(photos: PhotoSet, order: SampleOrder, step: int, batch: int, *, seed: int,
                   share: slice = slice(None)) -> Tensor:
    """sRGB crops of the 0-based ``step``'s batch; ``share`` picks one process's part of it.

    Every process draws the crops of the whole batch (cheap) so that its part
    is exactly what a single process would train on.
    """
    generator = seeded(seed, "crops", step)
    indices = order.batch(step, batch)
    crops = [photos.crops([index], generator) for index in indices]
    return torch.cat(crops[share])
