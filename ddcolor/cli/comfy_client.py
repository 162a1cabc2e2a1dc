"""A small client for ComfyUI's HTTP API, and the batch driver of ``python -m ddcolor queue``.

Per image: ``POST /upload/image``, ``POST /prompt`` with the workflow's
LoadImage node pointed at the upload, poll ``GET /history/{id}`` (and
``GET /queue``) until it is done, ``GET /view`` each output image.

Standard library only. Completion is polled rather than pushed over the
websocket: the standard library has no websocket client, and one small GET
per in-flight image every half second costs the server nothing.

Nothing here waits unbounded: every request has a timeout, an unreachable
server is retried for ``reconnect`` seconds and then reported, a job the
server forgot (it restarted) is noticed by its absence from both the queue
and the history, and each image has an overall deadline.
"""

from __future__ import annotations

import copy
import hashlib
import http.client
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .batch import DONE, FAILED, Job, Outcome, Progress, StopRequest, Summary, UsageError
from .imageio import ImageReadError, write_bytes

UPLOAD_SUBFOLDER = "ddcolor"
POLL_INTERVAL = 0.5  # seconds between /history polls of one in-flight image
IMAGE_LOADERS = ("LoadImage",)


class ComfyError(RuntimeError):
    """Something went wrong talking to ComfyUI; the message says what and what to do."""


class ServerUnreachable(ComfyError):
    """The server does not answer (down, restarting, wrong address, or too slow)."""


class WorkflowRejected(ComfyError):
    """``POST /prompt`` answered 400: the workflow does not validate (node_errors)."""


class PromptFailed(ComfyError):
    """The workflow ran and failed on the server (an exception in a node, or interrupted)."""


class PromptLost(ComfyError):
    """The server no longer knows the job: it restarted or its queue was cleared."""


class ResultTimeout(ComfyError):
    """No result within the per-image deadline."""


class Aborted(ComfyError):
    """The user asked to stop now."""


# ----------------------------------------------------------------------------- workflows


def load_workflow(path: Path, input_node: str | None = None) -> tuple[dict, str]:
    """Read an API-format workflow; return it and the id of the node that takes the image."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--workflow {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--workflow {path}: not a JSON file ({e})") from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise UsageError(
            f"--workflow {path} is a UI workflow (as saved by Save); queue needs the API format: "
            "in ComfyUI use Workflow > Export (API), or take one from workflows/api/"
        )
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]  # the body of a /prompt request
    if not isinstance(data, dict) or not data or not all(
        isinstance(node, dict) and "class_type" in node and isinstance(node.get("inputs"), dict) for node in data.values()
    ):
        raise UsageError(f"--workflow {path}: not an API-format workflow (each node needs class_type and inputs)")
    if input_node is not None:
        node = data.get(str(input_node))
        if node is None:
            raise UsageError(f"--input-node {input_node}: no such node in {path} (ids: {', '.join(data)})")
        if "image" not in node["inputs"]:
            raise UsageError(f"--input-node {input_node}: that node ({node['class_type']}) has no 'image' input")
        return data, str(input_node)
    loaders = [node_id for node_id, node in data.items() if node["class_type"] in IMAGE_LOADERS]
    if len(loaders) == 1:
        return data, loaders[0]
    if not loaders:
        raise UsageError(f"--workflow {path} has no LoadImage node to feed images into; add one, or name a node with --input-node")
    raise UsageError(f"--workflow {path} has {len(loaders)} LoadImage nodes ({', '.join(loaders)}); choose one with --input-node")


def with_image(workflow: dict, node_id: str, image: str) -> dict:
    prompt = copy.deepcopy(workflow)
    prompt[node_id]["inputs"]["image"] = image
    return prompt


def describe_rejection(body: object) -> str:
    """ComfyUI's 400 answer to /prompt ({"error": ..., "node_errors": ...}) as readable lines."""
    if not isinstance(body, dict):
        return f"ComfyUI rejected the workflow: {str(body)[:500]}"
    error = body.get("error")
    if isinstance(error, dict):
        head = error.get("message") or error.get("type") or "invalid prompt"
        if error.get("details"):
            head += f": {error['details']}"
    else:
        head = str(error or "invalid prompt")
    lines = [f"ComfyUI rejected the workflow: {head}"]
    node_errors = body.get("node_errors")
    for node_id, info in (node_errors.items() if isinstance(node_errors, dict) else ()):
        class_type = info.get("class_type", "?") if isinstance(info, dict) else "?"
        for e in info.get("errors", []) if isinstance(info, dict) else ():
            message = e.get("message", "error")
            if e.get("details"):
                message += f": {e['details']}"
            lines.append(f"  node {node_id} ({class_type}): {message}")
    return "\n".join(lines)


def describe_failure(entry: dict) -> str:
    """Why a history entry with status 'error' failed, from its execution messages."""
    for kind, data in (entry.get("status") or {}).get("messages") or ():
        if kind == "execution_error" and isinstance(data, dict):
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                f"{data.get('exception_type', 'an error')}: {str(data.get('exception_message', '')).strip()}"
            )
        if kind == "execution_interrupted":
            return "the run was interrupted on the server"
    return "the workflow failed on the server (no error message in its history)"


# ----------------------------------------------------------------------------- client


class ComfyClient:
    """One ComfyUI server. Thread-safe: each call opens its own connection."""

    def __init__(
        self,
        server: str,
        *,
        request_timeout: float = 30.0,
        reconnect: float = 30.0,
        poll_interval: float | None = None,
    ):
        if "://" not in server:
            server = "http://" + server
        parsed = urllib.parse.urlparse(server)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError(f"--server {server}: use an address like http://127.0.0.1:8188")
        self.server = server.rstrip("/")
        self.request_timeout = request_timeout
        self.reconnect = reconnect
        self.poll_interval = POLL_INTERVAL if poll_interval is None else poll_interval
        self.client_id = uuid.uuid4().hex
        self.abort = threading.Event()
        # A proxy set in the environment must not swallow requests to this machine.
        loopback = parsed.hostname in ("localhost", "127.0.0.1", "::1")
        handlers = [urllib.request.ProxyHandler({})] if loopback else []
        self._opener = urllib.request.build_opener(*handlers)

    # --- HTTP

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        retry: str = "always",
    ) -> tuple[int, bytes]:
        """One request; returns (status, body) for any HTTP answer, including 4xx/5xx.

        ``retry``: "always" retries connection failures and timeouts for
        ``reconnect`` seconds (safe for reads and idempotent uploads);
        "refused" only retries requests that cannot have reached the server;
        "never" raises ServerUnreachable at the first failure.
        """
        url = self.server + path
        deadline = time.monotonic() + self.reconnect
        delay = 0.2
        while True:
            request = urllib.request.Request(url, data=body, method=method)
            if content_type:
                request.add_header("Content-Type", content_type)
            try:
                with self._opener.open(request, timeout=self.request_timeout) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as e:
                with e:
                    return e.code, e.read()
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                refused = isinstance(reason, ConnectionRefusedError)
                timed_out = isinstance(reason, (socket.timeout, TimeoutError))
                if timed_out:
                    problem = f"no answer to {method} {path} within {self.request_timeout:g} s (--request-timeout)"
                else:
                    problem = f"{method} {path} failed: {reason}"
                remaining = deadline - time.monotonic()
                if retry == "never" or (retry == "refused" and not refused) or remaining <= 0:
                    raise ServerUnreachable(f"ComfyUI at {self.server}: {problem}") from None
            if self.abort.wait(min(delay, remaining)):
                raise Aborted("stopped by the user")
            delay = min(delay * 2, 2.0)

    def _json(self, method: str, path: str, **kwargs) -> tuple[int, object]:
        status, raw = self._request(method, path, **kwargs)
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            raise ComfyError(f"ComfyUI at {self.server}: {method} {path} answered {status} with non-JSON: {raw[:200]!r}") from None

    # --- API

    def check(self) -> None:
        """Fail fast, with a hint, when nothing usable answers at the address."""
        try:
            status, body = self._json("GET", "/queue", retry="never")
        except ServerUnreachable as e:
            raise ServerUnreachable(
                f"{e}. Is ComfyUI running? Start it (python main.py --listen 127.0.0.1 --port 8188 "
                "in the ComfyUI folder) or pass --server with its address."
            ) from None
        except ComfyError as e:
            raise ComfyError(f"{e}; is {self.server} a ComfyUI server?") from None
        if status != 200 or not isinstance(body, dict) or "queue_running" not in body:
            raise ComfyError(f"{self.server} answered GET /queue with {status}; it does not look like a ComfyUI server")

    def upload_image(self, path: Path) -> str:
        """Upload ``path`` into the server's input folder; return the name LoadImage takes."""
        data = path.read_bytes()
        # Named by content: two different photos both called scan.jpg cannot overwrite each other.
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)
        name = f"{hashlib.sha256(data).hexdigest()[:12]}_{safe}"
        boundary = uuid.uuid4().hex
        fields = [("overwrite", "true"), ("type", "input"), ("subfolder", UPLOAD_SUBFOLDER)]
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
            for key, value in fields
        ]
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
        )
        parts.append(f"--{boundary}--\r\n".encode())
        status, body = self._json(
            "POST", "/upload/image", body=b"".join(parts), content_type=f"multipart/form-data; boundary={boundary}"
        )
        if status != 200 or not isinstance(body, dict) or "name" not in body:
            raise ComfyError(f"ComfyUI refused the upload of {path.name} (HTTP {status}: {str(body)[:200]})")
        subfolder = body.get("subfolder") or ""
        return f"{subfolder}/{body['name']}" if subfolder else body["name"]

    def submit(self, prompt: dict) -> str:
        payload = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        # Retried only when the connection was refused: a request that reached
        # the server and timed out may have been queued, and must not run twice.
        status, body = self._json("POST", "/prompt", body=payload, content_type="application/json", retry="refused")
        if status == 400:
            raise WorkflowRejected(describe_rejection(body))
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise ComfyError(f"ComfyUI answered POST /prompt with HTTP {status}: {str(body)[:300]}")
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        status, body = self._json("GET", f"/history/{urllib.parse.quote(prompt_id)}")
        if status != 200:
            raise ComfyError(f"ComfyUI answered GET /history with HTTP {status}")
        return body.get(prompt_id) if isinstance(body, dict) else None

    def queued(self, prompt_id: str) -> bool:
        """Whether the job is running or waiting (queue items are [number, prompt_id, ...])."""
        status, body = self._json("GET", "/queue")
        if status != 200 or not isinstance(body, dict):
            raise ComfyError(f"ComfyUI answered GET /queue with HTTP {status}")
        items = list(body.get("queue_running") or []) + list(body.get("queue_pending") or [])
        return any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in items)

    def wait(self, prompt_id: str, timeout: float) -> dict:
        """Poll until the job is in the history; return its entry."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            # The server writes the history before it takes the job off the
            # queue, so a job in neither place after this order of reads is gone.
            if entry is None and not self.queued(prompt_id):
                entry = self.history(prompt_id)
                if entry is None:
                    raise PromptLost(f"ComfyUI at {self.server} lost the job (it restarted, or its queue was cleared)")
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    raise PromptFailed(describe_failure(entry))
                if status.get("completed", True):
                    return entry
            if time.monotonic() > deadline:
                self.cancel(prompt_id)
                raise ResultTimeout(f"no result after {timeout:g} s (the server is busy or slow); raise --timeout")
            if self.abort.wait(self.poll_interval):
                self.cancel(prompt_id)
                raise Aborted("stopped by the user")

    def cancel(self, prompt_id: str) -> None:
        """Best effort: take a job we gave up on off the server's pending queue."""
        try:
            self._request("POST", "/queue", body=json.dumps({"delete": [prompt_id]}).encode(),
                          content_type="application/json", retry="never")
        except ComfyError:
            pass

    def output_images(self, entry: dict) -> list[tuple[str, bytes]]:
        """Download the images a finished job produced: saved ones, else previews."""
        refs = [
            image
            for node_output in (entry.get("outputs") or {}).values()
            if isinstance(node_output, dict)
            for image in node_output.get("images") or ()
            if isinstance(image, dict) and "filename" in image
        ]
        saved = [r for r in refs if r.get("type") == "output"]
        images = []
        for ref in saved or refs:
            query = urllib.parse.urlencode(
                {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""), "type": ref.get("type", "output")}
            )
            status, data = self._request("GET", f"/view?{query}")
            if status != 200:
                raise ComfyError(f"ComfyUI answered GET /view for {ref['filename']} with HTTP {status}")
            images.append((ref["filename"], data))
        if not images:
            raise ComfyError("the workflow finished without an output image; it needs a SaveImage or PreviewImage node")
        return images

    def run_image(self, workflow: dict, input_node: str, path: Path, timeout: float) -> list[tuple[str, bytes]]:
        """Upload, submit, wait, download. A job lost to a server restart is run once more."""
        for attempt in (1, 2):
            name = self.upload_image(path)
            prompt_id = self.submit(with_image(workflow, input_node, name))
            try:
                return self.output_images(self.wait(prompt_id, timeout))
            except PromptLost:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- batch


def check_image(path: Path) -> None:
    """Reject a file Pillow cannot identify before sending it (cheap: no full decode)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image format Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot decode ({e})") from None


def output_paths(job: Job, images: list[tuple[str, bytes]]) -> list[Path]:
    """job.target for the first image (with the server's extension), then _2, _3, ..."""
    paths = []
    for index, (filename, _) in enumerate(images, start=1):
        extension = Path(filename).suffix or job.target.suffix
        stem = job.target.stem if index == 1 else f"{job.target.stem}_{index}"
        paths.append(job.target.with_name(stem + extension))
    return paths


def queue_jobs(
    client: ComfyClient,
    workflow: dict,
    input_node: str,
    jobs: list[Job],
    *,
    jobs_at_once: int,
    timeout: float,
    stop: StopRequest,
    summary: Summary,
    progress: Progress,
) -> None:
    """Run ``jobs`` through the server, ``jobs_at_once`` in flight.

    When the server stops answering or rejects the workflow, the images not
    yet sent fail at once with that reason instead of each waiting it out.
    """
    halted: list[str] = []  # why the rest of the batch is not attempted

    def run(job: Job) -> Outcome | None:
        if stop.requested:
            return None
        if halted:
            return Outcome(job, FAILED, halted[0], attempted=False)
        began = time.perf_counter()
        try:
            check_image(job.source)
            images = client.run_image(workflow, input_node, job.source, timeout)
            for path, (_, data) in zip(output_paths(job, images), images):
                write_bytes(path, data)
        except ImageReadError as e:
            return Outcome(job, FAILED, str(e).removeprefix(f"{job.source}: "), time.perf_counter() - began)
        except ServerUnreachable as e:
            halted.append(f"ComfyUI at {client.server} stopped answering")
            return Outcome(job, FAILED, f"{e} (waited {client.reconnect:g} s for it to come back; --reconnect)")
        except WorkflowRejected as e:
            halted.append("the server rejected the workflow (see above)")
            return Outcome(job, FAILED, str(e))
        except ComfyError as e:
            return Outcome(job, FAILED, str(e), time.perf_counter() - began)
        except OSError as e:
            return Outcome(job, FAILED, f"cannot write the result: {e}", time.perf_counter() - began)
        return Outcome(job, DONE, "", time.perf_counter() - began)

    pool = ThreadPoolExecutor(max_workers=jobs_at_once, thread_name_prefix="ddcolor-queue")
    futures = [pool.submit(run, job) for job in jobs]
    try:
        for future in as_completed(futures):
            outcome = future.result()
            if outcome is None:
                summary.not_started += 1
                continue
            summary.add(outcome)
            progress.finished(outcome)
    except KeyboardInterrupt:
        summary.aborted = True
        client.abort.set()  # in-flight waits end at their next poll
        for future in futures:
            future.cancel()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
