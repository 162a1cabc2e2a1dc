"""Snapshots: everything a stopped or crashed run needs to continue as if never stopped.

A snapshot holds the trained parameters and every buffer (frozen weights are
read from the start model again), the optimizer, loss scaler and scheduler
states, the step, the photos by name (with the seed they fix the data order,
crops and flips), the history and every random generator's state. It is
written atomically beside the output and read with ``weights_only=True``.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .config import FinetuneConfig, FinetuneError
from .files import write_atomically

SNAPSHOT_FORMAT = 1
# What a resumed run must share with the snapshot to continue the same sequence.
RESUME_MUST_MATCH = ("size", "batch", "seed", "train", "rank", "lr", "weight_decay", "betas", "perceptual", "gan")


def read_snapshot(path: Path, *, resume: bool) -> dict | None:
    """The snapshot to resume from (None for a new run); refuses to overwrite an unfinished run."""
    if not resume:
        if path.exists():
            raise FinetuneError(f"{path} holds an unfinished run; pass --resume to continue it, or delete it to start over")
        return None
    if not path.is_file():
        raise FinetuneError(f"--resume: no snapshot at {path} (it is written every --save-every steps and when stopped)")
    try:
        snapshot = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FinetuneError(f"--resume: {path} cannot be read ({type(e).__name__}: {e}); delete it to start over") from e
    if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT:
        raise FinetuneError(f"--resume: {path} is not a snapshot of this version's fine-tuning; delete it to start over")
    return snapshot


def check_resumable(snapshot: dict, settings: dict, train_photos: list[str], validation_photos: list[str]) -> None:
    """Refuse a resume whose settings or photos would not continue the same run."""
    saved = snapshot["config"]
    changed = [f"{name} {saved.get(name)} -> {value}" for name, value in settings.items() if saved.get(name) != value]
    if changed:
        raise FinetuneError(
            f"--resume: the snapshot was made with other settings ({'; '.join(changed)}); "
            "resume with the same ones (only --steps, --val-every, --save-every may change)"
        )
    if snapshot["train_photos"] != train_photos or snapshot["validation_photos"] != validation_photos:
        raise FinetuneError("--resume: the photos differ from the snapshot's; resume with the same inputs (and --val)")


def resume_settings(config: FinetuneConfig, precision: str) -> dict:
    settings = {name: value for name, value in asdict(config).items() if name in RESUME_MUST_MATCH}
    settings["betas"] = list(settings["betas"])
    settings["precision"] = precision
    settings["model"] = str(config.model)
    return settings


def write_snapshot(path: Path, *, step: int, settings: dict, train_photos: list[str], validation_photos: list[str],
                   trainer: dict, history: list[dict], start_rgb: Tensor | None) -> None:
    snapshot = {
        "format": SNAPSHOT_FORMAT,
        "step": step,
        "config": settings,
        "train_photos": train_photos,
        "validation_photos": validation_photos,
        "trainer": trainer,
        "history": history,
        "start_rgb": start_rgb,
        "rng": _rng_states(),
    }
    write_atomically(path, lambda temporary: torch.save(snapshot, temporary))


def _rng_states() -> dict:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
    }


def restore_rng(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(_as_tuples(states["python"]))
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))


def _as_tuples(value):
    """random.setstate wants the tuples that torch.load may give back as lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value

