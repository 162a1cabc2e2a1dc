"""Fine-tuning DDColor on one's own color photos: one short loop for the command line and the node.

    from ddcolor.finetune import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(output="my_ddcolor.pth", steps=2000), train_images=photos)

Mixed precision is PyTorch's AMP recipe: FP32 master weights and optimizer
state, the forward under ``precision.autocast`` (which keeps normalization,
softmax and the ConvNeXt residual stream FP32), then
``scaler.scale(loss).backward()``, ``scaler.step``, ``scaler.update()``. The
loss is scaled in fp16 on every device (fp16 gradients underflow wherever they
are computed; on a CPU fp16 is emulated and slow, but it behaves the same); a
step whose gradients overflow is skipped and the scale lowered. bf16 and fp32
need no scaling; a step whose gradients are not finite is skipped there too.
Every skipped step is counted in the log. In fp16, the units whose tensors
would leave fp16's range compute in FP32 (``trainable.half_range_units``):
measured on the first batch, and again when a forward's loss is not finite,
after which that step is run again.

BatchNorm keeps the start model's statistics (its affine weights train): with
the few images per step that fit a card, batch statistics are noise, and they
would differ between data-parallel processes (SyncBatchNorm needs a GPU).

Order of work: every request is checked (options, the snapshot, the VGG
weights, the photos) before the model is loaded, so a mistake costs seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import read_state_dict, resolve_source
from ..color import colorfulness, delta_e_ciede2000, lab_to_rgb, rgb_to_lab
from ..model import SIZE_MULTIPLE
from ..pipeline import is_out_of_memory
from ..precision import TRAINING_PRECISIONS, autocast, training_precision
from . import trainable
from .config import TRAIN_CHOICES, FinetuneConfig, FinetuneError, TrainingError
from .data import Batch, Photo, PhotoSet, SampleOrder, Skipped, hold_out, photos_from_images, prepare, training_batch
from .distributed import Distributed
from .files import CHECKPOINT_SUFFIXES, RunFiles
from .losses import AdversarialLoss, Discriminator, PaperLosses, PerceptualWeightsMissing, enhance_colors
from .report import GRID_ROWS, History, draw_curves, draw_grid, summary_lines
from .snapshot import check_resumable, read_snapshot, restore_rng, resume_settings, write_snapshot

log = logging.getLogger("ddcolor")

# A run whose loss or gradients stay non-finite this long will not recover by itself.
MAX_SKIPPED_IN_A_ROW = 25


@dataclass
class FinetuneResult:
    checkpoint: Path | None  # None when stopped before the last step
    steps_done: int
    stopped: bool
    precision: str
    loss_history: dict[str, list[float]]  # "loss" (the total) and each term, per step
    validations: list[dict]  # {"step", "delta_e", "colorfulness", ...} per validation
    best_step: int | None  # the validation step with the lowest mean ΔE
    skipped_steps: int
    train_photos: int
    validation_photos: int
    skipped_photos: list[Skipped] = field(default_factory=list)
    files: RunFiles | None = None
    summary: list[str] = field(default_factory=list)


ImagesIn = Tensor | Sequence[Tensor] | Sequence[Photo]
Progress = Callable[[int, int, dict[str, float]], None]


def finetune(
    config: FinetuneConfig,
    train_images: ImagesIn,
    val_images: ImagesIn | None = None,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    say: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``train_images`` and write ``config.output``.

    Images are ComfyUI IMAGEs in [0, 1] (a (B, H, W, C) batch, or a list of them
    when sizes differ) or ``data.Photo`` s (the command line's files);
    without ``val_images`` a seeded share of the photos is held out.
    ``progress(step, steps, losses)`` is called after each step;
    ``should_stop()`` is asked before each: when it says so, a snapshot is
    written and the result comes back with ``stopped`` (``config.resume``
    continues from it). Under ``torchrun`` each process calls this the same way.
    """
    return FinetuneRun(config, train_images, val_images, say=say).train(progress=progress, should_stop=should_stop)


def _as_photos(images: ImagesIn) -> list[Photo]:
    images = images if isinstance(images, Tensor) else list(images)
    return list(images) if all(isinstance(image, Photo) for image in images) else photos_from_images(images)


def check_config(config: FinetuneConfig, world: int = 1) -> None:
    """Refuse impossible requests with the option to change, before any work."""

    def refuse(message: str) -> None:
        raise FinetuneError(message)

    if config.size < SIZE_MULTIPLE or config.size % SIZE_MULTIPLE:
        refuse(f"--size {config.size}: use a multiple of {SIZE_MULTIPLE} (256, the published models' training size, 384, 512, ...)")
    if config.steps <= 0:
        refuse(f"--steps {config.steps}: use 1 or more")
    if config.batch <= 0:
        refuse(f"--batch {config.batch}: use 1 or more")
    if config.batch % world:
        refuse(f"--batch {config.batch}: {world} processes share every batch equally; use a multiple of {world}")
    if not config.lr > 0:
        refuse(f"--lr {config.lr}: use a positive learning rate (1e-4 is the paper's)")
    if config.train not in TRAIN_CHOICES:
        refuse(f"--train {config.train}: use one of {', '.join(TRAIN_CHOICES)}")
    if config.precision not in TRAINING_PRECISIONS:
        refuse(f"--precision {config.precision}: use one of {', '.join(TRAINING_PRECISIONS)}")
    if config.train == "lora" and config.rank <= 0:
        refuse(f"--rank {config.rank}: a LoRA rank is 1 or more (8 is a common start)")
    if config.val_every < 0 or config.save_every < 0:
        refuse("--val-every and --save-every take a number of steps, 0 to turn them off")
    if config.gan and config.size < Discriminator.MIN_SIZE:
        refuse(f"--size {config.size}: the discriminator of --gan needs crops of at least {Discriminator.MIN_SIZE}")
    if Path(config.output).suffix.lower() not in CHECKPOINT_SUFFIXES:
        refuse(f"-o {config.output}: name the checkpoint .pth or .safetensors")


class FinetuneRun:
    """One run in two parts: checking everything and reading the photos (the constructor, which
    raises ``FinetuneError`` for any mistake), then ``train``. The command line fetches a
    published start model in between, so that a mistake never waits for a download."""

    def __init__(self, config: FinetuneConfig, train_images: ImagesIn, val_images: ImagesIn | None = None, *,
                 say: Callable[[str], None] | None = None):
        device = torch.device(config.device)
        self.dist = Distributed.from_environment(device)
        self.config, self.device = config, self.dist.device(device)
        self.say = (say or log.info) if self.dist.main else (lambda message: None)
        self.files = config.files()
        self.history = History()
        self.start_rgb: Tensor | None = None  # the start model's validation colors, for the grid
        self.saved_at: int | None = None  # the step of the snapshot on disk
        try:
            self.train_set, self.val_set, self.skipped, self.snapshot = self._check(
                _as_photos(train_images), None if val_images is None else _as_photos(val_images)
            )
        except BaseException:
            self.dist.close()
            raise

    # ------------------------------------------------------------------ before any work

    def _check(self, train_photos: list[Photo], val_photos: list[Photo] | None) -> tuple[PhotoSet, PhotoSet, list[Skipped], dict | None]:
        config = self.config
        check_config(config, self.dist.world)
        snapshot = read_snapshot(self.files.snapshot, resume=config.resume)
        try:
            self.precision = training_precision(config.precision, self.device)
        except ValueError as e:
            raise FinetuneError(f"--precision {config.precision}: {e}") from None
        try:
            self.losses = PaperLosses(perceptual=config.perceptual, gan=config.gan, autocast=self._autocast,
                                      checkpointing=config.checkpointing)
        except PerceptualWeightsMissing as e:
            raise FinetuneError(str(e)) from None
        photos, skipped = prepare(train_photos, config.size)
        if val_photos is None:
            train_indices, val_indices = hold_out(len(photos), config.seed)
            train_set, val_set = photos.subset(train_indices), photos.subset(val_indices)
        else:
            train_set = photos
            val_set, val_left_out = prepare(val_photos, config.size)
            skipped += [replace(item, validation=True) for item in val_left_out]
        if not len(train_set):
            counts = _count_reasons(skipped)
            raise FinetuneError(
                f"no color photos to train on ({counts or 'none given'}); fine-tuning learns colors from color photos"
            )
        if snapshot is not None:
            check_resumable(snapshot, resume_settings(config, self.precision), train_set.names, val_set.names)
        return train_set, val_set, skipped, snapshot

    # ------------------------------------------------------------------ the run

    def _autocast(self):
        return autocast(self.precision, self.device)

    def train(self, *, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> FinetuneResult:
        """Load the start model and train; see ``finetune``."""
        # Every random start (adapters, the discriminator) from the seed, the caller's generator untouched.
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.config.seed)
                return self._train(progress or (lambda *_: None), should_stop or (lambda: False))
        finally:
            self.dist.close()

    def _train(self, progress: Progress, should_stop: Callable[[], bool]) -> FinetuneResult:
        start, val = self._start()
        began = time.perf_counter()
        step, stopped = self._loop(start, val, progress, should_stop)
        self._finish(step, stopped, val)
        if step > start:
            elapsed = time.perf_counter() - began
            self.say(f"{step - start} step(s) in {elapsed:.1f} s ({elapsed / (step - start):.2f} s/step)")
        return self._result(step, stopped)

    def _start(self) -> tuple[int, Batch | None]:
        """Load the start model (and a snapshot), validate it; the first step and the validation batch."""
        config, say, snapshot = self.config, self.say, self.snapshot
        if self.skipped:
            say(f"left out {len(self.skipped)} photo(s): {_count_reasons(self.skipped)}")
            for item in self.skipped:
                if item.unreadable:
                    say(f"  {item.name}: {item.reason}")
        if self.dist.main and snapshot is None:  # a new log (a resumed one is rewritten from the snapshot)
            self.history.write_log(self.files.log)
        source = resolve_source(config.model, config.models_dir)
        model = trainable.trainable_model(
            read_state_dict(source), train=config.train, rank=config.rank, checkpointing=config.checkpointing, source=str(source)
        )
        self.trainer = Trainer(model.to(self.device), self.losses.to(self.device), config, self.precision, self.device, self.dist)
        start = 0 if snapshot is None else self._restore(snapshot)
        self.snapshot = snapshot = None  # restored: its copy of the weights and optimizer state can go
        if start:
            say(f"resumed at step {start} of {config.steps} from {self.files.snapshot}")
        say(
            f"fine-tuning {source.name} ({config.train}, {self.precision}) on {self.device}: {len(self.train_set)} photo(s), "
            f"{len(self.val_set)} for validation, {config.steps} steps of {config.batch} at {config.size}"
            + (f", {self.dist.world} processes" if self.dist.active else "")
        )
        if not len(self.val_set):
            say("no validation: a single photo is all training; give --val DIR to measure progress")
            return start, None
        val = Batch.from_rgb(self.val_set.crops(range(len(self.val_set)), None), "cpu")
        if start == 0:
            self._validate(0, val)
        return start, val

    def _loop(self, step: int, val: Batch | None, progress: Progress, should_stop: Callable[[], bool]) -> tuple[int, bool]:
        """Train from ``step`` until the last step or a stop request; the step reached and whether stopped."""
        config = self.config
        order = SampleOrder(len(self.train_set), config.seed)
        share = self.dist.share(config.batch)
        while step < config.steps:
            if self.dist.any(should_stop()):
                return step, True
            began = time.perf_counter()
            rgb = training_batch(self.train_set, order, step, config.batch, seed=config.seed, share=share)
            terms, skipped = self._step(Batch.from_rgb(rgb, self.device))
            step += 1
            losses = dict(zip(terms, self.dist.mean(torch.stack(list(terms.values()))).tolist()))
            record = self.history.record_step(step, losses, skipped=skipped, scale=self.trainer.loss_scale,
                                              seconds=time.perf_counter() - began)
            if self.dist.main:
                History.append_log(self.files.log, record)
                progress(step, config.steps, losses)
            if self.history.skipped_in_a_row() >= MAX_SKIPPED_IN_A_ROW:
                raise TrainingError(
                    f"the last {MAX_SKIPPED_IN_A_ROW} steps were all skipped (gradients or loss not finite in {self.precision}); "
                    "try --precision fp32 or a lower --lr (the last snapshot, if any, is kept)"
                )
            if val is not None and config.val_every and step % config.val_every == 0:
                self._validate(step, val)
            if config.save_every and step % config.save_every == 0 and step < config.steps:
                self._save_snapshot(step)
        return step, False

    def _step(self, batch: Batch) -> tuple[dict[str, Tensor], bool]:
        try:
            return self.trainer.step(batch)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            config = self.config
            raise TrainingError(
                f"out of memory on {self.device} at --batch {config.batch} --size {config.size} ({config.train}, {self.precision}); "
                "lower --batch or --size, add --checkpointing, train less (--train decoder or lora), or use --precision fp16 "
                "(the last snapshot, if any, is kept)"
            ) from e

    def _finish(self, step: int, stopped: bool, val: Batch | None) -> None:
        """Stopped: keep a snapshot of ``step``. Done: validate the last step and write the checkpoint."""
        if stopped:
            if self.saved_at != step:
                self._save_snapshot(step)
            self.say(f"stopped at step {step} of {self.config.steps}; snapshot {self.files.snapshot} (continue with --resume)")
        else:
            if val is not None and all(v["step"] != step for v in self.history.validations):
                self._validate(step, val)
            if self.dist.main:
                trainable.save_checkpoint(trainable.published_state_dict(self.trainer.module), self.config.output)
                self.files.snapshot.unlink(missing_ok=True)
        if self.dist.main:
            draw_curves(self.files.curves, self.history)
        self.dist.barrier()

    def _result(self, step: int, stopped: bool) -> FinetuneResult:
        best = self.history.best_validation()
        return FinetuneResult(
            checkpoint=None if stopped else Path(self.config.output),
            steps_done=step,
            stopped=stopped,
            precision=self.precision,
            loss_history=self.history.losses(),
            validations=self.history.validations,
            best_step=best["step"] if best else None,
            skipped_steps=self.history.skipped_steps,
            train_photos=len(self.train_set),
            validation_photos=len(self.val_set),
            skipped_photos=self.skipped,
            files=self.files,
            summary=summary_lines(self.history),
        )

    # ------------------------------------------------------------------ validation

    def _validate(self, step: int, val: Batch) -> None:
        """Mean ΔE to the true colors and colorfulness of the validation photos (rank 0 only).

        ``val`` stays on the CPU; a training batch of it at a time goes to the device."""
        if not self.dist.main:
            return
        first_run = self.start_rgb is None  # before training: also what gray and the truth score
        scores: dict[str, list[float]] = {"delta_e": [], "colorfulness": []}
        scores.update({"delta_e_gray": [], "colorfulness_true": []} if first_run else {})
        shown = []
        for part in val.split(self.config.batch):
            ab = self.trainer.predict(part.gray.to(self.device)).cpu()
            rgb = lab_to_rgb(torch.cat((part.lightness, ab), dim=1))
            truth = torch.cat((part.lightness, part.ab), dim=1)
            scores["delta_e"] += _delta_e_per_image(rgb, truth)
            scores["colorfulness"] += [colorfulness(image) for image in rgb]
            if first_run:
                scores["delta_e_gray"] += _delta_e_per_image(part.gray, truth)
                scores["colorfulness_true"] += [colorfulness(image) for image in part.rgb]
            shown.append(rgb[: GRID_ROWS - sum(len(r) for r in shown)])
        metrics = {name: float(np.mean(values)) for name, values in scores.items()}
        now = torch.cat(shown)
        if first_run:
            self.start_rgb = now
        record = self.history.record_validation(step, metrics)
        History.append_log(self.files.log, record)
        first = self.history.validations[0]
        self.say(
            f"validation at step {step}: mean ΔE {metrics['delta_e']:.2f} (start {first['delta_e']:.2f}, gray {first['delta_e_gray']:.2f}), "
            f"colorfulness {metrics['colorfulness']:.1f} (start {first['colorfulness']:.1f}, true {first['colorfulness_true']:.1f})"
        )
        rows = slice(0, GRID_ROWS)
        draw_grid(self.files.grid, {"gray": val.gray[rows], "start model": self.start_rgb, "step {step}": now, "truth": val.rgb[rows]}, step)
        draw_curves(self.files.curves, self.history)

    # ------------------------------------------------------------------ snapshots

    def _save_snapshot(self, step: int) -> None:
        self.saved_at = step
        if self.dist.main:
            write_snapshot(
                self.files.snapshot, step=step, settings=resume_settings(self.config, self.precision),
                train_photos=self.train_set.names, validation_photos=self.val_set.names,
                trainer=self.trainer.state_dict(), history=self.history.records, start_rgb=self.start_rgb,
            )

    def _restore(self, snapshot: dict) -> int:
        self.saved_at = int(snapshot["step"])
        self.trainer.load_state_dict(snapshot["trainer"])
        self.history = History(list(snapshot["history"]))
        self.start_rgb = snapshot["start_rgb"]
        restore_rng(snapshot["rng"])
        if self.dist.main:  # steps logged after the snapshot (before a crash) are dropped
            self.history.write_log(self.files.log)
        return self.saved_at


class Trainer:
    """The model, its optimizer and loss scaler, the losses (and with --gan the discriminator): one step at a time."""

    def __init__(self, model: nn.Module, losses: PaperLosses, config: FinetuneConfig, precision: str,
                 device: torch.device, dist: Distributed):
        self.module, self.losses, self.precision, self.device, self.dist = model, losses, precision, device, dist
        set_training(model)
        self.model = _data_parallel(model, device) if dist.active else model
        self.parameters = trainable.trainable_parameters(model)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas)
        self.scaler = torch.amp.GradScaler(device.type, init_scale=config.initial_loss_scale, enabled=precision == "fp16")
        self.half_range_measured = False  # fp16: see _keep_half_range
        self.discriminator = self.critic = None
        if config.gan:  # the authors' discriminator optimizer: Adam, no weight decay
            self.discriminator = Discriminator().to(device).train()
            self.critic = _data_parallel(self.discriminator, device) if dist.active else self.discriminator
            self.critic_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=config.betas)

    def _autocast(self):
        return autocast(self.precision, self.device)

    @property
    def loss_scale(self) -> float:
        return float(self.scaler.get_scale())

    def step(self, batch: Batch) -> tuple[dict[str, Tensor], bool]:
        """One optimizer step; the loss terms (``loss`` their sum) and whether the step was skipped."""
        if self.precision == "fp16" and not self.half_range_measured:
            self._keep_half_range(batch.gray)
        self.optimizer.zero_grad(set_to_none=True)
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)  # the generator's turn: D only judges
        while True:
            with self._autocast():
                ab = self.model(batch.gray)
            terms, rgb = self.losses(ab, batch.lightness, batch.rgb, batch.ab, self.discriminator)
            total = sum(terms.values())
            # Decided by all processes together: each runs the same forwards (DDP's are collective).
            if self.precision != "fp16" or not self.dist.any(not bool(torch.isfinite(total))):
                break
            if not self.dist.any(self._keep_half_range(batch.gray)):
                break
        self.scaler.scale(total).backward()
        stepped = self._apply(self.optimizer, self.parameters)
        if self.discriminator is not None:
            terms["d"] = self._discriminator_step(rgb.detach(), enhance_colors(batch.rgb))
        self.scaler.update()
        return {"loss": total.detach(), **{name: value.detach() for name, value in terms.items()}}, not stepped

    def _keep_half_range(self, gray: Tensor) -> bool:
        """Run in FP32 the units that would leave fp16's range on ``gray``; whether there were new ones."""
        self.half_range_measured = True
        new = [u for u in trainable.half_range_units(self.module, gray) if u not in self.module.fp32_units]
        trainable.compute_in_fp32(self.module, new)
        if new:
            log.info("ddcolor: %d unit(s) would leave fp16's range, computed in fp32: %s", len(new), ", ".join(new))
        return bool(new)

    def _apply(self, optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter]) -> bool:
        """Step ``optimizer`` unless its gradients are not finite; whether it stepped."""
        self.scaler.unscale_(optimizer)  # a no-op unless scaling (fp16)
        grads = [p.grad for p in parameters if p.grad is not None]
        finite = bool(torch.stack([g.isfinite().all() for g in grads]).all()) if grads else True
        if finite or self.scaler.is_enabled():
            self.scaler.step(optimizer)  # skips the update itself when fp16 gradients overflowed
        return finite

    def _discriminator_step(self, fake: Tensor, real: Tensor) -> Tensor:
        self.discriminator.requires_grad_(True)
        self.critic_optimizer.zero_grad(set_to_none=True)
        with self._autocast():  # one forward for both halves: D has no batch statistics
            logits = self.critic(torch.cat((real, fake)))
        loss = AdversarialLoss.discriminator_loss(*logits.split(real.shape[0]))
        self.scaler.scale(loss).backward()
        self._apply(self.critic_optimizer, list(self.discriminator.parameters()))
        return loss.detach()

    @torch.no_grad()
    def predict(self, gray: Tensor) -> Tensor:
        """ab for ``gray`` in eval mode (spectral norms as stored, no power iteration)."""
        self.module.eval()
        try:
            with self._autocast():
                return self.module(gray).float()
        finally:
            set_training(self.module)

    def state_dict(self) -> dict:
        state = {
            "model": trainable_state(self.module),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": None,  # the learning rate is constant
            "fp32_units": list(self.module.fp32_units),
        }
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["discriminator_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        frozen = {name for name, p in self.module.named_parameters() if not p.requires_grad}
        missing, unexpected = self.module.load_state_dict(state["model"], strict=False)
        if unexpected or set(missing) - frozen:
            raise FinetuneError(f"--resume: the snapshot's model does not match ({(unexpected or sorted(set(missing) - frozen))[:3]}); delete it to start over")
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if "fp32_units" in state:  # as measured before the snapshot: the run continues the same
            trainable.compute_in_fp32(self.module, state["fp32_units"])
            self.half_range_measured = True
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.critic_optimizer.load_state_dict(state["discriminator_optimizer"])


def set_training(model: nn.Module) -> None:
    """Train mode, with BatchNorm statistics frozen (see the module docstring)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """What training changes: the trained parameters and every buffer (spectral-norm vectors among them).

    Frozen weights are not stored: a resumed run reads them from the start model again.
    """
    keep = {name for name, p in model.named_parameters() if p.requires_grad} | {name for name, _ in model.named_buffers()}
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items() if name in keep}


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # Depthwise conv weights (C, 1, k, k): a size-1 dimension's stride differs between the
    # gradient and DDP's bucket, which changes nothing; PyTorch warns about it at every step.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

    # Every trained parameter gets a gradient at every step (trainable_model freezes ConvNeXt's
    # unused final norm), so DDP need not search the graph for unused ones.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _delta_e_per_image(rgb: Tensor, truth_lab: Tensor) -> list[float]:
    return delta_e_ciede2000(rgb_to_lab(rgb), truth_lab).mean(dim=(-2, -1)).tolist()


def _count_reasons(skipped: list[Skipped]) -> str:
    counts: dict[str, int] = {}
    for item in skipped:
        kind = ("validation: " if item.validation else "") + ("unreadable" if item.unreadable else "grayscale")
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{count} {kind}" for kind, count in counts.items())
