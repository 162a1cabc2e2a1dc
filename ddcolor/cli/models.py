"""The model a command runs: its device, and a published checkpoint fetched with a progress bar."""

from __future__ import annotations

import sys
from pathlib import Path

from .batch import UsageError


def resolve_device(name: str) -> str:
    """``--device``: auto (CUDA, else MPS, else the CPU), cpu, cuda, cuda:N or mps, checked against this machine."""
    import torch

    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: PyTorch {torch.__version__} sees no CUDA GPU here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible (cuda:0..)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: Apple MPS is not available here; use --device cpu")
    return str(device)


def fetch_if_published(model: str, models_dir: Path, source: str | None = None) -> None:
    """Download ``model`` (from ``source``, see ``--source``) with a progress bar if it names a published model not yet in ``models_dir``."""
    import ddcolor

    published = ddcolor.published_entry(model)
    if published and not Path(model).exists() and not (models_dir / published.filename).is_file():
        print(f"{published.name}: first use, downloading {published.url(source)} into {models_dir}", file=sys.stderr, flush=True)
        download_with_progress(published.name, models_dir, source)


def download_with_progress(name: str, folder: Path, source: str | None = None) -> Path:
    """``ddcolor.download`` (from ``source``, see ``--source``) with a byte progress bar on a terminal."""
    import ddcolor

    from .batch import terminal_bar

    bar, started = None, False

    def report(done: int, total: int) -> None:
        nonlocal bar, started
        if not started:  # created on the first report: a resumed download starts part-way
            bar, started = terminal_bar(sys.stderr, total=total, unit="B", unit_scale=True, desc=name), True
        if bar is not None:
            bar.update(done - bar.n)

    try:
        return ddcolor.download(name, folder, progress=report, source=source)
    finally:
        if bar is not None:
            bar.close()
