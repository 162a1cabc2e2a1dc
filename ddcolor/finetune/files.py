"""What a fine-tuning run writes beside its output checkpoint, always atomically.

For ``-o my_ddcolor.pth``: ``my_ddcolor_log.jsonl`` (every loss term of every
step, and each validation), ``my_ddcolor_validation.png`` (gray | start model |
now | truth), ``my_ddcolor_loss.png`` (the curves) and, while the run is
unfinished, ``my_ddcolor_snapshot.pt`` (what ``--resume`` continues from).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")


@dataclass(frozen=True)
class RunFiles:
    checkpoint: Path
    log: Path
    grid: Path
    curves: Path
    snapshot: Path

    @classmethod
    def beside(cls, checkpoint: Path, folder: Path | None = None) -> "RunFiles":
        """The run's files, named after ``checkpoint``, in ``folder`` (default: the checkpoint's)."""
        checkpoint = Path(checkpoint)
        stem = (Path(folder) if folder is not None else checkpoint.parent) / checkpoint.stem
        return cls(
            checkpoint=checkpoint,
            log=Path(f"{stem}_log.jsonl"),
            grid=Path(f"{stem}_validation.png"),
            curves=Path(f"{stem}_loss.png"),
            snapshot=Path(f"{stem}_snapshot.pt"),
        )


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary path)`` beside ``path``, then renamed over it: never half a file."""
    from ..output import atomic_path  # the one implementation (fsync, permissions, cleanup)

    with atomic_path(Path(path)) as temporary:
        write(temporary)
