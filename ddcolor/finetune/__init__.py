"""Fine-tuning DDColor. Imported on demand only (never by ``ddcolor`` or the node pack at import).

Model side: ``trainable_model`` (a DDColor that trains as the original does),
``trainable_parameters``, ``published_state_dict`` and ``save_checkpoint``
(ddcolor/finetune/trainable.py). The training precision policy,
``training_precision`` and ``autocast``, lives with the inference one in
ddcolor/precision.py.
"""

from ..precision import autocast, training_precision
from .trainable import published_state_dict, save_checkpoint, trainable_model, trainable_parameters

__all__ = ["autocast", "published_state_dict", "save_checkpoint", "trainable_model", "trainable_parameters", "training_precision"]
