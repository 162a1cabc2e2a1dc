"""Shared fixtures."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"


REPO = Path(__file__).resolve().parent.parent
# What a calibrated checkpoint depends on: the generator, the architecture and
# the photos it is calibrated on (generated scenes where ../shared is absent).
CHECKPOINT_SOURCES = ["tests/calibrated.py", "ddcolor/model.py", "ddcolor/decoder.py", "ddcolor/convnext.py", "ddcolor/layers.py", "ddcolor/color.py"]
CHECKPOINT_SOURCES += [str(photo) for photo in sorted(FIXTURES.glob("*.*"))]


def calibrated_checkpoint(variant: str, stress: str | None = None, device: str = "cpu") -> Path:
    """A calibrated synthetic checkpoint ({'params': state}, published layout), built once.

    ``stress``: a recipe of ``tests.calibrated.STRESS_RECIPES``; all but
    "blocks" are derived from the calibrated checkpoint, which is built first.
    ``device``: where a build's calibration runs (benchmarks/gpu_check.py
    passes its GPU); a cached file is used whatever device built it.
    Kept in .cache/tests under a name that changes whenever its sources
    change; written atomically so parallel sessions never read half a file.
    """
    from tests.calibrated import make_checkpoint, stressed

    digest = hashlib.sha256(b"".join((REPO / name).read_bytes() for name in CHECKPOINT_SOURCES)).hexdigest()[:16]
    path = REPO / ".cache" / "tests" / f"calibrated_{variant}{'_' + stress if stress else ''}_{digest}.pth"
    if not path.is_file():
        if stress in (None, "blocks"):
            state = make_checkpoint(variant, stress=stress, device=device)
        else:
            base = torch.load(calibrated_checkpoint(variant, device=device), map_location="cpu", weights_only=True)["params"]
            state = stressed(base, stress, device=device)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        torch.save({"params": state}, partial)
        partial.replace(path)
    return path


@pytest.fixture(scope="session")
def small_checkpoint() -> Path:
    """The narrow "small" config: ab std ~25 like the others, a 512 forward takes 0.1-0.4 s."""
    return calibrated_checkpoint("small")


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """The published DDColor-T layout (ConvNeXt-T encoder), calibrated; ~220 MB."""
    return calibrated_checkpoint("tiny")


@pytest.fixture(scope="session")
def tiny_stress_checkpoint() -> Path:
    """DDColor-T whose FP32 encoder residual stream exceeds 70000 (fp16 max: 65504)."""
    return calibrated_checkpoint("tiny", stress="blocks")


@pytest.fixture(scope="session")
def large_checkpoint() -> Path:
    """The published DDColor-L layout (ConvNeXt-L encoder), calibrated; ~900 MB."""
    return calibrated_checkpoint("large")


@pytest.fixture(scope="session")
def fixture_photos() -> list[Path]:
    """The real photos in ../shared/fixtures; tests using them skip when the folder is absent."""
    photos = sorted(p for p in FIXTURES.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not photos:
        pytest.skip(f"no fixture photos in {FIXTURES}")
    return photos
