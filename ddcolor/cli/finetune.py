"""``python -m ddcolor finetune PHOTOS... -o my_ddcolor.pth``: fine-tune DDColor on your color photos.

    python -m ddcolor finetune family_album/ -r -o my_ddcolor.pth --steps 2000
    python -m ddcolor finetune scans/ -o my_ddcolor.pth --resume            # after Ctrl-C or a crash
    torchrun --nproc_per_node 2 -m ddcolor finetune scans/ -o my_ddcolor.pth --batch 8

Photos are taken as ``colorize`` takes them (files, folders, -r, globs); the
training code is imported only when this command runs. Exit status as the
other commands: 0 done, 1 a model or training failure, 2 a usage error
(nothing was done), 130 stopped by Ctrl-C (a snapshot is kept: run again with --resume).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from functools import partial
from pathlib import Path

from .batch import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Progress, StopRequest, UsageError, find_inputs, refuse_uris

# How many recent steps the seconds-per-step estimate averages.
RATE_WINDOW = 20
# Without a terminal (logs, CI) about this many progress lines per run.
PROGRESS_LINES = 50


def add_finetune_parser(commands, *, default_model: str, published: str) -> None:
    from .. import TRAINING_PRECISIONS
    from ..finetune import TRAIN_CHOICES, FinetuneConfig

    default = FinetuneConfig(output=Path("unused"))
    f = commands.add_parser(
        "finetune", help="fine-tune a model on your color photos",
        description="Fine-tune DDColor on your own color photos (the paper's losses, mixed precision on GPUs and "
        "on CPUs with bf16 units) and write a checkpoint every DDColor tool loads. Ctrl-C stops at the next step and keeps a snapshot for --resume.",
    )
    f.set_defaults(command=cmd_finetune)
    f.add_argument("inputs", nargs="+", metavar="PHOTOS", help="color photos: files, folders or glob patterns ('album/*.jpg'); gray ones are skipped")
    f.add_argument("-o", "--output", type=Path, required=True, metavar="CHECKPOINT", help="the fine-tuned checkpoint to write (.pth or .safetensors); the log, validation grid, loss curves and snapshot go beside it")
    f.add_argument("-r", "--recursive", action="store_true", help="also take photos in subfolders of folder inputs (and of --val)")
    f.add_argument("--model", default=default_model, help=f"start from: a published name ({published}) or a checkpoint path (default: %(default)s)")
    f.add_argument("--models-dir", type=Path, help="where published models are kept (default: see `python -m ddcolor info`)")
    f.add_argument("--steps", type=int, default=default.steps, help="optimizer steps (default: %(default)s)")
    f.add_argument("--batch", type=int, default=default.batch, help="photos per step, over all processes (default: %(default)s)")
    f.add_argument("--size", type=int, default=default.size, help="training crop, a multiple of 32 (default: %(default)s, as the published models were trained)")
    f.add_argument("--lr", type=float, default=default.lr, help="AdamW learning rate (default: %(default)g; weight decay 0.01, betas 0.9, 0.99 as in the paper)")
    f.add_argument("--precision", default=default.precision, choices=TRAINING_PRECISIONS, help="compute precision; weights and optimizer state stay FP32 (default: %(default)s: fp16 with dynamic loss scaling on a GPU, bf16 on a CPU with bf16 units, else fp32)")
    f.add_argument("--train", default=default.train, choices=TRAIN_CHOICES, help="what is trained: all, decoder (encoder frozen, less memory) or lora (low-rank adapters, merged on save) (default: %(default)s)")
    f.add_argument("--rank", type=int, default=default.rank, help="LoRA rank with --train lora (default: %(default)s)")
    f.add_argument("--checkpointing", action="store_true", help="gradient checkpointing: recompute activations in the backward pass to save memory")
    f.add_argument("--val", metavar="DIR", help="validation photos (default: a fixed share of PHOTOS is held out)")
    f.add_argument("--val-every", type=int, default=default.val_every, metavar="N", help="validate every N steps, 0 only before and after (default: %(default)s)")
    f.add_argument("--save-every", type=int, default=default.save_every, metavar="N", help="write a snapshot every N steps, 0 only when stopped (default: %(default)s)")
    f.add_argument("--resume", action="store_true", help="continue the unfinished run whose snapshot is beside -o")
    f.add_argument("--seed", type=int, default=default.seed, help="seed of the hold-out, data order, crops and flips (default: %(default)s)")
    f.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: %(default)s; under torchrun each process takes cuda:LOCAL_RANK)")
    f.add_argument("--perceptual", action=argparse.BooleanOptionalAction, default=default.perceptual, help="the VGG16-bn perceptual loss; needs torchvision's ImageNet weights in torch's cache (default: on)")
    f.add_argument("--gan", action="store_true", help="add the paper's adversarial loss and discriminator")


def cmd_finetune(args: argparse.Namespace) -> int:
    from .. import CheckpointError, DownloadError, default_models_dir
    from ..finetune import FinetuneConfig, FinetuneError, FinetuneRun, TrainingError
    from .models import fetch_if_published, resolve_device

    refuse_uris(*args.inputs, args.output, args.val)
    main_process = int(os.environ.get("RANK", "0")) == 0
    say = (lambda message: print(message, file=sys.stderr, flush=True)) if main_process else (lambda message: None)

    models_dir = args.models_dir or default_models_dir()
    config = FinetuneConfig(
        output=args.output, model=args.model, models_dir=models_dir, steps=args.steps, batch=args.batch, size=args.size,
        lr=args.lr, precision=args.precision, train=args.train, rank=args.rank, checkpointing=args.checkpointing,
        val_every=args.val_every, save_every=args.save_every, resume=args.resume, seed=args.seed,
        device=resolve_device(args.device), perceptual=args.perceptual, gan=args.gan,
    )
    train_photos = photos_from_files(args.inputs, recursive=args.recursive)
    val_photos = photos_from_files([args.val], recursive=args.recursive) if args.val else None
    try:
        run = FinetuneRun(config, train_photos, val_photos, say=say)
    except FinetuneError as e:
        raise UsageError(str(e)) from None
    try:
        if main_process:
            fetch_if_published(args.model, models_dir)
        progress = StepProgress(args.steps) if main_process else None
        try:
            with StopRequest(say, notice="stopping after this step; a snapshot is kept for --resume") as stop:
                result = run.train(progress=progress, should_stop=lambda: stop.requested)
        finally:
            if progress is not None:
                progress.close()
    except (CheckpointError, DownloadError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    for line in result.summary:
        say(line)
    if result.stopped:
        return EXIT_INTERRUPTED
    files = result.files
    say(f"wrote {result.checkpoint} (log {files.log.name}, curves {files.curves.name}"
        + (f", validation grid {files.grid.name})" if result.validations else ")"))
    return EXIT_OK


def photos_from_files(patterns: list[str], *, recursive: bool = False) -> list:
    """The training photos that files, folders and globs name, as ``colorize`` finds them.

    Each is named by its absolute path: a snapshot knows its photos by name, and
    ``--resume`` may run from another folder."""
    from ..finetune import Photo
    from .imageio import read_image

    return [Photo(str(path.resolve()), partial(read_image, path)) for path, _ in find_inputs(patterns, recursive=recursive)]


class StepProgress:
    """The bar for training steps: step, loss, seconds per step and time left."""

    def __init__(self, steps: int):
        self._bar: Progress | None = None
        self._times: collections.deque[tuple[int, float]] = collections.deque(maxlen=RATE_WINDOW + 1)
        self._every = max(1, steps // PROGRESS_LINES)

    def __call__(self, step: int, steps: int, losses: dict[str, float]) -> None:
        now = time.perf_counter()
        if self._bar is None:  # created at the first step: a resumed run starts part-way
            self._bar = Progress(steps, unit="step", done=step - 1)
        self._times.append((step, now))
        (first_step, first_time), (last_step, last_time) = self._times[0], self._times[-1]
        per_step = (last_time - first_time) / (last_step - first_step) if last_step > first_step else float("nan")
        left = per_step * (steps - step)
        terms = " ".join(f"{name} {value:.3g}" for name, value in losses.items() if name != "loss")
        timing = f"{per_step:.2f} s/step, {format_duration(left)} left" if per_step == per_step else "timing..."
        note = f"loss {losses['loss']:.4g}, {timing}"
        line = f"[step {step}/{steps}] loss {losses['loss']:.4g} ({terms}), {timing}"
        self._bar.advance(note, line if step % self._every == 0 or step == steps else None)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"

