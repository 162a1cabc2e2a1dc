"""Where DDColor checkpoints live in ComfyUI, and the one model kept loaded between prompts.

Nothing here imports ComfyUI at module level: the nodes pass folders and
devices in, so these rules are testable without a ComfyUI; ``checkpoint_files``
and ``download_progress`` ask ComfyUI when called.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import Callable, Hashable, Iterable, Sequence

from ..ddcolor import CHECKPOINT_EXTENSIONS, PUBLISHED, download, published_entry

log = logging.getLogger("ddcolor")

# ComfyUI folder name: models/ddcolor, plus any `ddcolor:` entry of extra_model_paths.yaml.
FOLDER_NAME = "ddcolor"


def register_models_folder() -> str | None:
    """Add ``models/ddcolor`` to ComfyUI's model folders; a no-op outside ComfyUI.

    ``add_model_folder_path`` keeps folders the user configured in
    extra_model_paths.yaml (assigning ``folder_names_and_paths`` would drop
    them). ``is_default`` puts models/ddcolor first, where downloads go.
    """
    try:
        import folder_paths
    except ImportError:
        return None
    path = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    folder_paths.add_model_folder_path(FOLDER_NAME, path, is_default=True)
    return path


def checkpoint_files() -> list[str]:
    """Files in ComfyUI's ddcolor folders; none outside ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return []
    return folder_paths.get_filename_list(FOLDER_NAME)


def is_checkpoint_file(relative_path: str) -> bool:
    """A checkpoint file name, not a download leftover (huggingface_hub keeps those in .cache/)."""
    parts = PurePosixPath(relative_path.replace(os.sep, "/")).parts
    return (
        bool(parts)
        and relative_path.lower().endswith(CHECKPOINT_EXTENSIONS)
        and not any(part.startswith(".") for part in parts)
    )


def model_choices(files: Iterable[str]) -> list[str]:
    """The ``model`` widget's list: published names first, then other checkpoint files.

    A downloaded ``ddcolor_modelscope.pth`` is listed once, by its published name.
    """
    published_files = {entry.filename for entry in PUBLISHED.values()}
    others = sorted({f for f in files if is_checkpoint_file(f) and f not in published_files})
    return [*PUBLISHED, *others]


def locate_checkpoint(
    choice: str,
    folders: Sequence[str | os.PathLike],
    download_progress: Callable[[int, int], None] | None = None,
    *,
    fetch: bool = True,
) -> Path:
    """The file behind a ``model`` widget value, downloading a published one if it is missing.

    ``folders`` are ComfyUI's ddcolor folders, first one first; a missing
    published checkpoint is downloaded into the first (``fetch=False``: only its
    path there). Raises FileNotFoundError naming the folders, or
    ``ddcolor.DownloadError`` naming the URL.
    """
    folders = [Path(f) for f in folders]
    if not folders:
        raise FileNotFoundError(f"no '{FOLDER_NAME}' model folder is registered with ComfyUI")
    relative = PurePosixPath(choice.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise FileNotFoundError(f"model {choice!r}: give a file name inside the {FOLDER_NAME} model folder")
    entry = published_entry(choice)
    filename = entry.filename if entry else str(relative)
    for folder in folders:
        if (folder / filename).is_file():
            return folder / filename
    if entry and not fetch:
        return folders[0] / filename
    if entry:
        log.info("ddcolor: %s is not in %s; downloading %s", filename, folders[0], entry.url())
        return download(entry.name, folders[0], progress=download_progress)
    raise FileNotFoundError(
        f"model {choice!r} is not in {', '.join(map(str, folders))}. Put the checkpoint there and refresh "
        f"the node list (press R), or choose a published model: {', '.join(PUBLISHED)}"
    )


def download_progress() -> Callable[[int, int], None]:
    """A callback that shows download bytes on the node's progress bar, created on the first report."""
    import comfy.utils

    bar = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if total <= 0:
            return
        if bar is None:
            bar = comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)

    return report


def cache_key(path: Path, precision: str, device: object) -> tuple:
    """What identifies a loaded model; a replaced file (new mtime or size) counts as a new model."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size, precision, str(device))


class ModelCache:
    """Keeps the model used last, so the next prompt reuses it.

    One entry only: a different key drops the old model before the new one is
    built, so two models never sit in memory together.
    """

    def __init__(self) -> None:
        self._key: Hashable | None = None
        self._value: object | None = None

    def get(self, key: Hashable, build: Callable[[], object]) -> object:
        if key != self._key:
            self.clear()
            self._value = build()
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key = None
        self._value = None
