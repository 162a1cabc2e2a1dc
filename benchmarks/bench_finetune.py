"""Fine-tuning on a CPU: seconds per step and peak memory over precision x what is trained x checkpointing.

    python benchmarks/bench_finetune.py                                  # the grid below, a table at the end
    python benchmarks/bench_finetune.py --variants tiny --steps 3 --markdown benchmarks/RESULTS.md
    python benchmarks/bench_finetune.py --row tiny bf16 lora on          # one row, as each fresh process runs it

The grid: DDColor-T over every precision (fp32, bf16, fp16) x what is trained
(all, decoder, lora) x gradient checkpointing (off, on); DDColor-L (heavier:
minutes a row on a small CPU) in fp32 training all without checkpointing, the
baseline, and in ``--large-rows`` (default: bf16 lora with checkpointing, the
leanest). ``--full`` runs DDColor-L over the whole grid too.

Each row runs in a fresh Python process, so its peak RSS (``ru_maxrss``: the
process's largest resident set, Python, torch and loading the checkpoint
included) is that configuration's alone. A row trains the calibrated
checkpoint (``tests/support.py``) on random smooth color crops at ``--size``
(256, as the published models were trained), batch ``--batch`` (2): one
warm-up step (the optimizer's state is made there), then ``--steps`` timed
steps, their median reported. The perceptual loss is off unless
``--perceptual`` (the default of ``python -m ddcolor finetune``): each step
then also runs VGG16-bn forward and backward, with torchvision's ImageNet
weights when torch's cache has them, else with untrained layers of the same
shapes (they cannot be downloaded offline; time and memory do not depend on
the values). The goal: the
leanest configuration's peak RSS at most half that of fp32 full fine-tuning;
the ratio is printed per variant.

fp16 on a CPU is emulated (PyTorch has no fast fp16 convolution backward on
CPUs) and very slow: it is measured because it is what a GPU runs.
``measure_training`` is also what benchmarks/gpu_check.py's training phase
runs on a GPU, where ``torch.cuda.max_memory_allocated`` is the peak.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_engine import machine, report  # noqa: E402

PRECISIONS = ("fp32", "bf16", "fp16")
TRAINS = ("all", "decoder", "lora")
CHECKPOINTING = {"off": False, "on": True}
GOAL_RATIO = 0.5
BASELINE = ("fp32", "all", "off")


def color_crops(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """sRGB (batch, 3, size, size): smooth random colors, something like photos to the network."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 6, 6, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def measure_training(checkpoint: Path, *, device: str, precision: str, train: str, checkpointing: bool,
                     shapes: list[tuple[int, int]], steps: int, warmups: int = 1, perceptual: bool = False,
                     on_row=None) -> list[dict]:
    """Train ``checkpoint`` for ``warmups`` + ``steps`` steps at each (size, batch) of ``shapes``, in order.

    One model and optimizer for all shapes (the optimizer's state is part of
    every step's memory). A row: median seconds per timed step, steps skipped
    (non-finite gradients), trained parameters, and on CUDA the peaks of
    ``max_memory_allocated`` and ``max_memory_reserved`` over the row's steps.
    Out of memory is a row's ``error``, not an exception. ``perceptual``: with
    the perceptual loss, see ``perceptual_loss``.
    """
    from ddcolor.checkpoint import read_state_dict
    from ddcolor.finetune.config import FinetuneConfig
    from ddcolor.finetune.data import Batch
    from ddcolor.finetune.distributed import Distributed
    from ddcolor.finetune.losses import PaperLosses
    from ddcolor.finetune.trainable import trainable_model, trainable_parameters
    from ddcolor.finetune.trainer import Trainer
    from ddcolor.precision import autocast

    device_ = torch.device(device)
    cuda = device_.type == "cuda"
    config = FinetuneConfig(output=Path("unused.pth"), train=train, checkpointing=checkpointing, perceptual=False)
    model = trainable_model(read_state_dict(checkpoint), train=train, rank=config.rank, checkpointing=checkpointing)
    trained = sum(p.numel() for p in trainable_parameters(model))
    losses = PaperLosses(perceptual=False, gan=False, autocast=lambda: autocast(precision, device_))
    vgg = "off"
    if perceptual:
        losses.per, vgg = perceptual_loss(precision, device_, checkpointing)
    trainer = Trainer(model.to(device_), losses.to(device_), config, precision, device_, Distributed())
    rows = []
    for size, batch in shapes:
        row = {"precision": precision, "train": train, "checkpointing": checkpointing, "size": size, "batch": batch,
               "trained_parameters": trained, "perceptual": vgg}
        try:
            rows.append({**row, **_timed_steps(trainer, Batch.from_rgb(color_crops(batch, size), device_), device_, steps, warmups)})
        except Exception as error:  # noqa: BLE001 - out of memory is a measurement
            if not _is_out_of_memory(error):
                raise
            rows.append({**row, "error": f"out of memory: {str(error).splitlines()[0][:200]}"})
        if cuda:
            torch.cuda.empty_cache()
        if on_row is not None:
            on_row(rows[-1])
    return rows


def perceptual_loss(precision: str, device: torch.device, checkpointing: bool):
    """The perceptual loss with torchvision's VGG16-bn weights when torch's cache has them, else with
    untrained VGG16-bn layers of the same shapes (a step's time and memory do not depend on the values);
    and which of the two ("imagenet" or "stand-in")."""
    from ddcolor.finetune.losses import PerceptualLoss, load_vgg16_bn_features, perceptual_vgg, vgg16_bn_weights_path
    from ddcolor.precision import autocast

    imagenet = vgg16_bn_weights_path().is_file()
    features = load_vgg16_bn_features() if imagenet else perceptual_vgg()
    loss = PerceptualLoss(features, autocast=lambda: autocast(precision, device), checkpointing=checkpointing)
    return loss.to(device), "imagenet" if imagenet else "stand-in"


def _timed_steps(trainer, batch, device: torch.device, steps: int, warmups: int) -> dict:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times, skipped = [], 0
    for index in range(warmups + steps):
        start = time.perf_counter()
        terms, was_skipped = trainer.step(batch)
        loss = float(terms["loss"])  # waits for the device, as synchronize would
        if cuda:
            torch.cuda.synchronize(device)
        if index >= warmups:
            times.append(time.perf_counter() - start)
            skipped += was_skipped
    result = {"seconds_per_step": statistics.median(times), "steps": steps, "skipped": skipped, "last_loss": loss}
    if cuda:
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return result


def _is_out_of_memory(error: Exception) -> bool:
    from ddcolor.pipeline import is_out_of_memory

    return is_out_of_memory(error)


# ----------------------------------------------------------------------- rows in fresh processes


def run_row(variant: str, precision: str, train: str, checkpointing: str, size: int, batch: int, steps: int,
            perceptual: bool = False) -> dict:
    """One row in this process (``--row``); its peak RSS is this process's."""
    from tests.support import calibrated_checkpoint

    torch.manual_seed(0)  # LoRA's adapters start from torch's generator
    rss_before = _peak_rss()
    (row,) = measure_training(calibrated_checkpoint(variant), device="cpu", precision=precision, train=train,
                              checkpointing=CHECKPOINTING[checkpointing], shapes=[(size, batch)], steps=steps,
                              perceptual=perceptual)
    return {"variant": variant, **row, "checkpointing": checkpointing, "peak_rss_bytes": _peak_rss(),
            "rss_before_model_bytes": rss_before}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def fresh_process_row(args, variant: str, precision: str, train: str, checkpointing: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--row", variant, precision, train, checkpointing,
               "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps)]
    command += ["--perceptual"] if args.perceptual else []
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if proc.returncode or not lines:
        tail = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return {"variant": variant, "precision": precision, "train": train, "checkpointing": checkpointing, "error": tail or f"exit {proc.returncode}"}
    return {**json.loads(lines[-1][4:]), "process_seconds": round(time.perf_counter() - start, 1)}


def grid(args) -> list[tuple[str, str, str, str]]:
    everything = list(itertools.product(PRECISIONS, TRAINS, CHECKPOINTING))
    rows = []
    for variant in args.variants:
        if variant == "large" and not args.full:
            chosen = [BASELINE, *(tuple(r.split()) for r in args.large_rows)]
        else:
            chosen = everything
        rows += [(variant, *row) for row in chosen]
    return rows


# ----------------------------------------------------------------------- the table


def mib(value) -> str:
    return f"{value / 2**20:,.0f} MiB"


def above_import(row: dict) -> int:
    """Peak RSS less the process's RSS before the model was read (Python and torch's libraries)."""
    return row["peak_rss_bytes"] - row["rss_before_model_bytes"]


def table(rows: list[dict]) -> list[str]:
    lines = ["| variant | precision | train | checkpointing | s/step | peak RSS | vs fp32 all | above import | vs fp32 all | trained params |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    baselines = {r["variant"]: r for r in rows if (r.get("precision"), r.get("train"), r.get("checkpointing")) == BASELINE and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['precision']} | {r['train']} | {r['checkpointing']} | {r['error']} | | | | | |")
            continue
        base = baselines.get(r["variant"])
        ratios = (f"{r['peak_rss_bytes'] / base['peak_rss_bytes']:.2f}x", f"{above_import(r) / above_import(base):.2f}x") if base else ("-", "-")
        lines.append(f"| {r['variant']} | {r['precision']} | {r['train']} | {r['checkpointing']} | {r['seconds_per_step']:.2f} | "
                     f"{mib(r['peak_rss_bytes'])} | {ratios[0]} | {mib(above_import(r))} | {ratios[1]} | {r['trained_parameters'] / 1e6:.1f} M |")
    return lines


def goal_lines(rows: list[dict]) -> list[str]:
    lines = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        done = [r for r in rows if r["variant"] == variant and "error" not in r]
        base = next((r for r in done if (r["precision"], r["train"], r["checkpointing"]) == BASELINE), None)
        if base is None or len(done) < 2:
            continue
        lean = min(done, key=lambda r: r["peak_rss_bytes"])
        ratio = lean["peak_rss_bytes"] / base["peak_rss_bytes"]
        lines.append(
            f"DDColor-{variant}: leanest {lean['precision']} {lean['train']} checkpointing {lean['checkpointing']} "
            f"{mib(lean['peak_rss_bytes'])} = {ratio:.2f}x fp32 full fine-tuning ({mib(base['peak_rss_bytes'])}): "
            f"goal <= {GOAL_RATIO}x {'met' if ratio <= GOAL_RATIO else 'NOT met'}; above the import "
            f"({mib(lean['rss_before_model_bytes'])}): {above_import(lean) / above_import(base):.2f}x"
        )
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["tiny", "large"], choices=("small", "tiny", "large"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row after one warm-up (default 2)")
    parser.add_argument("--full", action="store_true", help="DDColor-L over the whole grid, not only the baseline and --large-rows")
    parser.add_argument("--large-rows", nargs="*", default=["bf16 lora on"], metavar="'PRECISION TRAIN CKPT'",
                        help="DDColor-L rows besides the fp32 baseline (default: 'bf16 lora on')")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS, help="limit the grid")
    parser.add_argument("--trains", nargs="+", default=list(TRAINS), choices=TRAINS, help="limit the grid")
    parser.add_argument("--row", nargs=4, metavar=("VARIANT", "PRECISION", "TRAIN", "CHECKPOINTING"), help=argparse.SUPPRESS)
    parser.add_argument("--perceptual", action="store_true",
                        help="with the perceptual loss (VGG16-bn; untrained layers of the same shapes when torch's cache "
                             "lacks the ImageNet weights: time and memory do not depend on the values)")
    parser.add_argument("--markdown", type=Path, help="append the table to this file")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    args = parser.parse_args(argv)

    if args.row:
        print("ROW " + json.dumps(run_row(*args.row, size=args.size, batch=args.batch, steps=args.steps,
                                          perceptual=args.perceptual)), flush=True)
        return
    command = "python benchmarks/bench_finetune.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Machine: {machine('cpu')}", flush=True)
    print(f"DDColor fine-tuning at {args.size}, batch {args.batch}, {args.steps} timed step(s) after 1 warm-up, "
          f"perceptual loss {'on' if args.perceptual else 'off'}, each row a fresh process", flush=True)
    rows = []
    for variant, precision, train, checkpointing in grid(args):
        if precision not in args.precisions or train not in args.trains:
            continue
        row = fresh_process_row(args, variant, precision, train, checkpointing)
        rows.append(row)
        print("\n".join(table([row])[2:]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    lines = [
        "",
        f"Machine: {machine('cpu')}. Command: `{command.strip()}`.",
        f"At {args.size}, batch {args.batch}; s/step: median of {args.steps} step(s) after one warm-up; peak RSS: the "
        "row's own process (Python, torch and the checkpoint's loading included); above import: that peak less the "
        "process's RSS before it read the model (Python and torch's libraries); perceptual loss: "
        + (f"on, VGG16-bn with {', '.join(sorted({r['perceptual'] for r in rows if 'perceptual' in r}))} weights."
           if args.perceptual else "off."),
        "",
        *table(rows),
        "",
        *goal_lines(rows),
    ]
    report(lines, args.markdown)


if __name__ == "__main__":
    main()
