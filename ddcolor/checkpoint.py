"""Checkpoint I/O: every published DDColor format, strict validation, downloads.

Formats read (never unpickling code: ``weights_only=True`` or safetensors):

* ``{'params': state_dict}`` .pth, as on Hugging Face ``piddnad/DDColor-models``;
* a raw state dict in .pth / .pt / .bin (ModelScope's ``pytorch_model.pt``);
* ``.safetensors``;
* a Hugging Face model folder: ``config.json`` beside ``model.safetensors`` or
  ``pytorch_model.bin`` (``piddnad/ddcolor_*``).

Hyperparameters come from tensor shapes, so no config is ever needed. Loading
is strict: the published files' leftover classifier head
(``encoder.arch.head_cls.*``) is dropped by name, anything else unexpected or
missing is an error that names the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import torch
from torch import Tensor

from .model import DDColor, DDColorConfig

log = logging.getLogger("ddcolor")

# Keys that the published .pth files carry but the network never used; the
# original code only got rid of them by loading with strict=False.
IGNORED_KEYS = ("encoder.arch.head_cls.weight", "encoder.arch.head_cls.bias")
# File name endings of checkpoints (what a models folder lists as usable).
CHECKPOINT_EXTENSIONS = (".pth", ".pt", ".bin", ".safetensors")
# The weights file of a Hugging Face model folder, in the order they are looked for.
HF_FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")
HF_ENDPOINT = "https://huggingface.co"
MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"


class CheckpointError(ValueError):
    """A file that cannot be used as a DDColor checkpoint; the message says which and why."""


@dataclass(frozen=True)
class PublishedCheckpoint:
    name: str
    repo_id: str  # on Hugging Face
    filename: str  # its file there, and the name it is saved under
    variant: str
    description: str
    modelscope: tuple[str, str] | None = None  # (model id, file) where ModelScope has a copy

    def url(self, source: str | None = None) -> str:
        """Where the file is fetched from first: on the first of ``download_sources(source)`` that has it."""
        return next((s for s in download_sources(source) if s.has(self)), HUGGING_FACE).url(self)


PUBLISHED: dict[str, PublishedCheckpoint] = {
    c.name: c
    for c in (
        PublishedCheckpoint(
            "ddcolor_modelscope", "piddnad/DDColor-models", "ddcolor_modelscope.pth", "large",
            "ImageNet, BigColor-style data cleaning; the authors' default for photos outside ImageNet",
            # The authors' ModelScope model (piddnad/DDColor README, "Inference with ModelScope"),
            # which the modelscope library also uses for its image-colorization pipeline.
            modelscope=("damo/cv_ddcolor_image-colorization", "pytorch_model.pt"),
        ),
        PublishedCheckpoint(
            "ddcolor_artistic", "piddnad/DDColor-models", "ddcolor_artistic.pth", "large",
            "ImageNet plus artistic images, no colorfulness loss; calmer colors",
        ),
        PublishedCheckpoint(
            "ddcolor_paper", "piddnad/DDColor-models", "ddcolor_paper.pth", "large",
            "the model of the ICCV 2023 paper (ImageNet)",
        ),
        PublishedCheckpoint(
            "ddcolor_paper_tiny", "piddnad/DDColor-models", "ddcolor_paper_tiny.pth", "tiny",
            "ConvNeXt-T encoder, paper training scheme; smallest and fastest",
        ),
    )
}
# What the command line and the nodes load when no model is named: the authors' default for photos.
DEFAULT_MODEL = "ddcolor_modelscope"


def published_entry(name: str | os.PathLike) -> PublishedCheckpoint | None:
    """The published checkpoint ``name`` names, with or without its ``.pth``; None for anything else."""
    return PUBLISHED.get(str(name).removesuffix(".pth"))


# ----------------------------------------------------------------------------- reading


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read the raw tensors of a checkpoint file or Hugging Face model folder."""
    path = weights_file(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (an interrupted download?); delete it and download it again")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def weights_file(path: str | os.PathLike) -> Path:
    """The file a checkpoint path is read from: itself, or a Hugging Face model folder's weights file."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in HF_FOLDER_FILES:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(
        f"{path} is a folder but holds neither {' nor '.join(HF_FOLDER_FILES)}; "
        "point to a checkpoint file or a Hugging Face model folder"
    )


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types and OSError
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated") from e


def _read_torch(path: Path) -> dict[str, Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        message = str(e)
        if "Unsupported global" in message or "Unsupported class" in message:
            reason = "it contains Python objects besides tensors, and loading it could run code; refusing"
        elif "zip archive" in message or "central directory" in message:
            reason = "it is truncated or corrupt (an interrupted download?)"
        else:
            reason = "it is not a PyTorch checkpoint (nor a safetensors file: those need the .safetensors suffix)"
        raise CheckpointError(f"cannot read {path}: {reason}") from e
    for wrapper in ("params", "params_ema", "state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
            break
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; it is not a DDColor checkpoint")
    return data


# ----------------------------------------------------------------------------- validation


def config_from_state_dict(state: dict[str, Tensor], source: str = "checkpoint") -> DDColorConfig:
    """Read the architecture off tensor names and shapes."""

    def shape(key: str) -> torch.Size:
        if key not in state:
            raise CheckpointError(
                f"{source} is not a DDColor checkpoint: it has no '{key}' "
                f"(it has {len(state)} tensors, e.g. {', '.join(list(state)[:3]) or 'none'})"
            )
        return state[key].shape

    def count(pattern: str) -> int:
        regex = re.compile(pattern)
        return len({m.group(1) for k in state if (m := regex.match(k))})

    depths = tuple(count(rf"encoder\.arch\.stages\.{i}\.(\d+)\.gamma$") for i in range(4))
    dims = tuple(shape(f"encoder.arch.stages.{i}.0.norm.weight")[0] for i in range(4))
    queries, hidden = shape("decoder.color_decoder.query_feat.weight")
    outputs = shape("refine_net.0.0.weight_orig")[0]
    if outputs != 2:
        raise CheckpointError(f"{source} predicts {outputs} channels; DDColor colorization checkpoints predict 2 (ab)")
    return DDColorConfig(
        depths=depths,
        dims=dims,
        nf=shape("decoder.layers.0.conv.0.weight_orig")[0],
        num_queries=queries,
        num_scales=shape("decoder.color_decoder.level_embed.weight")[0],
        dec_layers=count(r"decoder\.color_decoder\.transformer_ffn_layers\.(\d+)\."),
        hidden_dim=hidden,
        ffn_dim=shape("decoder.color_decoder.transformer_ffn_layers.0.linear1.weight")[0],
    )


def fold_spectral_norm(state: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Replace each ``weight_orig``/``weight_u``/``weight_v`` triple by the plain weight.

    Computes what ``torch.nn.utils.spectral_norm`` computes in eval mode: the
    stored vectors, no power iteration, ``weight_orig / (u . (W v))``.
    """
    folded = dict(state)
    for key in [k for k in state if k.endswith(".weight_orig")]:
        prefix = key[: -len("_orig")]
        try:
            weight, u, v = (folded.pop(prefix + s).float() for s in ("_orig", "_u", "_v"))
        except KeyError as e:
            raise CheckpointError(f"{source} has {key} but not {e.args[0]}; the file is incomplete") from e
        if u.shape != (weight.shape[0],) or v.shape != (weight[0].numel(),):
            raise CheckpointError(f"{source}: spectral-norm vectors of {prefix} do not match its weight {tuple(weight.shape)}")
        folded[prefix] = weight / spectral_sigma(weight, u, v)
    return folded


def spectral_sigma(weight: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """The spectral norm estimate ``u . (W v)`` of a conv weight (rows: output channels)."""
    return torch.dot(u, torch.mv(weight.flatten(1), v))


def network_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without a DataParallel ``module.`` prefix and without ``IGNORED_KEYS``."""
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if k not in IGNORED_KEYS}


def model_from_state_dict(state: dict[str, Tensor], source: str = "checkpoint") -> DDColor:
    """Build the network on the CPU in FP32 and load ``state`` strictly.

    The model takes ``state``'s FP32 tensors as its own (no copy), so anything
    that changes the model in place (``apply_precision`` balances it for half)
    changes them: pass copies to keep ``state``.
    """
    state = network_tensors(state)
    config = config_from_state_dict(state, source)
    state = fold_spectral_norm(state, source)
    with torch.device("meta"):
        model = DDColor(config)
    load_strictly(model, state, source)
    return model.eval().requires_grad_(False)


def load_strictly(model: DDColor, state: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` (built on the meta device) as FP32, or say what does not match."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(
            f"{source} does not match the DDColor {model.config.variant} layout: {'; '.join(problems)} keys. "
            "It is truncated, from another model, or from an unsupported DDColor variant."
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
            )
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.name = Path(source).name


# ----------------------------------------------------------------------------- locating and downloading


def default_models_dir() -> Path:
    """Where standalone use keeps checkpoints: $DDCOLOR_MODELS_DIR, else the
    repository's weights/ folder, else ~/.cache/ddcolor."""
    if os.environ.get("DDCOLOR_MODELS_DIR"):
        return Path(os.environ["DDCOLOR_MODELS_DIR"])
    repo_weights = Path(__file__).resolve().parent.parent / "weights"
    if repo_weights.is_dir():
        return repo_weights
    return Path.home() / ".cache" / "ddcolor"


def resolve_source(source: str | os.PathLike, models_dir: str | os.PathLike | None = None) -> Path:
    """A checkpoint path, or a published name (downloaded into ``models_dir`` if missing)."""
    path = Path(source)
    if path.exists():
        return path
    entry = published_entry(source)
    if entry is not None:
        return download(entry.name, models_dir or default_models_dir())
    raise CheckpointError(
        f"{source} is neither an existing checkpoint file or folder nor a published model "
        f"({', '.join(PUBLISHED)})"
    )


def find_checkpoint(source: str | os.PathLike, models_dir: str | os.PathLike | None = None) -> Path:
    """The weights file behind ``source`` (a file, a Hugging Face folder, or a published name, downloaded if missing)."""
    return weights_file(resolve_source(source, models_dir))


class DownloadError(RuntimeError):
    """A published checkpoint could not be fetched; the message says how to get it by hand."""


LOOKUP_TIMEOUT_S = 10  # for a source's first answer: an unreachable one is passed over quickly
DOWNLOAD_TIMEOUT_S = 30
DOWNLOAD_ATTEMPTS = 5


@dataclass(frozen=True)
class RemoteFile:
    """What a source says about a file before its bytes are fetched."""

    url: str  # where the bytes are, after the source's redirects
    size: int | None
    sha256: str | None
    headers: dict[str, str]


class DownloadSource:
    """A site that serves published checkpoints, and the environment variables that point it elsewhere."""

    name: str  # as DDCOLOR_SOURCE spells it
    label: str
    endpoint_variable: str

    def endpoint(self) -> str:
        raise NotImplementedError

    def has(self, entry: PublishedCheckpoint) -> bool:
        raise NotImplementedError

    def url(self, entry: PublishedCheckpoint) -> str:
        raise NotImplementedError

    def locate(self, entry: PublishedCheckpoint) -> RemoteFile:
        raise NotImplementedError


class HuggingFace(DownloadSource):
    name, label, endpoint_variable = "huggingface", "Hugging Face", "HF_ENDPOINT"

    def endpoint(self) -> str:
        return (os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")

    def has(self, entry: PublishedCheckpoint) -> bool:
        return True

    def url(self, entry: PublishedCheckpoint) -> str:
        return f"{self.endpoint()}/{entry.repo_id}/resolve/main/{entry.filename}"

    def locate(self, entry: PublishedCheckpoint) -> RemoteFile:
        """huggingface_hub asks the Hub: tokens, the redirect to its CDN, size and ETag."""
        from huggingface_hub import get_hf_file_metadata
        from huggingface_hub.utils import build_hf_headers

        metadata = get_hf_file_metadata(self.url(entry), timeout=LOOKUP_TIMEOUT_S)
        # The ETag of a large (LFS) file is its SHA-256; other ETags are not checkable.
        etag = (metadata.etag or "").strip('"')
        sha256 = etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None
        return RemoteFile(metadata.location, metadata.size, sha256, build_hf_headers())


class ModelScope(DownloadSource):
    """ModelScope's file API, as its own library uses it (modelscope/hub/file_download.py, api.py):
    a JSON listing with each file's size and SHA-256, and a download URL that honours range requests."""

    name, label, endpoint_variable = "modelscope", "ModelScope", "MODELSCOPE_ENDPOINT"
    revision = "master"

    def endpoint(self) -> str:
        if os.environ.get("MODELSCOPE_ENDPOINT"):
            return os.environ["MODELSCOPE_ENDPOINT"].rstrip("/")
        domain = os.environ.get("MODELSCOPE_DOMAIN")  # the modelscope library's own variable: a host name
        if domain:
            return (domain if "://" in domain else f"https://{domain}").rstrip("/")
        return MODELSCOPE_ENDPOINT

    def has(self, entry: PublishedCheckpoint) -> bool:
        return entry.modelscope is not None

    def url(self, entry: PublishedCheckpoint) -> str:
        model_id, path = entry.modelscope
        return f"{self.endpoint()}/api/v1/models/{model_id}/repo?Revision={self.revision}&FilePath={quote(path)}"

    def locate(self, entry: PublishedCheckpoint) -> RemoteFile:
        import json
        import urllib.request

        model_id, path = entry.modelscope
        listing = f"{self.endpoint()}/api/v1/models/{model_id}/repo/files?Revision={self.revision}&Recursive=True"
        with urllib.request.urlopen(listing, timeout=LOOKUP_TIMEOUT_S) as response:
            answer = json.load(response)
        files = {f.get("Path"): f for f in (answer.get("Data") or {}).get("Files") or []}
        if answer.get("Code") != 200 or path not in files:
            raise LookupError(f"{listing} does not list {path} ({answer.get('Message') or 'no such file'})")
        return RemoteFile(self.url(entry), int(files[path]["Size"]), files[path].get("Sha256"), {})


HUGGING_FACE, MODELSCOPE = HuggingFace(), ModelScope()
SOURCES = {s.name: s for s in (HUGGING_FACE, MODELSCOPE)}


def download_sources(choice: str | None = None) -> list[DownloadSource]:
    """The sources a download tries, in order: ``choice`` or $DDCOLOR_SOURCE, one of
    huggingface, modelscope or auto (the default: Hugging Face, then ModelScope)."""
    choice = (choice or os.environ.get("DDCOLOR_SOURCE") or "auto").strip().lower()
    if choice == "auto":
        return list(SOURCES.values())
    if choice not in SOURCES:
        raise DownloadError(f"DDCOLOR_SOURCE={choice!r} is not a download source; use {', '.join(SOURCES)} or auto")
    return [SOURCES[choice]]


def downloads_off() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(
    name: str,
    folder: str | os.PathLike,
    progress: Callable[[int, int], None] | None = None,
    source: str | None = None,
) -> Path:
    """Fetch a published checkpoint into ``folder`` (no-op if it is there).

    The sources of ``download_sources(source)`` are tried in order; the next
    one only when one cannot be reached (no connection, or it answers 5xx or
    429) or has no copy. Any other answer (a 404, a corrupted transfer) is
    reported, not passed over. The transfer goes to
    ``folder/.<file>.<source>.part`` and resumes from it with an HTTP range
    request, after a dropped connection or in a later run. The file is renamed
    into place only when complete (and, where the source gives its SHA-256,
    verified). ``HF_HUB_OFFLINE`` turns downloads off. ``progress(done, total)``
    gets bytes.
    """
    if name not in PUBLISHED:
        raise CheckpointError(f"unknown published model {name!r}; choose one of {', '.join(PUBLISHED)}")
    entry = PUBLISHED[name]
    folder = Path(folder)
    target = folder / entry.filename
    if target.is_file():
        return target
    by_hand = "Download {} by hand and save it as {}.".format(
        " or ".join(s.url(entry) for s in SOURCES.values() if s.has(entry)), target
    )
    if downloads_off():
        raise DownloadError(f"{entry.filename} is not in {folder} and downloads are off (HF_HUB_OFFLINE is set). {by_hand}")
    sources = download_sources(source)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the models folder {folder} ({e}). {by_hand}") from e

    passed_over, last_error = [], None
    for site in sources:
        if not site.has(entry):
            passed_over.append(f"{site.label} has no copy of {name}")
            continue
        if passed_over:
            log.warning("ddcolor: %s; downloading %s from %s", "; ".join(passed_over), site.url(entry), site.label)
        try:
            return _download_from(site, entry, target, progress)
        except DownloadError:
            raise
        except Exception as e:
            if not _cannot_reach(e):
                raise DownloadError(f"could not download {entry.filename} from {site.label} ({type(e).__name__}: {e}). {by_hand}") from e
            passed_over.append(f"{site.label} cannot be reached ({site.url(entry)}: {type(e).__name__}: {e})")
            last_error = e
    raise DownloadError(
        f"could not download {entry.filename}: {'; '.join(passed_over)}. Check the connection or proxy; "
        f"{HUGGING_FACE.endpoint_variable} selects a Hugging Face mirror, {MODELSCOPE.endpoint_variable} another "
        "ModelScope address, and DDCOLOR_SOURCE=huggingface, modelscope or auto which sources are tried "
        f"(auto: Hugging Face, then ModelScope, which has only {', '.join(n for n, e in PUBLISHED.items() if MODELSCOPE.has(e))}). {by_hand}"
    ) from last_error


def _download_from(site: DownloadSource, entry: PublishedCheckpoint, target: Path, progress) -> Path:
    remote = site.locate(entry)
    # One partial file per source: their files may differ byte for byte, so one cannot resume the other.
    partial = target.parent / f".{target.name}.{site.name}.part"
    _fetch(remote.url, partial, remote.size, remote.headers, progress)
    _verify(partial, remote.sha256)
    os.replace(partial, target)
    return target


def _cannot_reach(error: BaseException) -> bool:
    """Whether a source did not answer, or answered that it is failing, so another may serve the file.

    A 404 or 401 is an answer about the name, and is reported instead.
    """
    import http.client
    import ssl
    import urllib.error

    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None) or getattr(error, "code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    network = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException, ssl.SSLError)
    # huggingface_hub's HTTP client (httpx) and requests raise their own types.
    return isinstance(error, network) or any(
        cls.__name__ in ("TransportError", "ConnectionError", "Timeout") for cls in type(error).__mro__
    )


def _fetch(url: str, partial: Path, size: int | None, headers: dict, progress) -> None:
    """Stream ``url`` into ``partial``, resuming from what it already holds."""
    import urllib.error
    import urllib.request

    failures = 0
    while True:
        done = partial.stat().st_size if partial.is_file() else 0
        if size is not None and done == size:
            return
        if size is not None and done > size:  # a different, smaller file now: start over
            partial.unlink()
            done = 0
        request = urllib.request.Request(url, headers={**headers, **({"Range": f"bytes={done}-"} if done else {})})
        try:
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
                # 206: the server continues where we stopped; 200: it sends the whole file.
                with open(partial, "ab" if response.status == 206 else "wb") as f:
                    done = done if response.status == 206 else 0
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        done += len(chunk)
                        failures = 0  # progress was made: retries start afresh
                        if progress is not None:
                            progress(done, size or done)
            if size is None or done == size:
                return
        except urllib.error.HTTPError:
            raise  # the server answered: retrying will not help
        except OSError:  # connection refused, reset, timed out
            failures += 1
            if failures >= DOWNLOAD_ATTEMPTS:
                raise
            time.sleep(min(2 ** (failures - 1), 10))


def _verify(partial: Path, sha256: str | None) -> None:
    """Check the SHA-256 the source gave, where it gave one; a mismatch deletes the transfer."""
    if not sha256:
        return
    digest = hashlib.sha256()
    with open(partial, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    if digest.hexdigest() != sha256.lower():
        partial.unlink()
        raise DownloadError(f"{partial.name} arrived corrupted (SHA-256 mismatch); it was deleted, run again to retry")
