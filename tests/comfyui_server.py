"""Start a real ComfyUI with this pack installed, for end-to-end tests.

Usage::

    from tests.comfyui_server import comfyui_server

    # ckpt: e.g. the tiny_checkpoint / small_checkpoint fixtures of tests/conftest.py
    with comfyui_server(checkpoints={"ddcolor_modelscope.pth": ckpt},
                        inputs=[Path("photo.jpg")]) as comfy:
        comfy.url                                        # http://127.0.0.1:<free port>
        prompt_id = comfy.queue(api_prompt)              # POST /prompt
        entry = comfy.wait(prompt_id)                    # its /history entry, once done
        comfy.output_files(entry)                        # the images it wrote

What it starts: ``$COMFYUI_PYTHON $COMFYUI_PATH/main.py --cpu --listen 127.0.0.1
--port <free>`` with ``--base-directory`` set to a fresh temporary folder that
holds ``custom_nodes/comfyui-ddcolor-fp16`` (a link to this repository),
``models/ddcolor/<name>`` (links to the given checkpoints), ``input/`` (copies
of the given files), ``output/``, ``temp/`` and ``user/``; its database is in
memory. So nothing is written into the ComfyUI checkout and several servers
can run side by side. ``HF_HUB_OFFLINE=1`` is set unless ``offline=False``:
a test server never reaches the network.

Environment:

* ``COMFYUI_PATH``: a ComfyUI checkout (the folder with main.py). Without it,
  ``comfyui_server`` raises ``ComfyUIUnavailable`` (tests turn that into a skip).
* ``COMFYUI_PYTHON``: the interpreter that has ComfyUI's requirements
  (default: ``$COMFYUI_PATH/.venv/bin/python`` if it exists, else this one).

First start takes 20-30 s (a minute when the machine is busy), later ones 6-9 s.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator, Mapping, Sequence

REPO = Path(__file__).resolve().parent.parent
PACK_FOLDER_NAME = "comfyui-ddcolor-fp16"


class ComfyUIUnavailable(RuntimeError):
    """COMFYUI_PATH is unset or not a ComfyUI checkout."""


class PromptRejected(RuntimeError):
    """ComfyUI answered /prompt with an error (its validation); ``body`` holds its JSON."""

    def __init__(self, status: int, body: dict):
        super().__init__(f"/prompt answered {status}: {json.dumps(body)[:2000]}")
        self.status = status
        self.body = body


def comfyui_paths() -> tuple[Path, str]:
    """(ComfyUI checkout, its interpreter) from the environment, or ComfyUIUnavailable."""
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        raise ComfyUIUnavailable("COMFYUI_PATH is not set (point it at a ComfyUI checkout)")
    root_path = Path(root)
    if not (root_path / "main.py").is_file():
        raise ComfyUIUnavailable(f"COMFYUI_PATH={root} has no main.py; it is not a ComfyUI checkout")
    python = os.environ.get("COMFYUI_PYTHON")
    if not python:
        venv_python = root_path / ".venv" / "bin" / "python"
        python = str(venv_python) if venv_python.exists() else sys.executable
    return root_path, python


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyUI:
    """A running ComfyUI server; made by ``comfyui_server``."""

    def __init__(self, process: subprocess.Popen, url: str, base: Path, log_path: Path):
        self.process = process
        self.url = url
        self.base = base
        self.log_path = log_path

    # ----------------------------------------------------------------- HTTP

    def request(self, method: str, path: str, data: object = None, timeout: float = 60) -> object:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def get(self, path: str, timeout: float = 60) -> object:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, data: object = None, timeout: float = 60) -> object:
        return self.request("POST", path, data, timeout=timeout)

    def queue(self, prompt: Mapping, client_id: str | None = None) -> str:
        """POST /prompt; returns the prompt id, or raises PromptRejected with ComfyUI's error JSON."""
        payload = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        try:
            return self.post("/prompt", payload)["prompt_id"]
        except urllib.error.HTTPError as e:
            raise PromptRejected(e.code, json.loads(e.read() or b"{}")) from None

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """The /history entry of ``prompt_id`` once it has finished (success, error or interrupt)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:  # ComfyUI writes history only when a prompt has finished
                return history[prompt_id]
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s; log tail:\n{self.log_tail()}")

    def output_files(self, entry: dict) -> list[Path]:
        """Files a finished prompt wrote, per its /history outputs (output/ and temp/)."""
        files = []
        for node_output in entry.get("outputs", {}).values():
            for image in node_output.get("images", []):
                files.append(self.base / image["type"] / image.get("subfolder", "") / image["filename"])
        return files

    # ----------------------------------------------------------------- process

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}; log tail:\n{self.log_tail()}")

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # ----------------------------------------------------------------- websocket

    @contextlib.contextmanager
    def messages(self, client_id: str) -> Iterator[list[dict]]:
        """Collect the JSON messages ComfyUI sends ``client_id`` over /ws (progress, executing, ...).

        Yields a list that fills in the background while the block runs.
        """
        collected: list[dict] = []
        sock = _websocket_connect(self.url, f"/ws?clientId={client_id}")
        stop = threading.Event()

        def reader() -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while not stop.is_set():
                    opcode, payload = _websocket_read_frame(sock)
                    if opcode == 1:
                        collected.append(json.loads(payload))
                    elif opcode == 8:
                        return

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            yield collected
        finally:
            stop.set()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            thread.join(timeout=5)


@contextlib.contextmanager
def comfyui_server(
    checkpoints: Mapping[str, Path] | None = None,
    inputs: Sequence[Path] = (),
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    offline: bool = True,
    start_timeout: float = 300,
    keep: bool = False,
) -> Iterator[ComfyUI]:
    """Start ComfyUI (see the module docstring) and stop it on exit.

    ``checkpoints`` maps a file name in models/ddcolor (subfolders allowed) to a checkpoint to link
    there (e.g. ``{"ddcolor_modelscope.pth": path}`` makes the default model
    resolve without a download). ``inputs`` are copied into input/.
    ``keep=True`` leaves the temporary base folder for inspection.
    """
    comfy_root, python = comfyui_paths()
    base = Path(tempfile.mkdtemp(prefix="comfyui-e2e-"))
    for sub in ("custom_nodes", "models/ddcolor", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(REPO, target_is_directory=True)
    for name, path in (checkpoints or {}).items():
        link = base / "models" / "ddcolor" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(path).resolve())
    for path in inputs:
        shutil.copy(path, base / "input" / Path(path).name)

    port = free_port()
    command = [
        python, str(comfy_root / "main.py"),
        "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--base-directory", str(base), "--database-url", "sqlite:///:memory:",
        "--disable-auto-launch", *extra_args,
    ]
    process_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if offline:
        process_env["HF_HUB_OFFLINE"] = "1"
    log_path = base / "comfyui.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=comfy_root, env=process_env, stdout=log_file, stderr=subprocess.STDOUT)
    server = ComfyUI(process, f"http://127.0.0.1:{port}", base, log_path)
    try:
        _wait_ready(server, start_timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _wait_ready(server: ComfyUI, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            server.get("/system_stats", timeout=5)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise TimeoutError(f"ComfyUI did not answer within {timeout} s; log tail:\n{server.log_tail()}")


# ----------------------------------------------------------------------------- a minimal websocket client
# The standard library has none, and ComfyUI's messages are small text frames.


def _websocket_connect(url: str, path: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=600)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("websocket handshake: connection closed")
        response += chunk
    if b" 101 " not in response.split(b"\r\n", 1)[0]:
        raise ConnectionError(f"websocket handshake refused: {response.splitlines()[0]!r}")
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("websocket closed")
        data += chunk
    return data


def _websocket_read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One (opcode, payload) frame; server frames are unmasked. Fragmented frames are not used by ComfyUI."""
    first, second = _recv_exactly(sock, 2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack(">H", _recv_exactly(sock, 2))[0]
    elif length == 127:
        length = struct.unpack(">Q", _recv_exactly(sock, 8))[0]
    mask = _recv_exactly(sock, 4) if second & 0x80 else b""
    payload = _recv_exactly(sock, length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload
