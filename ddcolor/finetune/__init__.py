"""Fine-tuning DDColor on one's own color photos (``python -m ddcolor finetune``, the Fine-tune node).

* ``trainer``: ``finetune(FinetuneConfig, train_images, ...)``, the loop, snapshots and resume;
* ``trainable``: the network in training form (all, decoder only, LoRA), mixed precision, saving;
* ``losses``: the paper's losses and discriminator; ``data``: photos, crops, hold-out;
* ``report``: the log, the validation grid and loss curves; ``distributed``: torchrun (DDP).

Nothing imports this package at ``import ddcolor`` or when the node pack loads;
it is imported when a run starts.
"""

from __future__ import annotations

_LAZY = {
    "FinetuneConfig": "config",
    "FinetuneRun": "trainer",
    "FinetuneError": "trainer",
    "FinetuneResult": "trainer",
    "TrainingError": "trainer",
    "finetune": "trainer",
    "Photo": "data",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
