"""One GPU run: latency, peak VRAM, fp16 numerics and throughput, ours against the original.

    python benchmarks/gpu_check.py --device cuda                  # everything, within --budget
    python benchmarks/gpu_check.py --device cpu --quick           # tiny sizes: checks the script itself
    python benchmarks/gpu_check.py --device cuda --phases latency --sizes 512

Phases, by default in this order (``--phases`` takes any order; the budget cuts the last ones first):

* latency: ours (``ddcolor.load_model(..., strict_precision=True)``) in fp32 /
  fp16 / bf16 and the original (spandrel-extra-arches' port of the published
  code) in fp32 and under fp16 autocast, batch 1 at each size: median of
  ``--repeats`` forwards after one warm-up, synchronized; peak
  ``max_memory_allocated`` / ``max_memory_reserved`` (weights included; the
  weights' bytes beside), reset with ``empty_cache`` and
  ``reset_peak_memory_stats`` before each size. PyTorch's default math: cuDNN
  convolutions may use TF32 in fp32 (recorded in the JSON).
* throughput: ours in fp16 and fp32 at 512, images/s for each batch size.
* numerics: on the calibrated and every stress checkpoint of each variant
  (``tests/calibrated.py``), the photos through ours in fp32 (IEEE, TF32 off),
  fp16 and bf16, and through the original in fp32 and under fp16 autocast:
  finite, mean / max |ab - ab_fp32| and the colorfulness change, each against
  its own implementation's fp32; plus ours against the original in fp32.
* training: fine-tuning steps (``benchmarks/bench_finetune.measure_training``:
  the paper's losses, the perceptual term with VGG16-bn's ImageNet weights
  where torch's cache has them, else untrained layers of the same shapes, as
  memory and time do not depend on the values; ``--no-train-perceptual``
  leaves it out) for each variant, precision (fp16 with loss
  scaling, bf16, fp32), what is trained (all, decoder, lora) and gradient
  checkpointing, at each size and batch: median seconds per step and peak
  ``max_memory_allocated`` (and reserved) over the steps after a warm-up.
  DDColor-L in fp16 first: the goal "DDColor-L fine-tunes at 512, batch 2, in
  under 6 GiB in fp16" is checked on those rows. The whole grid takes longer
  than one run's budget; run it on its own with ``--phases training``.

Inputs: ``--photos DIR`` (default ../shared/fixtures); where it holds no
photos, generated scenes (``tests.calibrated.calibration_images``). The JSON and
the table say which. Checkpoints are built once and cached in .cache/tests
(the test suite's cache); building them is the slow part on a CPU.

Results go to ``--out`` (default ``$OUT`` when set, else benchmarks/gpu_check/):
gpu_check.json and gpu_check.md, rewritten after each phase so a run cut short
keeps what it measured. ``--budget`` (seconds) stops starting new work once
spent; one unit of work (at most one checkpoint build) can run past it.

On an offline GPU host that has torch, torchvision, numpy, pillow, einops and
safetensors but not spandrel (this workplace's ``device`` tool: its machine
gets the repository and the paths named in ``carry``, not ../shared), carry
the wheels and the photos in .gpu_check/ (git-ignored). In the repository root::

    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        -d .gpu_check/wheels spandrel==0.4.2 spandrel-extra-arches==0.2.0
    mkdir -p .gpu_check/photos && cp ../shared/fixtures/* .gpu_check/photos/

then one ``run`` with ``carry=[".gpu_check"]``, ``timeout_s=600`` and this command
(one line; ``--budget 420`` leaves time for the longest unit of work)::

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
    --target /tmp/site .gpu_check/wheels/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 &&
    python3 benchmarks/gpu_check.py --device cuda --photos .gpu_check/photos --budget 420
    2>&1 | tee $OUT/gpu_check.log

gpu_check.json, gpu_check.md and the log come back from ``$OUT``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ddcolor  # noqa: E402
from benchmarks.bench_finetune import CHECKPOINTING, TRAINS, measure_training  # noqa: E402
from tests import calibrated  # noqa: E402
from tests.support import colorfulness_of, fixture_inputs  # noqa: E402

PHASES = ("latency", "throughput", "numerics", "training")
# One model load each: the original holds fp32 weights for both of its runs.
LATENCY_RUNS = (("ours", ("fp32",)), ("ours", ("fp16",)), ("ours", ("bf16",)), ("original", ("fp32", "fp16")))
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")


# ---------------------------------------------------------------- checkpoints

def stress_recipes() -> tuple[str, ...]:
    """The stress recipes of tests/calibrated.py (before they had names: the one, "blocks")."""
    return tuple(getattr(calibrated, "STRESS_RECIPES", ("blocks",)))


def checkpoint_path(variant: str, recipe: str | None, device: str) -> Path:
    """The cached calibrated checkpoint, built on ``device`` where the generator allows it."""
    from tests.support import calibrated_checkpoint

    kwargs = {}
    if recipe is not None:
        # Before named recipes, stress was a bool meaning today's "blocks".
        kwargs["stress"] = recipe if hasattr(calibrated, "STRESS_RECIPES") else True
    return calibrated_checkpoint(variant, device=device, **kwargs)


# --------------------------------------------------------------------- models

def load_ours(path: Path, precision: str, device: str) -> torch.nn.Module:
    return ddcolor.load_model(path, device=device, precision=precision, strict_precision=True)


def original_available() -> str | None:
    """None when spandrel-extra-arches can be imported, else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import spandrel_extra_arches.architectures.DDColor  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as error:
        return f"original not measured: {error} (see the wheels recipe in benchmarks/gpu_check.py)"
    return None


def load_original(path: Path, device: str, reuse: torch.nn.Module | None = None) -> torch.nn.Module:
    """The original with ``path``'s weights; ``reuse``: a model of the same variant to load them into.

    Building the original initializes every weight at random first (seconds
    for DDColor-L); loading another checkpoint into a built one is exact.
    """
    from spandrel_extra_arches.architectures.DDColor import DDColorArch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = torch.load(path, map_location="cpu", weights_only=True)["params"]
        if reuse is not None:
            for key in ("encoder.arch.head_cls.weight", "encoder.arch.head_cls.bias"):
                state.pop(key, None)  # as spandrel's loader does
            reuse.load_state_dict(state, strict=True)
            return reuse
        return DDColorArch().load(state).model.eval().to(device)


def forward_context(impl: str, precision: str, device: str):
    """Ours runs the precision it holds; the original runs fp16 only under autocast."""
    if impl == "original" and precision != "fp32":
        return torch.autocast(torch.device(device).type, dtype=torch.float16)
    return nullcontext()


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


@contextmanager
def ieee_fp32():
    """cuDNN convolutions default to TF32 in fp32; a numerics reference must be IEEE fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed_forwards(model, x: torch.Tensor, context, device: str, repeats: int, warmups: int) -> dict:
    """``warmups`` forwards, then ``repeats`` synchronized ones; peak memory over all of them."""
    cuda = device.startswith("cuda")
    release(device)
    times = []
    with torch.inference_mode():
        for i in range(warmups + repeats):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with context:
                out = model(x)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmups:
                times.append(time.perf_counter() - start)
        finite = bool(torch.isfinite(out).all())
    del out
    result = {"latency_s": statistics.median(times), "latency_min_s": min(times), "finite": finite}
    result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device) if cuda else None
    result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device) if cuda else None
    return result


# --------------------------------------------------------------------- inputs

def find_photos(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)


class Inputs:
    """Gray model inputs from the photos, or generated scenes where there are none."""

    def __init__(self, photos: list[Path], folder: Path | None, count: int):
        self.photos = photos[:count]
        self.count = count
        self.cache: dict[int, torch.Tensor] = {}
        if self.photos:
            self.description = {"source": "photos", "dir": str(folder), "files": [p.name for p in self.photos]}
        else:
            self.description = {"source": "generated scenes (tests.calibrated.calibration_images)", "dir": str(folder)}

    def batch(self, size: int, device: str, batch: int | None = None) -> torch.Tensor:
        """``batch`` images at ``size`` x ``size`` (default: each photo once), cycling through the photos."""
        if size not in self.cache:
            if self.photos:
                self.cache[size] = fixture_inputs(self.photos, size)
            else:
                self.cache[size] = calibrated.calibration_images(size, count=self.count)
        x = self.cache[size]
        if batch is not None:
            x = x[torch.arange(batch) % len(x)]
        return x.to(device)


# ---------------------------------------------------------------------- phases

class Budget:
    """Says whether new work may start; a unit of work that fails is recorded, not fatal."""

    def __init__(self, seconds: float, report: dict):
        self.deadline = time.monotonic() + seconds
        self.report = report

    def allows(self, what: str) -> bool:
        if time.monotonic() < self.deadline:
            return True
        self.report["skipped"].append(what)
        print(f"  budget spent: skipped {what}", flush=True)
        return False

    @contextmanager
    def unit(self, what: str):
        """One GPU run is precious: an error in one unit must not lose the others."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 - recorded and shown, the run goes on
            message = f"{what}: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            self.report["errors"].append(message)
            print(f"  ERROR {message}", flush=True)
            traceback.print_exc()


def run_latency(args, inputs: Inputs, budget: Budget, report: dict) -> None:
    missing = original_available()
    path = timed_build(args.latency_variant, None, args, report)
    for impl, precisions in LATENCY_RUNS:
        what = f"latency {impl} {'/'.join(precisions)}"
        if impl == "original" and missing:
            report["latency"] += [{"impl": impl, "precision": precision, "error": missing} for precision in precisions]
            continue
        if not budget.allows(what):
            continue
        with budget.unit(what):
            model = load_ours(path, precisions[0], args.device) if impl == "ours" else load_original(path, args.device)
            weights = weight_bytes(model)
            for precision in precisions:
                for size in args.sizes:
                    row = {"impl": impl, "precision": precision, "size": size, "batch": 1, "weight_bytes": weights}
                    row.update(measure(model, inputs.batch(size, args.device, 1), forward_context(impl, precision, args.device), args))
                    report["latency"].append(row)
                    print(f"  latency {impl} {precision} {size}: {describe(row)}", flush=True)
        model = None
        release(args.device)


def run_throughput(args, inputs: Inputs, budget: Budget, report: dict) -> None:
    path = timed_build(args.latency_variant, None, args, report)
    for precision in ("fp16", "fp32"):
        if not budget.allows(f"throughput {precision}"):
            continue
        with budget.unit(f"throughput {precision}"):
            model = load_ours(path, precision, args.device)
            for batch in args.batches:
                row = {"impl": "ours", "precision": precision, "size": args.throughput_size, "batch": batch}
                row.update(measure(model, inputs.batch(args.throughput_size, args.device, batch), nullcontext(), args))
                if "latency_s" in row:
                    row["images_per_s"] = batch / row["latency_s"]
                report["throughput"].append(row)
                print(f"  throughput {precision} batch {batch}: {describe(row)}", flush=True)
        model = None
        release(args.device)


def measure(model, x: torch.Tensor, context, args) -> dict:
    """``timed_forwards``, with out-of-memory recorded as a result rather than raised."""
    try:
        return timed_forwards(model, x, context, args.device, args.repeats, args.warmups)
    except torch.cuda.OutOfMemoryError as error:
        release(args.device)
        return {"error": f"out of memory: {str(error).splitlines()[0]}"}


def run_numerics(args, inputs: Inputs, budget: Budget, report: dict) -> None:
    missing = original_available()
    x = inputs.batch(args.numerics_size, args.device)
    for variant in args.variants:
        original = None
        for recipe in [None, *args.recipes]:
            name = recipe or "calibrated"
            if not budget.allows(f"numerics {variant} {name}"):
                continue
            with budget.unit(f"numerics {variant} {name}"):
                path = timed_build(variant, recipe, args, report)
                outputs = ours_outputs(path, x, args.device)
                if not missing:
                    original = load_original(path, args.device, reuse=original)
                    outputs.update(original_outputs(original, x, args.device))
                comparisons = [("ours fp16", "ours fp32"), ("ours bf16", "ours fp32")]
                if not missing:
                    comparisons += [("original fp16 autocast", "original fp32"), ("original fp32", "ours fp32")]
                for run, reference in comparisons:
                    row = {"variant": variant, "checkpoint": name, "run": run, "reference": reference}
                    row.update(compare(x, outputs[run], outputs[reference]))
                    report["numerics"].append(row)
                    print(f"  numerics {variant} {name}: {run} vs {reference}: {describe(row)}", flush=True)
                if missing:
                    report["numerics"].append({"variant": variant, "checkpoint": name, "run": "original", "error": missing})
        original = None
        release(args.device)


def ours_outputs(path: Path, x: torch.Tensor, device: str) -> dict[str, torch.Tensor]:
    """ab of ``x`` from ours in each precision, as float32; the fp32 reference in IEEE fp32."""
    outputs = {}
    with torch.inference_mode():
        for precision in ("fp32", "fp16", "bf16"):
            with ieee_fp32() if precision == "fp32" else nullcontext():
                outputs[f"ours {precision}"] = load_ours(path, precision, device)(x).float()
            release(device)
    return outputs


def original_outputs(original: torch.nn.Module, x: torch.Tensor, device: str) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        with ieee_fp32():
            fp32 = original(x).float()
        with forward_context("original", "fp16", device):
            fp16 = original(x).float()
    return {"original fp32": fp32, "original fp16 autocast": fp16}


def compare(x: torch.Tensor, ab: torch.Tensor, reference: torch.Tensor) -> dict:
    """Deviation of ``ab`` from ``reference``; None where either is not finite."""
    finite = torch.isfinite(ab)
    result = {"finite": bool(finite.all()), "nonfinite_fraction": float((~finite).float().mean())}
    result.update(mean_abs_ab=None, max_abs_ab=None, colorfulness_change=None)
    if result["finite"] and bool(torch.isfinite(reference).all()):
        diff = (ab - reference).abs()
        result["mean_abs_ab"] = float(diff.mean())
        result["max_abs_ab"] = float(diff.max())
        result["colorfulness_change"] = colorfulness_of(x, ab) / colorfulness_of(x, reference) - 1
    return result


TRAINING_PRECISIONS = ("fp16", "bf16", "fp32")
TRAINING_GOAL = {"variant": "large", "precision": "fp16", "size": 512, "batch": 2, "limit_bytes": 6 * 2**30}


def run_training(args, inputs: Inputs, budget: Budget, report: dict) -> None:
    """Every configuration of the grid, DDColor-L in fp16 first (the goal's rows)."""
    shapes = [(size, batch) for size in args.train_sizes for batch in args.train_batches]
    for variant in args.train_variants:
        path = timed_build(variant, None, args, report)
        for precision in args.train_precisions:
            for train in args.trains:
                for checkpointing in args.checkpointing:
                    what = f"training {variant} {precision} {train} checkpointing {checkpointing}"
                    if not budget.allows(what):
                        continue
                    with budget.unit(what):
                        torch.manual_seed(0)  # LoRA's adapters start from torch's generator

                        def show(row, variant=variant):
                            row["variant"] = variant
                            report["training"].append(row)
                            print(f"  {what} {row['size']} batch {row['batch']}: {describe(row)}", flush=True)

                        measure_training(path, device=args.device, precision=precision, train=train,
                                         checkpointing=CHECKPOINTING[checkpointing], shapes=shapes,
                                         steps=args.train_steps, perceptual=args.train_perceptual, on_row=show)
                    release(args.device)


def perceptual_words(rows: list[dict]) -> str:
    """How the rows ran the perceptual loss: off, or on with which VGG16-bn weights."""
    kinds = sorted({r["perceptual"] for r in rows if r.get("perceptual", "off") != "off"})
    return f"on, VGG16-bn {' and '.join(kinds)} weights" if kinds else "off"


def training_goal(rows: list[dict]) -> str | None:
    """The goal's verdict over the rows that measure it; None when none does."""
    goal = TRAINING_GOAL
    measured = [r for r in rows if all(r.get(k) == goal[k] for k in ("variant", "precision", "size", "batch"))
                and r.get("peak_allocated_bytes") is not None]
    if not measured:
        return None
    limit = goal["limit_bytes"]
    fits = [r for r in measured if r["peak_allocated_bytes"] < limit]
    names = lambda rs: ", ".join(f"{r['train']}{' + checkpointing' if r['checkpointing'] else ''} ({gib(r['peak_allocated_bytes'])})" for r in rs)
    verdict = "met" if fits else "NOT met"
    return (f"Goal: DDColor-L fine-tunes at 512, batch 2, in under {limit / 2**30:.0f} GiB in fp16 (peak allocated; the CUDA "
            f"context, a few hundred MiB, comes on top): {verdict}. Under: {names(fits) or 'none'}; over: "
            f"{names([r for r in measured if r not in fits]) or 'none'}.")


def timed_build(variant: str, recipe: str | None, args, report: dict) -> Path:
    """The checkpoint's path; a build (not a cache hit) is recorded with its time."""
    start = time.perf_counter()
    path = checkpoint_path(variant, recipe, args.device)
    seconds = time.perf_counter() - start
    if all(entry["file"] != path.name for entry in report["checkpoints"]):
        report["checkpoints"].append({"variant": variant, "checkpoint": recipe or "calibrated", "seconds": round(seconds, 2), "file": path.name})
        print(f"  checkpoint {variant} {recipe or 'calibrated'}: {seconds:.1f} s", flush=True)
    return path


def describe(row: dict) -> str:
    if "error" in row:
        return row["error"]
    return ", ".join(f"{k}={fmt(v)}" for k, v in row.items() if k not in ("impl", "precision", "size", "variant", "checkpoint", "run", "reference"))


def fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -------------------------------------------------------------------- machine

def machine(device: str) -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    from ddcolor.precision import cpu_bf16_units

    info = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": f"{cpu}, {os.cpu_count()} cores, bf16 units: {cpu_bf16_units() or 'none'}",
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            driver=nvidia_driver(),
            tf32={"cudnn_conv": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    return info


def nvidia_driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def machine_line(info: dict) -> str:
    if "gpu" in info:
        gpu = f"{info['gpu']} ({info['gpu_memory_bytes'] / 2**30:.0f} GiB, sm {info['compute_capability']}), driver {info['driver']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}; "
    else:
        gpu = ""
    return f"{gpu}CPU {info['cpu']}; torch {info['torch']}; Python {info['python']}"


# -------------------------------------------------------------------- reports

def gib(value) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# GPU check" if s["device"].startswith("cuda") else f"# GPU check (run on {s['device']})",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        f"Command: `{report['command']}`.",
        f"Inputs: {report['inputs']['source']}" + (f" ({', '.join(report['inputs']['files'])})" if "files" in report["inputs"] else "") + ".",
        "",
    ]
    if report["latency"]:
        lines += [
            f"## Latency and peak memory, batch 1, DDColor-{s['latency_variant']} (median of {s['repeats']} after {s['warmups']} warm-up)",
            "",
            "| impl | precision | size | latency | peak allocated | peak reserved | weights | finite |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in report["latency"]:
            label = "fp16 autocast" if r["impl"] == "original" and r["precision"] == "fp16" else r["precision"]
            if "error" in r:
                lines.append(f"| {r['impl']} | {label} | {r.get('size', '-')} | {r['error']} | | | | |")
            else:
                lines.append(
                    f"| {r['impl']} | {label} | {r['size']} | {1000 * r['latency_s']:.1f} ms | {gib(r['peak_allocated_bytes'])} | "
                    f"{gib(r['peak_reserved_bytes'])} | {gib(r['weight_bytes'])} | {r['finite']} |"
                )
        lines.append("")
    if report["throughput"]:
        lines += [
            f"## Throughput, ours, DDColor-{s['latency_variant']} at {s['throughput_size']}",
            "",
            "| precision | batch | images/s | latency | peak allocated |",
            "|---|---|---|---|---|",
        ]
        for r in report["throughput"]:
            if "error" in r:
                lines.append(f"| {r['precision']} | {r['batch']} | {r['error']} | | |")
            else:
                lines.append(f"| {r['precision']} | {r['batch']} | {r['images_per_s']:.2f} | {1000 * r['latency_s']:.1f} ms | {gib(r['peak_allocated_bytes'])} |")
        lines.append("")
    if report["numerics"]:
        lines += [
            f"## Half precision against fp32 at {s['numerics_size']} (IEEE fp32 reference, TF32 off)",
            "",
            "| variant | checkpoint | run | against | finite | mean abs ab diff | max abs ab diff | colorfulness |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in report["numerics"]:
            if "error" in r:
                lines.append(f"| {r['variant']} | {r['checkpoint']} | {r['run']} | {r['error']} | | | | |")
                continue
            finite = "yes" if r["finite"] else f"no ({r['nonfinite_fraction']:.1%} NaN/Inf)"
            numbers = "| - | - | -" if r["mean_abs_ab"] is None else (
                f"| {r['mean_abs_ab']:.3f} | {r['max_abs_ab']:.2f} | {r['colorfulness_change']:+.2%}"
            )
            lines.append(f"| {r['variant']} | {r['checkpoint']} | {r['run']} | {r['reference']} | {finite} {numbers} |")
        lines.append("")
    if report["training"]:
        lines += [
            f"## Fine-tuning steps (perceptual loss {perceptual_words(report['training'])}; median of {s['train_steps']} after a warm-up)",
            "",
            "| variant | precision | train | checkpointing | size | batch | s/step | peak allocated | peak reserved | skipped |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["training"]:
            head = f"| {r['variant']} | {r['precision']} | {r['train']} | {'on' if r['checkpointing'] else 'off'} | {r['size']} | {r['batch']} |"
            if "error" in r:
                lines.append(f"{head} {r['error']} | | | |")
            else:
                lines.append(f"{head} {r['seconds_per_step']:.3f} | {gib(r.get('peak_allocated_bytes'))} | "
                             f"{gib(r.get('peak_reserved_bytes'))} | {r['skipped']} |")
        lines += ["", training_goal(report["training"]) or "Goal (DDColor-L, fp16, 512, batch 2, under 6 GiB): not measured in this run.", ""]
    built = ", ".join(f"{c['variant']} {c['checkpoint']} {c['seconds']:.0f} s" for c in report["checkpoints"])
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in report["phase_seconds"].items())
    lines += [f"Phase times (checkpoint builds included): {phases}; total {report['total_seconds']:.0f} s."]
    if built:
        lines += [f"Checkpoints (time to build or find in the cache): {built}."]
    if report["skipped"]:
        lines += [f"Skipped (budget of {s['budget_s']:.0f} s spent): {', '.join(report['skipped'])}."]
    if report["errors"]:
        lines += ["Errors:", *(f"- {e}" for e in report["errors"])]
    return "\n".join(lines) + "\n"


def finite_or_none(value):
    """JSON has no NaN or Infinity: a non-finite measurement is written as null."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write(report: dict, out: Path) -> None:
    """Both files, replaced atomically: a reader never sees half a report."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(finite_or_none(report), indent=1, allow_nan=False)), ("gpu_check.md", markdown(report))):
        partial = out / f".{name}.partial"
        partial.write_text(text)
        partial.replace(out / name)


# ----------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, DDColor-T, one repeat, two photos: checks the script")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--photos", type=Path, default=calibrated.FIXTURES, help="folder of photos (default ../shared/fixtures)")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "gpu_check")
    parser.add_argument("--budget", type=float, default=420, help="seconds after which no new work starts (default 420)")
    parser.add_argument("--sizes", nargs="+", type=int, help="latency sizes (default 512 1024 1280)")
    parser.add_argument("--batches", nargs="+", type=int, help="throughput batch sizes (default 1 4 8 16)")
    parser.add_argument("--repeats", type=int, help="timed forwards after the warm-up (default 5)")
    parser.add_argument("--warmups", type=int, help="untimed forwards first (default 1; 0 with --quick)")
    parser.add_argument("--variants", nargs="+", choices=("tiny", "large"), help="numerics variants (default tiny large)")
    parser.add_argument("--recipes", nargs="*", help=f"stress recipes for numerics (default all: {', '.join(stress_recipes())})")
    parser.add_argument("--latency-variant", choices=("tiny", "large"), help="variant for latency and throughput (default large)")
    parser.add_argument("--train-variants", nargs="+", choices=("tiny", "large"), help="training variants (default large tiny)")
    parser.add_argument("--train-sizes", nargs="+", type=int, help="training crop sizes (default 256 512)")
    parser.add_argument("--train-batches", nargs="+", type=int, help="training batch sizes (default 1 2 4 8)")
    parser.add_argument("--train-precisions", nargs="+", choices=TRAINING_PRECISIONS, help="default fp16 bf16 fp32")
    parser.add_argument("--trains", nargs="+", choices=TRAINS, help="what is trained (default all decoder lora)")
    parser.add_argument("--checkpointing", nargs="+", choices=tuple(CHECKPOINTING), help="gradient checkpointing (default off on)")
    parser.add_argument("--train-steps", type=int, help="timed training steps after one warm-up (default 3)")
    parser.add_argument("--no-train-perceptual", dest="train_perceptual", action="store_false",
                        help="train without the perceptual loss (by default it is on, as in python -m ddcolor finetune)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "sizes": [64] if quick else [512, 1024, 1280],
        "batches": [2] if quick else [1, 4, 8, 16],
        "repeats": 1 if quick else 5,
        "warmups": 0 if quick else 1,
        "variants": ["tiny"] if quick else ["tiny", "large"],
        # Quick: the one recipe the test suite builds anyway (tests/conftest.py).
        "recipes": ["blocks"] if quick else list(stress_recipes()),
        "latency_variant": "tiny" if quick else "large",
        "train_variants": ["tiny"] if quick else ["large", "tiny"],
        "train_sizes": [64] if quick else [256, 512],
        "train_batches": [2] if quick else [1, 2, 4, 8],
        # Quick: the loss-scaled path with LoRA and checkpointing, and the plain one.
        "train_precisions": ["fp16", "fp32"] if quick else list(TRAINING_PRECISIONS),
        "trains": ["lora"] if quick else list(TRAINS),
        "checkpointing": ["on"] if quick else list(CHECKPOINTING),
        "train_steps": 1 if quick else 3,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = sorted(set(args.recipes) - set(stress_recipes()))
    if unknown:
        parser.error(f"unknown stress recipe(s) {', '.join(unknown)}; tests/calibrated.py has {', '.join(stress_recipes())}")
    args.numerics_size = args.throughput_size = 64 if quick else 512
    args.photo_count = 2 if quick else 8
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch here; use --device cpu --quick to check the script")
    started = time.monotonic()
    photos = find_photos(args.photos)
    if photos and not find_photos(calibrated.FIXTURES):
        # Calibrate the checkpoints on the same photos as the shared fixtures do
        # here (the generator reads this folder), not on generated scenes.
        calibrated.FIXTURES = args.photos
    inputs = Inputs(photos, args.photos, args.photo_count)
    report = {
        "schema": 1,
        "command": " ".join(["python benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(args.device),
        "settings": {
            "device": args.device,
            "quick": args.quick,
            "phases": args.phases,
            "sizes": args.sizes,
            "batches": args.batches,
            "repeats": args.repeats,
            "warmups": args.warmups,
            "variants": args.variants,
            "recipes": args.recipes,
            "latency_variant": args.latency_variant,
            "numerics_size": args.numerics_size,
            "throughput_size": args.throughput_size,
            "budget_s": args.budget,
            "train_variants": args.train_variants,
            "train_sizes": args.train_sizes,
            "train_batches": args.train_batches,
            "train_steps": args.train_steps,
            "train_perceptual": args.train_perceptual,
        },
        "inputs": inputs.description,
        "checkpoints": [],
        "latency": [],
        "throughput": [],
        "numerics": [],
        "training": [],
        "phase_seconds": {},
        "skipped": [],
        "errors": [],
        "total_seconds": 0.0,
    }
    print(f"Machine: {machine_line(report['machine'])}", flush=True)
    print(f"Inputs: {inputs.description['source']} from {args.photos}; results to {args.out}", flush=True)
    budget = Budget(args.budget, report)
    runners = {"latency": run_latency, "throughput": run_throughput, "numerics": run_numerics, "training": run_training}
    for phase in dict.fromkeys(args.phases):  # in the order given: the budget cuts the last ones first
        if not budget.allows(phase):
            continue
        start = time.monotonic()
        print(f"{phase}:", flush=True)
        with budget.unit(phase):
            runners[phase](args, inputs, budget, report)
        report["phase_seconds"][phase] = round(time.monotonic() - start, 1)
        report["total_seconds"] = round(time.monotonic() - started, 1)
        write(report, args.out)
    print()
    print(markdown(report), flush=True)
    return report


if __name__ == "__main__":
    main()
