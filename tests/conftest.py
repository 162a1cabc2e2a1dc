"""Shared fixtures (the helpers behind them live in tests/support.py, which benchmarks may import)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import FIXTURES, calibrated_checkpoint


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
