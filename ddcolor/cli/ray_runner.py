"""``python -m ddcolor colorize ... --ray [ADDRESS]``: the same batch, on a Ray cluster through Ray Data.

Each image is one row that flows through three Ray Data stages::

    read (map tasks)  ->  colorize (one model per actor)  ->  write (map tasks)

Decoding and encoding run as tasks on any node's spare CPUs, beside the
models, so a GPU never waits on a single reader; each actor loads the model
once, on its own device, in the precision resolved there. The stages call
the local run's per-image step, ``image_step.read``, ``.colorize`` and
``.write``, on the same arrays, so for the same precision on the same kind of
device (on a CPU: the same bf16 units and number of threads) the files are the
same bytes.

A job that is not an image (a video or a folder of frames) is one row too,
of the kind ``job_kind`` names; it passes through the read and write
stages, and the model worker runs the whole file with
``WHOLE_FILE_JOBS[kind](model, job, options)``, which writes it (atomically)
and returns its Outcome. Register kinds in this module, not at run time: the
workers import it afresh.

Exactly once: outputs are written under a temporary name and renamed
(``imageio.atomic_write``), so a file at an output path is always complete.
When a node dies, Ray retries its tasks elsewhere; a retried write replaces
a complete file with the same bytes, and the driver counts each image once
(by its row index). After the run, temporaries that killed writers left
behind are removed, and an image whose report never arrived (the run
stopped or failed) counts as done only if its output was replaced since the
run was planned.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .batch import DONE, EXIT_FAILED, FAILED, Job, Outcome, StopRequest, Summary, UsageError, indent, relative_name

INSTALL = 'pip install "comfyui-ddcolor-fp16[ray]"'
# Jobs that are not images, by kind: fn(model, job, options) -> Outcome, run whole on a model worker.
WHOLE_FILE_JOBS: dict[str, Callable[[object, Job, "Options"], Outcome]] = {}
# Images per Ray Data block: one, so that a dead node costs only the images in flight;
# past MAX_BLOCKS images blocks grow so the driver's bookkeeping stays small.
MAX_BLOCKS = 20_000


@dataclass(frozen=True)
class Options:
    """What a model worker needs to know about the run; sent once to each."""

    model_file: str  # the checkpoint's file name (its suffix tells the format)
    device: str  # "cuda" or "cpu": the kind of device each worker takes
    precision: str
    strict_precision: bool
    size: int
    quality: int
    clip: object = None  # video.ClipOptions for video jobs (stabilization, quality, sequence fps)


def colorize_on_ray(
    args: argparse.Namespace, jobs: list[Job], decided: list[Outcome], summary: Summary, *, size: int, clip=None
) -> int:
    """Run ``jobs`` on the Ray cluster named by ``args.ray``; fill ``summary`` as the local run does."""
    address = args.ray
    if address not in ("", "auto") and Path(address).exists():
        raise UsageError(f"--ray took {address!r} as the cluster address; write --ray after the inputs, or --ray=ADDRESS")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: use 1 or more")
    device = args.device.strip().lower()
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {args.device}: with --ray, each worker takes the device Ray gives it; use auto, cpu or cuda")
    for outcome in decided:
        if outcome.status == FAILED:
            print(f"failed: {outcome.job.source}: {outcome.reason}", file=sys.stderr)
    if not jobs:
        summary.report()
        return summary.exit_code()
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray: {INSTALL}") from None

    checkpoint = checkpoint_for_workers(args)
    if isinstance(checkpoint, int):
        return checkpoint
    before = {index: output_identities(job) for index, job in enumerate(jobs)}
    joined = connect(ray, address)
    try:
        plan = plan_workers(ray, device, args.workers, checkpoint, size)
        print(f"{len(jobs)} file(s) on {joined}: {plan.describe()}, model {args.model}, size {size}", file=sys.stderr, flush=True)
        options = Options(checkpoint.path.name, plan.device, args.precision, args.strict_precision, size, args.quality, clip)
        weights = ray.put(checkpoint.data)
        outcomes, error = run_pipeline(ray, jobs, options, plan, weights, summary)
    finally:
        ray.shutdown()  # disconnects; stops the instance if this run started it
    remove_temporaries(job for job in [*jobs, *(o.job for o in decided)])
    settle(jobs, outcomes, before, error, summary)
    summary.report()
    return summary.exit_code()


# ----------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    data: object  # the file's bytes, a uint8 array (Ray ships arrays without copies)
    fp32_bytes: int  # its tensors' size in fp32, what a CPU worker holds at most


def checkpoint_for_workers(args: argparse.Namespace) -> Checkpoint | int:
    """The checkpoint the workers load, or an exit code after printing why not.

    The driver checks the checkpoint once (the same errors as the local run,
    before any cluster work) and ships its bytes through Ray's object store, so
    workers need neither the models folder nor internet access.
    """
    import numpy as np

    import ddcolor

    from .models import fetch_if_published

    models_dir = args.models_dir or ddcolor.default_models_dir()
    try:
        fetch_if_published(args.model, models_dir, args.source)
        path = ddcolor.find_checkpoint(args.model, models_dir)
        model = ddcolor.load_model(path, device="cpu", precision="fp32")  # the checks the workers' load makes
    except (ddcolor.CheckpointError, ddcolor.DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    fp32_bytes = 4 * sum(tensor.numel() for tensor in model.state_dict().values())
    return Checkpoint(path, np.frombuffer(path.read_bytes(), dtype=np.uint8), fp32_bytes)


def connect(ray, address: str) -> str:
    """``ray.init`` for ``--ray [ADDRESS]``; returns what was joined, for the log.

    No address is ``ray.init()``'s own rule: the cluster in ``RAY_ADDRESS``, else
    the one started on this machine with ``ray start``, else a new local instance.
    """
    import logging

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray's usage reporting: off unless asked for
    if address:
        check_reachable(address)
    try:
        ray.init(address=address or None, logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, ValueError) as e:
        raise UsageError(f"--ray {address}: cannot join this Ray cluster ({e}); give the head's host:port, or auto") from None
    nodes = sum(node["Alive"] for node in ray.nodes())
    return f"Ray at {ray.get_runtime_context().gcs_address} ({nodes} node(s))"


def check_reachable(address: str) -> None:
    """Fail in seconds on a host:port where nothing listens (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if not port.isdigit() or "://" in address:  # auto, or a ray:// client address: Ray's to resolve
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise UsageError(f"--ray {address}: nothing answers there ({e.strerror or e}); give the head's address as `ray start --head` printed it, or auto") from None


@dataclass(frozen=True)
class WorkerPlan:
    device: str  # "cuda" or "cpu"
    workers: int
    cpus_per_worker: int
    memory_per_worker: int | None  # bytes Ray reserves per CPU worker, so a node never holds more models than fit

    def describe(self) -> str:
        if self.device == "cuda":
            return f"up to {self.workers} GPU worker(s)"
        return f"up to {self.workers} CPU worker(s) of {self.cpus_per_worker} core(s)"

    def actor_resources(self) -> dict:
        if self.device == "cuda":
            return {"num_gpus": 1}  # Ray Data adds the one core that feeds it
        return {"num_cpus": self.cpus_per_worker, "memory": self.memory_per_worker}

    def io_resources(self, ray) -> dict:
        """Read and write tasks. Beside GPU workers they take the nodes' spare cores
        (as many decoders as there are cores). Beside CPU workers the models hold the
        cores; decoding and encoding are a few percent of a CPU model's time, so they
        reserve none and are bounded instead: one reader and one writer per model."""
        if self.device == "cuda":
            return {"num_cpus": 1}
        return {"num_cpus": 0, "compute": ray.data.TaskPoolStrategy(size=self.workers)}


def plan_workers(ray, device: str, workers: int | None, checkpoint: Checkpoint, size: int) -> WorkerPlan:
    """How many model workers, on which kind of device, holding what.

    GPUs: one worker per GPU (``--workers`` fewer). CPUs: a worker owns a whole
    node, the smallest node's cores, like a local run there (same threads, so
    the same bytes, and one model's memory per node); ``--workers N`` splits the
    cluster's cores N ways instead. PyTorch runs as many threads as the worker
    holds cores (Ray sets OMP_NUM_THREADS).
    """
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if device == "cuda" and not gpus:
        raise UsageError("--device cuda: the Ray cluster has no GPUs; use --device auto or cpu")
    if device != "cpu" and gpus:
        return WorkerPlan("cuda", min(workers or gpus, gpus), 1, None)
    node_cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]]
    node_cpus = [c for c in node_cpus if c > 0]
    if not node_cpus:
        raise UsageError("the Ray cluster has no CPUs to run workers on")
    per_worker = min(node_cpus) if workers is None else max(1, min(min(node_cpus), sum(node_cpus) // workers))
    count = sum(c // per_worker for c in node_cpus)
    return WorkerPlan("cpu", min(workers or count, count), per_worker, cpu_worker_memory(checkpoint.fp32_bytes, size))


# A worker process with PyTorch loaded, before any model, with headroom over what
# Ray Data's memory report at the end of a run shows for one with the small model.
WORKER_BASE_BYTES = 512 << 20


def cpu_worker_memory(weight_bytes: int, size: int) -> int:
    """What one CPU worker needs at most: the process, fp32 weights, one image's activations at ``size``."""
    import ddcolor

    return WORKER_BASE_BYTES + weight_bytes + ddcolor.activation_bytes(None, size, element_size=4)


def run_pipeline(ray, jobs: list[Job], options: Options, plan: WorkerPlan, weights, summary: Summary):
    """Stream every job through the cluster; returns ({row index: Outcome}, error or None)."""
    import ray.data

    rows = [
        {"index": i, "kind": job_kind(job), "source": os.path.abspath(job.source), "target": os.path.abspath(job.target)}
        for i, job in enumerate(jobs)
    ]
    io = plan.io_resources(ray)
    dataset = (
        ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
        .map(read_stage, **io)
        .map_batches(
            ModelWorker, batch_size=1, fn_constructor_args=(options, [weights]),
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.workers),
            **plan.actor_resources(),
        )
        .map(write_stage, fn_kwargs={"quality": options.quality}, **io)
    )
    outcomes: dict[int, Outcome] = {}
    error = None
    with StopRequest() as stop:
        rows_out = iter(dataset.iter_rows())
        try:
            for row in rows_out:
                index = int(row["index"])
                if index in outcomes:  # never expected: Ray delivers each output once
                    continue
                outcome = Outcome(jobs[index], str(row["status"]), str(row["reason"]), float(row["seconds"]))
                outcomes[index] = outcome
                if outcome.status == FAILED:
                    print(f"failed: {relative_name(outcome.job.source)}: {indent(outcome.reason)}", file=sys.stderr, flush=True)
                if stop.requested:
                    break
        except KeyboardInterrupt:  # a second Ctrl-C
            summary.aborted = True
        except Exception as e:  # the run itself failed (e.g. no worker could start); what finished is kept
            error = e
        finally:
            close = getattr(rows_out, "close", None)
            if close is not None:
                close()  # stops Ray Data's execution: nothing new starts
        if stop.requested or summary.aborted:
            error = None  # what broke while stopping was the stop: those images count as not started
    return outcomes, error


def job_kind(job: Job) -> str:
    """"image", or the WHOLE_FILE_JOBS kind that handles this job's source."""
    from .video import is_clip

    return "video" if is_clip(job) else "image"


def colorize_video_job(model, job: Job, options: Options) -> Outcome:
    """A whole clip (or frame folder) on one model worker, stabilization state and all, as the local run does it."""
    from .video import colorize_clip

    # A StopRequest never entered never asks to stop: on a cluster Ctrl-C reaches the driver, not the workers.
    return colorize_clip(model, job, size=options.size, options=options.clip, stop=StopRequest(), summary=Summary(), write=print)


# Registered at import, so that every worker process has it.
WHOLE_FILE_JOBS["video"] = colorize_video_job


def settle(jobs: list[Job], outcomes: dict[int, Outcome], before: dict, error: Exception | None, summary: Summary) -> None:
    """Add one outcome per job to ``summary``, including jobs whose report never came."""
    missing = 0
    for index, job in enumerate(jobs):
        outcome = outcomes.get(index)
        if outcome is None or outcome.status == FAILED:
            written = written_since(job, before[index])
            if written is not None:  # a complete file (renamed into place) whose report was lost
                note = "written; its report was lost" if outcome is None else f"written by an earlier attempt (a retry failed: {outcome.reason})"
                outcome = Outcome(job, DONE, note)
        if outcome is None:
            if error is not None:
                outcome = Outcome(job, FAILED, f"not finished: the Ray run failed ({error_line(error)})", attempted=False)
            else:
                missing += 1
                continue
        summary.add(outcome)
    summary.not_started += missing


def error_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


# ----------------------------------------------------------------------------- outputs on disk


def output_paths(job: Job) -> list[Path]:
    """Where a job's output may land: its target, or a PNG beside it for images with alpha."""
    target = Path(job.target)
    return [target] if target.suffix == ".png" else [target, target.with_suffix(".png")]


def output_identities(job: Job) -> list:
    """What the output paths hold now: enough to tell later whether this run replaced them."""
    return [file_identity(path) for path in output_paths(job)]


def file_identity(path: Path):
    try:
        stat = path.stat()
    except OSError:
        return None
    # A rename puts a new inode at the path; mtime and size guard file systems that reuse inodes.
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def written_since(job: Job, identities: list) -> Path | None:
    for path, identity in zip(output_paths(job), identities):
        now = file_identity(path)
        if now is not None and now != identity:
            return path
    return None


def remove_temporaries(jobs) -> None:
    from .imageio import remove_temporaries as remove

    remove(path for job in jobs for path in output_paths(job))


# ----------------------------------------------------------------------------- on the workers


def read_stage(row: dict) -> dict:
    """Decode one image (a map task); other kinds pass through to their worker."""
    import numpy as np

    from . import image_step

    began = time.perf_counter()
    pixels, error = np.zeros((1, 1, 1), np.uint8), ""
    if row["kind"] == "image":
        try:
            pixels = image_step.read(row["source"])
        except image_step.StepFailed as e:
            error = str(e)
    return {**row, **pack(pixels), "error": error, "seconds": time.perf_counter() - began}


def pack(pixels) -> dict:
    """An image's pixels as bytes (H, W, C * itemsize) and their dtype: images of any bit depth
    can share a Ray Data block (whose tensor column has one dtype); ``unpack`` gives them back exactly."""
    import numpy as np

    pixels = np.ascontiguousarray(pixels)
    return {"image": pixels.view(np.uint8), "dtype": pixels.dtype.str}


def unpack(image, dtype: str):
    import numpy as np

    return np.ascontiguousarray(image).view(np.dtype(dtype))


class ModelWorker:
    """One model per actor, loaded once on the device Ray gave it; ``__call__`` colorizes one image."""

    def __init__(self, options: Options, weights: list):
        import tempfile

        import ray

        import ddcolor

        from .models import resolve_device

        self.options = options
        self.device = resolve_device(options.device)
        with tempfile.TemporaryDirectory(prefix="ddcolor-ray-") as folder:
            path = Path(folder) / options.model_file
            path.write_bytes(ray.get(weights[0]))
            self.model = ddcolor.load_model(
                path, device=self.device, precision=options.precision, strict_precision=options.strict_precision,
            )
        import torch

        node = ray.get_runtime_context().get_node_id()
        threads = f", {torch.get_num_threads()} thread(s)" if self.device == "cpu" else ""
        print(f"worker on node {node}: {self.device} ({ddcolor.precision_plan(self.model).precision}){threads}", flush=True)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from . import image_step

        out = {key: list(values) for key, values in batch.items() if key not in ("image", "dtype")}
        out["pixels"], out["status"], out["reason"] = [], [], []
        for i in range(len(batch["index"])):
            began = time.perf_counter()
            pixels, status, reason = np.zeros((1, 1, 3), np.uint8), "", str(batch["error"][i])
            kind = str(batch["kind"][i])
            if kind != "image":
                status, reason = self.whole_file(kind, Job(Path(batch["source"][i]), Path(batch["target"][i])))
            elif not reason:
                try:
                    pixels = image_step.colorize(self.model, unpack(batch["image"][i], str(batch["dtype"][i])), size=self.options.size)
                except image_step.StepFailed as e:
                    reason = str(e)
            out["pixels"].append(pixels)
            out["status"].append(status)
            out["reason"].append(reason)
            out["seconds"][i] += time.perf_counter() - began
        return out

    def whole_file(self, kind: str, job: Job) -> tuple[str, str]:
        try:
            outcome = WHOLE_FILE_JOBS[kind](self.model, job, self.options)
        except Exception as e:  # one bad file must not end the run
            return FAILED, f"{kind} failed: {e}"
        return outcome.status, outcome.reason


def write_stage(row: dict, *, quality: int) -> dict:
    """Encode and write one image atomically (a map task), with the local run's writer."""
    from . import image_step

    job = Job(Path(row["source"]), Path(row["target"]))
    seconds = float(row["seconds"])
    if row["status"]:  # a whole-file job: already written by its worker
        outcome = Outcome(job, str(row["status"]), str(row["reason"]), seconds)
    elif row["reason"]:
        outcome = Outcome(job, FAILED, str(row["reason"]), seconds)
    else:
        outcome = image_step.write(job, row["pixels"], quality=quality, began=time.perf_counter() - seconds)
    return {"index": row["index"], "status": outcome.status, "reason": outcome.reason, "seconds": outcome.seconds}
