"""``python -m ddcolor``: colorize folders of photos, fetch models, drive a ComfyUI server, fine-tune.

    python -m ddcolor colorize photos/ -o colored/ --preset person
    python -m ddcolor colorize home_movie.mp4 -o colored/      # writes colored/home_movie_color.mp4
    python -m ddcolor download ddcolor_paper_tiny
    python -m ddcolor info
    python -m ddcolor queue --workflow workflows/api/ddcolor_person.json photos/ -o colored/
    python -m ddcolor finetune my_photos/ -o my_ddcolor.pth --steps 2000

Exit status: 0 all done or skipped, 1 some image failed (or a model or server
problem), 2 a usage error (nothing was done), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .batch import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    FAILED,
    Job,
    Outcome,
    Progress,
    StopRequest,
    Summary,
    UsageError,
    logging_through,
    find_inputs,
    plan_jobs,
    refuse_uris,
)

PRESETS = {"person": 640, "building": 1024}
DEFAULT_SIZE = 512
FORMATS = {"png": ".png", "jpg": ".jpg"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # outside a batch (loading or downloading a model): nothing to finish
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


# ----------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    from .. import DEFAULT_MODEL, PRECISIONS, PUBLISHED, SOURCES

    parser = argparse.ArgumentParser(
        prog="python -m ddcolor",
        description="DDColor photo colorization: batch colorize, download models, drive a ComfyUI server, fine-tune on your photos.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    published = ", ".join(PUBLISHED)

    def add_source_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--source", choices=[*SOURCES, "auto"], help="where missing published models are downloaded from (default: $DDCOLOR_SOURCE, else auto: Hugging Face, then ModelScope if it cannot be reached)")

    def add_batch_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, folders or glob patterns ('scans/*.tif')")
        p.add_argument("-o", "--output", type=Path, metavar="OUTDIR", help="output folder (default: beside each input)")
        p.add_argument("-r", "--recursive", action="store_true", help="also take images in subfolders of folder inputs")
        p.add_argument("--suffix", default="_color", help="added to each output's name (default: %(default)s)")
        existing = p.add_mutually_exclusive_group()
        existing.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
        existing.add_argument("--skip-existing", action="store_true", help="leave outputs that exist alone (resume a batch)")

    c = commands.add_parser("colorize", help="colorize images with a local model", description="Colorize images with a local DDColor model, loaded once for the whole batch.")
    c.set_defaults(command=cmd_colorize)
    add_batch_options(c)
    c.add_argument("--model", default=DEFAULT_MODEL, help=f"published name ({published}; downloaded on first use) or checkpoint path (default: %(default)s)")
    c.add_argument("--models-dir", type=Path, help="where published models are kept (default: see `python -m ddcolor info`)")
    add_source_option(c)
    size = c.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, help=f"working resolution of the network, a multiple of 32 (default: {DEFAULT_SIZE})")
    size.add_argument("--preset", choices=PRESETS, help="; ".join(f"{k}: size {v}" for k, v in PRESETS.items()))
    c.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    c.add_argument("--precision", default="auto", choices=PRECISIONS, help="compute precision (default: %(default)s: fp16 on a GPU; on a CPU mixed, bf16 only in the heaviest layers, where it has AMX or AVX-512 bf16 units, else fp32; `python -m ddcolor info` shows what each runs here)")
    c.add_argument("--strict-precision", action="store_true", help="run --precision even where it is slow or unsupported (e.g. fp16 on a CPU), not the closest fast one (`python -m ddcolor info` shows which run as what here)")
    c.add_argument("--format", default="png", choices=FORMATS, help="output format (default: %(default)s; images with alpha are always PNG)")
    c.add_argument("--quality", type=int, default=95, help="JPEG quality 1-95 (default: %(default)s)")
    add_video_options(c)
    c.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="run on a Ray cluster: alone, the local one (started if none runs); or auto, or the head's host:port (needs the ray extra)")
    c.add_argument("--workers", type=int, metavar="N", help="with --ray: at most N model workers (default: one per GPU; on CPUs one per node, N splits the cores N ways)")

    d = commands.add_parser("download", help="fetch published models ahead of time", description="Download published DDColor checkpoints into the models folder.")
    d.set_defaults(command=cmd_download)
    d.add_argument("names", nargs="*", metavar="NAME", help=f"{published}, or all (default: {DEFAULT_MODEL})")
    d.add_argument("--models-dir", type=Path, help="destination (default: see `python -m ddcolor info`)")
    add_source_option(d)

    i = commands.add_parser("info", help="devices, precisions, models folder", description="Show devices, their precisions, where models are looked for and which are present.")
    i.set_defaults(command=cmd_info)
    i.add_argument("--models-dir", type=Path, help="models folder to inspect (default: the one the other commands use)")

    q = commands.add_parser("queue", help="colorize through a ComfyUI server's API", description="Send each image through an API-format workflow on a running ComfyUI server and download the results.")
    q.set_defaults(command=cmd_queue)
    add_batch_options(q)
    q.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI address (default: %(default)s)")
    q.add_argument("--workflow", type=Path, required=True, help="workflow in ComfyUI's API format (e.g. workflows/api/ddcolor_person.json)")
    q.add_argument("--input-node", help="id of the LoadImage node to feed (needed only when the workflow has several)")
    q.add_argument("--jobs", type=int, default=2, help="images in flight on the server at once (default: %(default)s)")
    q.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one image's result (default: %(default)s)")
    q.add_argument("--request-timeout", type=float, default=30.0, help="seconds to wait for one HTTP answer (default: %(default)s)")
    q.add_argument("--reconnect", type=float, default=30.0, help="seconds to wait for an unreachable server to come back (default: %(default)s)")
    from .finetune import add_finetune_parser

    add_finetune_parser(commands, default_model=DEFAULT_MODEL, published=published)
    return parser


# ----------------------------------------------------------------------------- colorize


def cmd_colorize(args: argparse.Namespace) -> int:
    if not 1 <= args.quality <= 95:
        raise UsageError(f"--quality {args.quality}: use 1 to 95 (Pillow's JPEG scale; above 95 only grows files)")
    if args.size is not None and args.size < 32:
        raise UsageError(f"--size {args.size}: use at least 32 (512 is the default; {', '.join(f'{v} for {k}' for k, v in PRESETS.items())})")
    from .. import video as engine
    from . import video

    summary = Summary()
    size = args.size or PRESETS.get(args.preset, DEFAULT_SIZE)
    refuse_uris(*args.inputs, args.output)
    clip_options = video_options(args)
    jobs, decided = plan_colorize_jobs(args)
    for outcome in decided:
        summary.add(outcome)
    if args.ray is not None:  # each worker picks its own device; the driver needs none
        from .ray_runner import colorize_on_ray

        return colorize_on_ray(args, jobs, decided, summary, size=size, clip=clip_options)
    if args.workers is not None:
        raise UsageError("--workers applies to --ray runs; a local run has one model")
    from .models import resolve_device

    device = resolve_device(args.device)
    if not jobs:
        summary.report()
        return summary.exit_code()
    clips = sum(video.is_clip(job) for job in jobs)
    if clips:
        try:
            engine.import_av()
        except engine.VideoError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILED

    import ddcolor

    from .models import fetch_if_published

    models_dir = args.models_dir or ddcolor.default_models_dir()
    try:
        fetch_if_published(args.model, models_dir, args.source)
    except ddcolor.DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    progress = Progress(len(jobs), unit="file" if clips else "img")
    with logging_through(progress.write):
        try:
            model = ddcolor.load_model(
                args.model, device=device, precision=args.precision,
                strict_precision=args.strict_precision, models_dir=models_dir,
            )
        except (ddcolor.CheckpointError, ddcolor.DownloadError) as e:
            progress.close()
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILED
        report_decided_failures(decided, progress)
        progress.write(f"model {args.model} on {device} ({ddcolor.precision_plan(model).precision}), size {ddcolor.snap_size(size)}, {describe_jobs(len(jobs) - clips, clips, clip_options, args)}")
        notice = "stopping after the current image; a video stops at its next frames and is not written" if clips else None
        try:
            with StopRequest(progress.write, notice=notice) as stop:
                colorize_jobs(model, jobs, size=size, quality=args.quality, stop=stop, summary=summary, progress=progress, clip_options=clip_options)
        finally:
            progress.close()
            summary.report()
    return summary.exit_code()


def colorize_jobs(model, jobs: list[Job], *, size: int, quality: int, stop: StopRequest, summary: Summary, progress: Progress, clip_options=None) -> None:
    """Colorize ``jobs`` in order until done or asked to stop.

    Each image goes through ``image_step`` (read, colorize, write); its write
    runs in a background thread while the model works on the next image, so a
    GPU does not wait for PNG encoding (benchmarks/bench_cli.py measures both ways).

    Videos and frame folders (``clip_options`` given) are streamed by video.colorize_clip.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from . import image_step
    from .video import colorize_clip, is_clip

    pending: Future | None = None  # the previous image's write

    def record(outcome: Outcome) -> None:
        summary.add(outcome)
        progress.finished(outcome)

    def settle() -> None:
        nonlocal pending
        if pending is not None:
            done, pending = pending, None
            record(done.result())

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ddcolor-writer") as writer:
        try:
            for index, job in enumerate(jobs):
                if stop.requested:
                    summary.not_started = len(jobs) - index
                    break
                began = time.perf_counter()
                if clip_options is not None and is_clip(job):
                    settle()
                    record(colorize_clip(model, job, size=size, options=clip_options, stop=stop, summary=summary, write=progress.write))
                    continue
                try:
                    pixels = image_step.read(job.source)
                    model_began = time.perf_counter()
                    colored = image_step.colorize(model, pixels, size=size)
                    summary.model_seconds += time.perf_counter() - model_began
                except image_step.StepFailed as e:
                    settle()
                    record(Outcome(job, FAILED, str(e), time.perf_counter() - began))
                    continue
                settle()
                pending = writer.submit(image_step.write, job, colored, quality=quality, began=began)
            settle()
        except KeyboardInterrupt:  # a second Ctrl-C: the write under way still completes (atomically)
            summary.aborted = True
    if pending is not None:  # finished when the writer shut down
        record(pending.result())


def add_video_options(p: argparse.ArgumentParser) -> None:
    from .. import RECOMMENDED_STRENGTH
    from ..video import DEFAULT_CRF
    from .video import DEFAULT_SEQUENCE_FPS

    v = p.add_argument_group("video", "Video files (.mp4, .mov, .mkv, .avi, ...) become H.264 MP4 with their audio, frame rate and timing.")
    v.add_argument("--temporal", type=float, metavar="S", help=f"stabilize colors over time, 0-1 (default: {RECOMMENDED_STRENGTH:g}, the recommended strength; 0: each frame on its own)")
    v.add_argument("--sequence", action="store_true", help="each folder of images is the frames of one clip, in natural name order (frame_2 before frame_10); written as one video")
    v.add_argument("--fps", default=str(DEFAULT_SEQUENCE_FPS), help="frame rate of --sequence clips: 24, 18, 25, 24000/1001, ... (default: %(default)s)")
    v.add_argument("--crf", type=int, default=DEFAULT_CRF, help="H.264 quality: 0 lossless, 18 visually lossless, 23 smaller (default: %(default)s)")


def video_options(args: argparse.Namespace):
    from .. import RECOMMENDED_STRENGTH
    from .video import ClipOptions, parse_fps

    temporal = RECOMMENDED_STRENGTH if args.temporal is None else args.temporal
    if not 0.0 <= temporal <= 1.0:
        raise UsageError(f"--temporal {args.temporal:g}: use 0 to 1 ({RECOMMENDED_STRENGTH:g} is recommended; 0 turns stabilization off)")
    if not 0 <= args.crf <= 51:
        raise UsageError(f"--crf {args.crf}: use 0 (lossless) to 51 (smallest); 18 is the default")
    return ClipOptions(temporal=temporal, crf=args.crf, fps=parse_fps(args.fps))


def plan_colorize_jobs(args: argparse.Namespace) -> tuple[list[Job], list[Outcome]]:
    """Images become images (``--format``); videos, and frame folders with ``--sequence``, become MP4."""
    from .imageio import image_extensions
    from .video import OUTPUT_EXTENSION, VIDEO_EXTENSIONS, is_video, split_sequences

    sequences, patterns = split_sequences(args.inputs, recursive=args.recursive) if args.sequence else ([], args.inputs)
    files = find_inputs(patterns, recursive=args.recursive, extensions=image_extensions() | VIDEO_EXTENSIONS) if patterns else []
    common = dict(output_dir=args.output, suffix=args.suffix, overwrite=args.overwrite, skip_existing=args.skip_existing)
    images, image_outcomes = plan_jobs([f for f in files if not is_video(f[0])], extension=FORMATS[args.format], **common)
    clips, clip_outcomes = plan_jobs([f for f in files if is_video(f[0])] + sequences, extension=OUTPUT_EXTENSION, **common)
    return images + clips, image_outcomes + clip_outcomes


def describe_jobs(images: int, clips: int, options, args: argparse.Namespace) -> str:
    parts = [f"{images} image(s)"] if images or not clips else []
    if clips:
        stabilized = f"stabilized at {options.temporal:g}" if options.temporal > 0 else "not stabilized (--temporal 0)"
        parts.append(f"{clips} video(s), {stabilized}" + (f", sequences at {options.fps} fps" if args.sequence else ""))
    return ", ".join(parts)


def report_decided_failures(decided: list[Outcome], progress: Progress) -> None:
    for outcome in decided:
        if outcome.status == FAILED:
            progress.write(f"failed: {outcome.job.source}: {outcome.reason}")


# ----------------------------------------------------------------------------- download / info


def cmd_download(args: argparse.Namespace) -> int:
    import ddcolor

    from .models import download_with_progress

    names = args.names or [ddcolor.DEFAULT_MODEL]
    if "all" in names:
        names = list(ddcolor.PUBLISHED)
    unknown = [n for n in names if ddcolor.published_entry(n) is None]
    if unknown:
        raise UsageError(f"unknown model {', '.join(unknown)}; choose from {', '.join(ddcolor.PUBLISHED)} or all")
    folder = args.models_dir or ddcolor.default_models_dir()
    failed = 0
    for entry in dict.fromkeys(ddcolor.published_entry(n) for n in names):
        name = entry.name
        target = folder / entry.filename
        if target.is_file():
            print(f"{name}: already present at {target}")
            continue
        try:
            print(f"{name}: downloading {entry.url(args.source)} into {folder}", flush=True)
            path = download_with_progress(name, folder, args.source)
        except ddcolor.DownloadError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: saved {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    import os

    import torch

    import ddcolor

    from .models import resolve_device

    print(f"ddcolor with PyTorch {torch.__version__}")
    print(f"default device: {resolve_device('auto')}")
    devices = ["cpu"]
    devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    for device in devices:
        label = f" ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else ""
        fast = ddcolor.fast_precisions(device)
        line = f"  {device}{label}: precisions {', '.join(fast)} (auto = {fast[0]})"
        slow = [p for p in ddcolor.PRECISIONS if p != "auto" and p not in fast]
        if slow:
            substitutes = [f"{p} runs as {ddcolor.resolve_precision(p, device).precision}" for p in slow]
            line += f"; {', '.join(substitutes)} unless --strict-precision"
        print(line)

    folder = args.models_dir or ddcolor.default_models_dir()
    if args.models_dir:
        origin = "--models-dir"
    elif os.environ.get("DDCOLOR_MODELS_DIR"):
        origin = "$DDCOLOR_MODELS_DIR"
    elif folder.name == "weights":
        origin = "the repository's weights/ folder"
    else:
        origin = "default; set $DDCOLOR_MODELS_DIR or --models-dir to change"
    print(f"models folder: {folder} ({origin}){'' if folder.is_dir() else ' - does not exist yet'}")
    published_files = set()
    for name, entry in ddcolor.PUBLISHED.items():
        path = folder / entry.filename
        published_files.add(entry.filename)
        state = f"present, {path.stat().st_size / 2**20:.0f} MiB" if path.is_file() else "missing: python -m ddcolor download " + name
        print(f"  {name:<20} {entry.variant:<6} {state}")
    others = sorted(
        p.name for p in folder.glob("*")
        if p.suffix in ddcolor.CHECKPOINT_EXTENSIONS and p.name not in published_files
    ) if folder.is_dir() else []
    if others:
        print(f"  other checkpoints (use with --model PATH): {', '.join(others)}")
    print(f"downloads: {describe_downloads()}")
    return EXIT_OK


def describe_downloads() -> str:
    """Where missing published models come from, as the environment sets it."""
    import ddcolor

    if ddcolor.downloads_off():
        return "off (HF_HUB_OFFLINE is set)"
    try:
        sources = ddcolor.download_sources()
    except ddcolor.DownloadError as e:
        return str(e)
    described = []
    for source in sources:
        hosted = [name for name, entry in ddcolor.PUBLISHED.items() if source.has(entry)]
        only = "" if len(hosted) == len(ddcolor.PUBLISHED) else f"; has {', '.join(hosted)} only"
        described.append(f"{source.label} at {source.endpoint()} (${source.endpoint_variable}{only})")
    return ", then ".join(described) + "; choose with $DDCOLOR_SOURCE or --source"


# ----------------------------------------------------------------------------- queue


def cmd_queue(args: argparse.Namespace) -> int:
    from .comfy_client import ComfyClient, ComfyError, load_workflow, queue_jobs

    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: use 1 or more")
    workflow, input_node = load_workflow(args.workflow, args.input_node)
    summary = Summary()
    refuse_uris(*args.inputs, args.output)
    inputs = find_inputs(args.inputs, recursive=args.recursive)
    # The server picks the file type; PNG is what SaveImage writes.
    jobs, decided = plan_jobs(
        inputs, output_dir=args.output, suffix=args.suffix, extension=".png",
        overwrite=args.overwrite, skip_existing=args.skip_existing,
    )
    for outcome in decided:
        summary.add(outcome)
    client = ComfyClient(args.server, request_timeout=args.request_timeout, reconnect=args.reconnect)
    try:
        client.check()
    except ComfyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if not jobs:
        summary.report()
        return summary.exit_code()
    progress = Progress(len(jobs))
    report_decided_failures(decided, progress)
    progress.write(f"{args.server}: {len(jobs)} image(s) through {args.workflow.name} (node {input_node}), {args.jobs} at a time")
    try:
        with StopRequest(progress.write) as stop:
            queue_jobs(client, workflow, input_node, jobs, jobs_at_once=args.jobs, timeout=args.timeout,
                       stop=stop, summary=summary, progress=progress)
    finally:
        progress.close()
        summary.report(verb="done")
    return summary.exit_code()
