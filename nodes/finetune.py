"""The ``DDColor-finetune`` node: a thin ComfyUI adapter over ``ddcolor.finetune``.

It trains on an IMAGE batch (or the list a dataset loader gives), writes the
checkpoint into models/ddcolor, where DDColor Colorize lists it, and outputs
the LOSS_MAP that the core "Plot Loss Graph" node draws. The run's log,
validation grid, loss curves and, while unfinished, its snapshot go to
output/ddcolor_finetune/: beside the checkpoint a snapshot (.pt) would be
listed as a model. Cancel stops at the next step and keeps the snapshot;
queueing the same inputs again continues from it.

The training code is imported when the node runs, never when the pack is
imported; ComfyUI modules likewise, so the pack imports without a ComfyUI.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..ddcolor import DEFAULT_MODEL, PUBLISHED, TRAINING_PRECISIONS
from .models import FOLDER_NAME, checkpoint_files, download_progress, locate_checkpoint, model_choices
from .schema import COMBO, Input, NodeSpec, Output

log = logging.getLogger("ddcolor")

# Under ComfyUI's output folder: the run's log, PNGs and snapshot.
REPORTS_FOLDER = "ddcolor_finetune"
DEFAULT_FILE_NAME = "my_ddcolor.pth"
# A name without one of these endings gets ".pth".
SAVED_SUFFIXES = (".pth", ".safetensors")

DESCRIPTION = (
    "Fine-tunes DDColor on your own color photos (a film stock, a region, an era, a collection) with the "
    "paper's losses, in mixed precision on GPUs and on CPUs with bf16 units, and writes a checkpoint into "
    "models/ddcolor that DDColor Colorize lists (press R to refresh the list). Connect an IMAGE batch of color "
    "photos, e.g. from Load Image Dataset from Folder; gray photos are skipped. The loss output goes to Plot Loss Graph. Cancel stops at "
    "the next step and keeps a snapshot: queue again with the same inputs to continue. The log, a "
    "validation grid and the loss curves are written to output/ddcolor_finetune/."
)
TOOLTIPS = {
    "images": (
        "Color photos to learn from (a batch or a list of any sizes): they are scaled so their short side is "
        "size and cropped at random. Gray photos are skipped. A tenth of them (at least one) is held out to "
        "measure progress (mean color difference to the truth, in the log and the grid)."
    ),
    "model": (
        "The model to start from: a published DDColor model (downloaded into models/ddcolor on first use) or "
        "any checkpoint in models/ddcolor, a fine-tuned one included."
    ),
    "steps": "Optimizer steps; the log and the validation grid in output/ddcolor_finetune/ show how far the colors have come.",
    "batch": "Photos per step. More is steadier but takes more memory (the README's fine-tuning section has a memory table).",
    "size": (
        "Training crop (a square, multiple of 32). The published models were trained at 256; each doubling "
        "has 4x the pixels, so about 4x the activation memory and time."
    ),
    "learning_rate": "AdamW learning rate (the paper's: 0.0001, weight decay 0.01). Lower it (e.g. 0.00002) for a gentle adaptation.",
    "precision": (
        "Compute precision; the weights and optimizer state stay fp32. auto: fp16 with dynamic loss scaling on a "
        "GPU, bf16 on a CPU with bf16 units (AMX or AVX-512 bf16), else fp32. fp16 on a CPU is very slow."
    ),
    "train": (
        "What is trained. all: the whole network (the paper). decoder: the encoder stays frozen, less memory. "
        "lora: small low-rank adapters on the encoder's MLPs and the decoder, least memory; merged into the "
        "weights on save, so the result is an ordinary checkpoint."
    ),
    "gradient_checkpointing": "Recompute activations in the backward pass instead of keeping them: less memory, slower steps.",
    "seed": "Seed of the hold-out, the order of the photos, the crops and flips: the same seed and inputs train the same model.",
    "file_name": (
        "Name of the new checkpoint in models/ddcolor (a plain file name; .pth is added unless it ends in .pth "
        "or .safetensors). A published model's name is refused."
    ),
    "perceptual": (
        "The paper's VGG16-bn perceptual loss. It needs torchvision's ImageNet weights (vgg16_bn-6c64b313.pth) "
        "in torch's cache (hub/checkpoints/); nothing is downloaded. Off: train with the pixel and colorfulness losses only."
    ),
    "overwrite": "Replace a checkpoint of the same name in models/ddcolor. Off: a name that exists is an error, and nothing is trained.",
    "loss": "The total loss of every step ({\"loss\": [...]}), for Plot Loss Graph.",
}

# The command line's options named in the library's messages, as this node's widgets.
WIDGETS_OF_OPTIONS = {
    "--steps": "steps", "--batch": "batch", "--size": "size", "--lr": "learning_rate", "--precision": "precision",
    "--train": "train", "--checkpointing": "gradient_checkpointing", "--seed": "seed",
    "--no-perceptual": "perceptual off", "--perceptual": "perceptual", "-o": "file_name",
}


def finetune_inputs() -> list[Input]:
    from ..ddcolor.finetune import TRAIN_CHOICES, FinetuneConfig

    default = FinetuneConfig(output=Path(DEFAULT_FILE_NAME))
    return [
        Input("images", "IMAGE", TOOLTIPS["images"]),
        Input("model", COMBO, TOOLTIPS["model"], choices=model_choices(checkpoint_files()), default=DEFAULT_MODEL),
        Input("steps", "INT", TOOLTIPS["steps"], default=500, min=1, max=100_000),
        Input("batch", "INT", TOOLTIPS["batch"], default=default.batch, min=1, max=64),
        Input("size", "INT", TOOLTIPS["size"], default=default.size, min=64, max=1024, step=32),
        Input("learning_rate", "FLOAT", TOOLTIPS["learning_rate"], default=default.lr, min=1e-7, max=1e-2, step=1e-6),
        Input("precision", COMBO, TOOLTIPS["precision"], choices=list(TRAINING_PRECISIONS), default=default.precision),
        Input("train", COMBO, TOOLTIPS["train"], choices=list(TRAIN_CHOICES), default=default.train),
        Input("gradient_checkpointing", "BOOLEAN", TOOLTIPS["gradient_checkpointing"], default=default.checkpointing),
        # A fixed seed: the frontend's "randomize" would retrain on every queue.
        Input("seed", "INT", TOOLTIPS["seed"], default=default.seed, min=0, max=2**31 - 1, control_after_generate=False),
        Input("file_name", "STRING", TOOLTIPS["file_name"], default=DEFAULT_FILE_NAME),
        Input("perceptual", "BOOLEAN", TOOLTIPS["perceptual"], default=default.perceptual),
        Input("overwrite", "BOOLEAN", TOOLTIPS["overwrite"], default=False),
    ]


def finetune(images, **widgets):
    import torch

    # ComfyUI runs nodes under torch.inference_mode(); training needs autograd, and tensors
    # made under inference mode cannot be saved for a backward pass (core Train LoRA does the same).
    with torch.inference_mode(False):
        return _finetune(images, {name: values[0] for name, values in widgets.items()})  # INPUT_IS_LIST


def _finetune(images: list, settings: dict):
    import comfy.model_management as mm
    import folder_paths

    from ..ddcolor.finetune import FinetuneConfig, FinetuneError, FinetuneRun, TrainingError

    mm.throw_exception_if_processing_interrupted()
    if not images or all(batch.shape[0] == 0 for batch in images):
        raise ValueError("images: the batch is empty; connect color photos (e.g. Load Image Dataset from Folder)")
    folders = folder_paths.get_folder_paths(FOLDER_NAME)
    output = Path(folders[0]) / checkpoint_name(settings["file_name"])
    if output.exists() and not settings["overwrite"]:
        raise ValueError(
            f"file_name: {output.name} already exists in {output.parent}; choose another file_name, or turn overwrite on to replace it"
        )
    config = FinetuneConfig(
        output=output, model=str(locate_checkpoint(settings["model"], folders, fetch=False)),
        steps=settings["steps"], batch=settings["batch"], size=settings["size"], lr=settings["learning_rate"],
        precision=settings["precision"], train=settings["train"], checkpointing=settings["gradient_checkpointing"],
        seed=settings["seed"], perceptual=settings["perceptual"], device=str(mm.get_torch_device()),
        reports_dir=Path(folder_paths.get_output_directory()) / REPORTS_FOLDER,
    )
    config.resume = config.files().snapshot.is_file()  # a cancelled run of this name continues
    try:
        run = FinetuneRun(config, images, say=lambda message: log.info("ddcolor finetune: %s", message))
    except FinetuneError as e:
        raise ValueError(_refusal(e, config)) from None
    # Every request checked: now a missing published start model is worth its download.
    locate_checkpoint(settings["model"], folders, download_progress())

    mm.unload_all_models()  # training needs the device's memory to itself
    steps = StepProgress(config.steps)
    try:
        result = run.train(progress=steps, should_stop=steps.should_stop)
    except TrainingError as e:
        raise RuntimeError(in_widget_terms(str(e))) from None
    finally:
        mm.soft_empty_cache()
    if result.stopped:
        log.info("ddcolor finetune: cancelled at step %d; queue the same inputs again to continue", result.steps_done)
        mm.throw_exception_if_processing_interrupted()
        raise mm.InterruptProcessingException()  # the flag was cleared elsewhere: still a cancel
    for line in result.summary:
        log.info("ddcolor finetune: %s", line)
    log.info("ddcolor finetune: wrote %s (choose %s in DDColor Colorize's model after pressing R)", output, output.name)
    return {"ui": {"images": _shown(result.files)}, "result": (loss_map(result.loss_history),)}


def checkpoint_name(file_name: str) -> str:
    """The checkpoint's file name in models/ddcolor for the ``file_name`` widget, or ValueError naming it."""
    name = file_name.strip()
    if not name or name != PurePosixPath(name).name or name != PureWindowsPath(name).name or name in (".", ".."):
        raise ValueError(f"file_name {file_name!r}: give a plain file name such as {DEFAULT_FILE_NAME} (no folders)")
    if name.startswith("."):
        raise ValueError(f"file_name {file_name!r}: a name starting with '.' would be hidden from DDColor Colorize's list")
    if not name.lower().endswith(SAVED_SUFFIXES):
        name += ".pth"
    if name in {entry.filename for entry in PUBLISHED.values()}:
        raise ValueError(f"file_name {name}: that is a published model's file; choose another name, such as {DEFAULT_FILE_NAME}")
    return name


def loss_map(history: dict[str, list[float]]) -> dict[str, list[float]]:
    """Plot Loss Graph's input: the total loss per step (non-finite steps, which were skipped, left out)."""
    return {"loss": [value for value in history["loss"] if math.isfinite(value)]}


def in_widget_terms(message: str) -> str:
    """A library message with the command line's option names replaced by this node's widget names."""
    return re.sub(r"(?<![\w-])-(-[a-z][a-z-]*|o)\b", lambda m: WIDGETS_OF_OPTIONS.get(m.group(0), m.group(0)), message)


def _refusal(error: Exception, config) -> str:
    message = in_widget_terms(str(error))
    if config.resume and message.startswith("--resume"):  # here a kept snapshot is continued by itself
        return (
            f"{config.files().snapshot} holds a stopped run of {Path(config.output).name} that these inputs cannot continue "
            f"({message.removeprefix('--resume: ')}). Queue it with the same photos and settings to continue it, "
            "or delete that file (or choose another file_name) to start over"
        )
    return message


class StepProgress:
    """The node's bar, one step at a time, and Cancel as ComfyUI signals it: its interrupt flag, or the
    exception its progress hook raises (clearing the flag). Caught here, that exception would otherwise
    end the run mid-loop without a snapshot; noted, the run stops at the next step and keeps one."""

    def __init__(self, steps: int):
        import comfy.model_management as mm
        import comfy.utils

        self.mm, self.bar, self.cancelled = mm, comfy.utils.ProgressBar(steps), False

    def __call__(self, step: int, total: int, losses: dict) -> None:
        try:
            self.bar.update_absolute(step, total)
        except self.mm.InterruptProcessingException:
            self.cancelled = True

    def should_stop(self) -> bool:
        return self.cancelled or self.mm.processing_interrupted()


def _shown(files) -> list[dict]:
    """The validation grid and the loss curves, as the node's preview images."""
    return [
        {"filename": path.name, "subfolder": REPORTS_FOLDER, "type": "output"}
        for path in (files.grid, files.curves)
        if path.is_file()
    ]


NODE = NodeSpec(
    node_id="DDColor-finetune",
    display_name="DDColor Fine-tune",
    category="training",  # beside ComfyUI's own training nodes (Train LoRA, Plot Loss Graph)
    description=DESCRIPTION,
    inputs=finetune_inputs,
    outputs=[Output("loss", "LOSS_MAP", TOOLTIPS["loss"])],
    function=finetune,
    # It writes a checkpoint: it runs even when nothing is connected to its output.
    output_node=True,
    # Dataset loaders give lists of images; every input then arrives as a list.
    input_is_list=True,
)
