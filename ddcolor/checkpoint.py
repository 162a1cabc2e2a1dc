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
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .model import DDColor, DDColorConfig

# Keys that the published .pth files carry but the network never used; the
# original code only got rid of them by loading with strict=False.
IGNORED_KEYS = ("encoder.arch.head_cls.weight", "encoder.arch.head_cls.bias")
HF_ENDPOINT = "https://huggingface.co"


class CheckpointError(ValueError):
    """A file that cannot be used as a DDColor checkpoint; the message says which and why."""


@dataclass(frozen=True)
class PublishedCheckpoint:
    name: str
    repo_id: str
    filename: str
    variant: str
    description: str

    def url(self, endpoint: str | None = None) -> str:
        base = (endpoint or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")
        return f"{base}/{self.repo_id}/resolve/main/{self.filename}"


PUBLISHED: dict[str, PublishedCheckpoint] = {
    c.name: c
    for c in (
        PublishedCheckpoint(
            "ddcolor_modelscope", "piddnad/DDColor-models", "ddcolor_modelscope.pth", "large",
            "ImageNet, BigColor-style data cleaning; the authors' default for photos outside ImageNet",
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


# ----------------------------------------------------------------------------- reading


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read the raw tensors of a checkpoint file or Hugging Face model folder."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_state_dict(path / name)
        raise CheckpointError(
            f"{path} is a folder but holds neither model.safetensors nor pytorch_model.bin; "
            "point to a checkpoint file or a Hugging Face model folder"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (an interrupted download?); delete it and download it again")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


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
        matrix = weight.flatten(1)
        if u.shape != (matrix.shape[0],) or v.shape != (matrix.shape[1],):
            raise CheckpointError(f"{source}: spectral-norm vectors of {prefix} do not match its weight {tuple(weight.shape)}")
        sigma = torch.dot(u, torch.mv(matrix, v))
        folded[prefix] = weight / sigma
    return folded


def model_from_state_dict(state: dict[str, Tensor], source: str = "checkpoint") -> DDColor:
    """Build the network on the CPU in FP32 and load ``state`` strictly.

    The model takes ``state``'s FP32 tensors as its own (no copy), so anything
    that changes the model in place (``apply_precision`` balances it for half)
    changes them: pass copies to keep ``state``.
    """
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
    config = config_from_state_dict(state, source)
    state = fold_spectral_norm(state, source)
    with torch.device("meta"):
        model = DDColor(config)
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
            f"{source} does not match the DDColor {config.variant} layout: {'; '.join(problems)} keys. "
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
    return model.eval().requires_grad_(False)


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
    name = str(source).removesuffix(".pth")
    if name in PUBLISHED:
        return download(name, models_dir or default_models_dir())
    raise CheckpointError(
        f"{source} is neither an existing checkpoint file or folder nor a published model "
        f"({', '.join(PUBLISHED)})"
    )


class DownloadError(RuntimeError):
    """A published checkpoint could not be fetched; the message says how to get it by hand."""


def download(
    name: str,
    folder: str | os.PathLike,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Fetch a published checkpoint into ``folder`` (no-op if it is there).

    huggingface_hub resolves the file (``HF_ENDPOINT``, tokens, the Hub's
    redirect to its CDN); the transfer goes to ``folder/.<file>.part`` and
    resumes from it with an HTTP range request, after a dropped connection
    or in a later run. The file is renamed into place only when complete
    (and, where the Hub gives its SHA-256 as ETag, verified).
    ``HF_HUB_OFFLINE`` turns downloads off. ``progress(done, total)`` gets bytes.
    """
    if name not in PUBLISHED:
        raise CheckpointError(f"unknown published model {name!r}; choose one of {', '.join(PUBLISHED)}")
    entry = PUBLISHED[name]
    folder = Path(folder)
    target = folder / entry.filename
    if target.is_file():
        return target
    by_hand = f"Download {entry.url()} by hand and save it as {target}."
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise DownloadError(f"{entry.filename} is not in {folder} and downloads are off (HF_HUB_OFFLINE is set). {by_hand}")

    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    partial = folder / f".{entry.filename}.part"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        url = hf_hub_url(entry.repo_id, entry.filename, endpoint=os.environ.get("HF_ENDPOINT") or None)
        metadata = get_hf_file_metadata(url, timeout=DOWNLOAD_TIMEOUT_S)
        _fetch(metadata.location, partial, metadata.size, build_hf_headers(), progress)
        _verify(partial, metadata.etag)
    except DownloadError:
        raise
    except Exception as e:
        raise DownloadError(f"could not download {entry.filename} ({type(e).__name__}: {e}). {by_hand}") from e
    os.replace(partial, target)
    return target


DOWNLOAD_TIMEOUT_S = 30
DOWNLOAD_ATTEMPTS = 5


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


def _verify(partial: Path, etag: str | None) -> None:
    """The Hub's ETag of a large (LFS) file is its SHA-256; check it where it is one."""
    if not etag or not re.fullmatch(r"[0-9a-f]{64}", etag.strip('"')):
        return
    digest = hashlib.sha256()
    with open(partial, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    if digest.hexdigest() != etag.strip('"'):
        partial.unlink()
        raise DownloadError(f"{partial.name} arrived corrupted (SHA-256 mismatch); it was deleted, run again to retry")
