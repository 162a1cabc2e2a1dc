"""Fine-tuning DDColor on one's own color photos (``python -m ddcolor finetune``, the Fine-tune node).

Imported on demand only: never by ``ddcolor`` or the node pack at import, and
the names below load their module when first used, so the command line can
build its options (``config``) without importing the training code.

* ``trainer``: ``finetune(FinetuneConfig, train_images, ...)``, the loop, snapshots and resume;
* ``trainable``: a DDColor that trains as the original does (all, decoder only, LoRA),
  ``published_state_dict`` and ``save_checkpoint``; the training precision policy,
  ``training_precision`` and ``autocast``, lives with the inference one in ddcolor/precision.py;
* ``losses``: the paper's losses and discriminator; ``data``: photos, crops, hold-out;
* ``report``: the log, the validation grid and loss curves; ``distributed``: torchrun (DDP).
"""

from __future__ import annotations

_LAZY = {
    "FinetuneConfig": ".config",
    "FinetuneError": ".config",
    "FinetuneResult": ".trainer",
    "FinetuneRun": ".trainer",
    "TrainingError": ".config",
    "finetune": ".trainer",
    "Photo": ".data",
    "TRAIN_CHOICES": ".config",
    "published_state_dict": ".trainable",
    "save_checkpoint": ".trainable",
    "trainable_model": ".trainable",
    "trainable_parameters": ".trainable",
    "autocast": "..precision",
    "training_precision": "..precision",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
