"""What a fine-tuning run is asked to do, and the errors it stops with (kept apart from the
training code so that the command line can build its options without importing it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .files import RunFiles

TRAIN_CHOICES = ("all", "decoder", "lora")


@dataclass
class FinetuneConfig:
    output: Path  # the checkpoint to write: .pth or .safetensors
    model: str = "ddcolor_modelscope"  # start from: a published name or a checkpoint path
    models_dir: Path | None = None  # where published models are kept
    steps: int = 2000
    batch: int = 4
    size: int = 256  # training crop, a multiple of 32 (the published models trained at 256)
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    precision: str = "auto"
    train: str = "all"  # all, decoder (encoder frozen) or lora
    rank: int = 8  # LoRA rank
    checkpointing: bool = False
    val_every: int = 200  # 0: only before and after training
    save_every: int = 200  # 0: a snapshot only when stopped
    resume: bool = False
    seed: int = 0
    device: str = "cpu"
    perceptual: bool = True
    gan: bool = False
    initial_loss_scale: float = 2.0**16  # fp16 only (torch's default)
    reports_dir: Path | None = None  # where the log, PNGs and snapshot go (default: beside output)

    def files(self) -> RunFiles:
        return RunFiles.beside(Path(self.output), self.reports_dir)


class FinetuneError(ValueError):
    """A request that cannot be trained; the message names the option or file to change. Nothing was done."""


class TrainingError(RuntimeError):
    """Training failed part-way (out of memory, a loss that stays non-finite); the message says what to try."""
