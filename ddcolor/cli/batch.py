"""What a batch command shares: finding inputs, naming outputs, Ctrl-C, the summary.

Used by ``python -m ddcolor colorize`` (local model) and ``queue`` (a ComfyUI
server): both turn INPUT... into one output per image, skip or refuse existing
outputs, stop after the current image on Ctrl-C and end with a summary.
"""

from __future__ import annotations

import contextlib
import glob
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from .imageio import TEMP_SUFFIX, image_extensions

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """The command line asks for something impossible; the message says what to change."""


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


@dataclass
class Outcome:
    job: Job
    status: str
    reason: str = ""
    seconds: float = 0.0
    attempted: bool = True  # False: failed without being tried, for a reason shared by the rest of the batch


# ----------------------------------------------------------------------------- inputs and outputs


# scheme://... as argparse's Path leaves it (scheme:/...); two letters at least, so C:/ stays a path.
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def refuse_uris(*paths) -> None:
    """Inputs and outputs are files on a file system (for a cluster, one every machine sees):
    an object-storage URL would otherwise be read as a missing file or a local folder named s3:."""
    for path in paths:
        if path is not None and URI.match(str(path)):
            raise UsageError(
                f"{path}: URLs are not supported, only paths; mount the bucket or share (s3fs, rclone mount, NFS) "
                "and give its path, the same on every machine of a cluster"
            )


def find_inputs(patterns: list[str], *, recursive: bool = False, extensions: set[str] | None = None) -> list[tuple[Path, Path]]:
    """Expand files, folders and globs into (image path, folder relative to its input root).

    Folders contribute the files whose extension Pillow can open, or is in
    ``extensions`` when given (subfolders too with ``recursive``, mirrored under the output folder); files named
    explicitly are taken whatever their extension, so an unreadable one is
    reported rather than silently dropped. Order is stable: as given, folders
    and globs sorted. A path or glob that matches nothing is a UsageError.
    """
    extensions = extensions or image_extensions()
    found: dict[Path, tuple[Path, Path]] = {}

    def add(path: Path, relative_dir: Path = Path()) -> None:
        found.setdefault(path.resolve(), (path, relative_dir))

    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            walk = path.rglob("*") if recursive else path.glob("*")
            for file in sorted(p for p in walk if p.is_file()):
                hidden = any(part.startswith(".") for part in file.relative_to(path).parts)
                if not hidden and file.suffix.lower() in extensions:
                    add(file, file.parent.relative_to(path))
        elif path.is_file():
            add(path)
        elif glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
            files = [p for p in matches if p.is_file() and not p.name.endswith(TEMP_SUFFIX)]
            if not files:
                raise UsageError(f"{pattern}: no files match this pattern")
            for file in files:
                add(file)
        else:
            raise UsageError(f"{pattern}: no such file or folder")
    if not found:
        raise UsageError(
            f"no images found in {', '.join(patterns)} (looked for {', '.join(sorted(extensions)[:8])}, ...)"
        )
    return list(found.values())


def plan_jobs(
    inputs: list[tuple[Path, Path]],
    *,
    output_dir: Path | None,
    suffix: str,
    extension: str,
    overwrite: bool,
    skip_existing: bool,
) -> tuple[list[Job], list[Outcome]]:
    """Name each input's output; return the jobs to run and the outcomes decided already.

    Outputs go to ``output_dir`` (mirroring subfolders found by a recursive
    folder input), or beside each input when it is None. An input that is
    another input's output (``p_color.png`` beside ``p.png``, from an earlier
    run) is left out, so running the same command again never colorizes its
    own results. An output that already exists is skipped with
    ``skip_existing``, replaced with ``overwrite``, and otherwise stops the
    whole run before any work (a UsageError naming both options). An output
    that would replace its own input, or that two inputs share, fails that input.
    """
    planned = []
    for source, relative_dir in inputs:
        folder = source.parent if output_dir is None else output_dir / relative_dir
        name = source.name if source.is_dir() else source.stem  # a folder of frames (--sequence) keeps any dots
        planned.append(Job(source, folder / f"{name}{suffix}{extension}"))
    outputs_of_others = {
        job.target.resolve() for job in planned if job.target.resolve() != job.source.resolve()
    }
    planned = [job for job in planned if job.source.resolve() not in outputs_of_others]

    jobs: list[Job] = []
    decided: list[Outcome] = []
    existing: list[Path] = []
    claimed: dict[Path, Path] = {}
    input_paths = {job.source.resolve() for job in planned}
    for job in planned:
        key = job.target.resolve()
        if key in input_paths:
            decided.append(Outcome(job, FAILED, "the output would replace the input image; set --suffix or -o"))
        elif key in claimed:
            decided.append(Outcome(job, FAILED, f"same output name as {claimed[key]}; rename one of them"))
        elif job.target.exists() and skip_existing:
            claimed[key] = job.source
            decided.append(Outcome(job, SKIPPED, "output exists"))
        else:
            claimed[key] = job.source
            if job.target.exists() and not overwrite:
                existing.append(job.target)
            jobs.append(job)
    if existing:
        examples = ", ".join(str(p) for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise UsageError(
            f"{len(existing)} output file(s) already exist ({examples}); "
            "pass --skip-existing to keep them or --overwrite to replace them"
        )
    return jobs, decided


# ----------------------------------------------------------------------------- Ctrl-C


class StopRequest:
    """While active, the first Ctrl-C (or SIGTERM) asks the batch to stop after the
    current image instead of killing it mid-write; a second Ctrl-C aborts at once."""

    def __init__(self, say: Callable[[str], None] | None = None, notice: str | None = None):
        self._event = threading.Event()
        self._say = say or (lambda message: print(message, file=sys.stderr, flush=True))
        self._notice = notice or "stopping after the current image"
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def _handle(self, signum, frame) -> None:
        if self._event.is_set():
            raise KeyboardInterrupt
        self._event.set()
        self._say(f"{self._notice} (press Ctrl-C again to abort now)")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# ----------------------------------------------------------------------------- summary


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    not_started: int = 0
    aborted: bool = False
    started: float = field(default_factory=time.perf_counter)
    model_seconds: float = 0.0  # time inside the model, when a local model runs

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def interrupted(self) -> bool:
        return self.aborted or self.not_started > 0

    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.count(FAILED) else EXIT_OK

    def report(self, stream: TextIO | None = None, verb: str = "colorized") -> None:
        stream = stream or sys.stdout
        elapsed = time.perf_counter() - self.started
        done = [o for o in self.outcomes if o.status == DONE]
        line = f"{verb} {len(done)}, skipped {self.count(SKIPPED)}, failed {self.count(FAILED)} in {elapsed:.1f} s"
        if done:
            line += f" ({sum(o.seconds for o in done) / len(done):.2f} s per image"
            line += f", {100 * self.model_seconds / elapsed:.0f}% of the time in the model)" if self.model_seconds else ")"
        print(line, file=stream)
        untried: dict[str, int] = {}
        for outcome in self.outcomes:
            if outcome.status == FAILED and not outcome.attempted:
                untried[outcome.reason] = untried.get(outcome.reason, 0) + 1
            elif outcome.status == FAILED:
                print(f"  failed: {outcome.job.source}: {indent(outcome.reason)}", file=stream)
            elif outcome.status == DONE and outcome.reason:
                print(f"  note: {outcome.job.source}: {outcome.reason}", file=stream)
        for reason, count in untried.items():
            print(f"  not attempted: {count} image(s): {reason}", file=stream)
        if self.interrupted:
            left = f"{self.not_started} image(s) not started" if self.not_started else "aborted"
            print(f"interrupted: {left}; run the same command with --skip-existing to resume", file=stream)
        stream.flush()


def indent(text: str) -> str:
    """Continuation lines of a multi-line reason, indented under their first line."""
    return text.replace("\n", "\n      ")


def relative_name(path: Path) -> str:
    """A short name for progress lines: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def logging_through(write):
    """Send the engine's log lines through ``write`` (tqdm.write keeps the bar
    intact) while the block runs; the logger is restored afterwards."""
    import logging

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            write(self.format(record))

    logger = logging.getLogger("ddcolor")
    saved = logger.handlers[:], logger.level, logger.propagate
    handler = Handler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers, level, logger.propagate = saved[0], saved[1], saved[2]
        logger.setLevel(level)


# ----------------------------------------------------------------------------- progress


def terminal_bar(stream: TextIO, **options):
    """A tqdm bar on ``stream`` when it is a terminal, else None: logs and CI get plain lines instead."""
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(file=stream, dynamic_ncols=True, **options)


class Progress:
    """A tqdm bar on a terminal; one line per image otherwise (logs, CI), each with its time."""

    def __init__(self, total: int, *, unit: str = "img", stream: TextIO | None = None, done: int = 0):
        self._stream = stream or sys.stderr
        self._total = total
        self._count = done
        self._bar = terminal_bar(self._stream, total=total, initial=done, unit=unit)

    def finished(self, outcome: Outcome) -> None:
        name = relative_name(outcome.job.source)
        if outcome.status == FAILED and outcome.attempted:
            self.write(f"failed: {name}: {indent(outcome.reason)}")
        line = None if outcome.status == FAILED else f"[{self._count + 1}/{self._total}] {name}: {outcome.seconds:.2f} s"
        self.advance(f"{name} {outcome.seconds:.2f}s", line)

    def advance(self, note: str, line: str | None) -> None:
        """One more done: ``note`` beside the bar on a terminal, else ``line`` printed (unless None)."""
        self._count += 1
        if self._bar is not None:
            self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(1)
        elif line is not None:
            self.write(line)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=self._stream)
        else:
            print(message, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
