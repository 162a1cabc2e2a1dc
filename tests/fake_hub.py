"""Local stand-ins for the download sources, for download tests (no internet here).

A ``FakeHub`` answers ``HEAD``/``GET`` of the paths it is given, with the
headers huggingface_hub reads (ETag, X-Repo-Commit, Content-Length) and range
requests, as the Hugging Face Hub's ``/<repo>/resolve/main/<file>`` does.
``modelscope_files`` gives the two paths of ModelScope's file API for one
file. Point ``HF_ENDPOINT`` or ``MODELSCOPE_ENDPOINT`` at ``hub.endpoint``::

    with fake_hub({"/piddnad/DDColor-models/resolve/main/x.pth": data}) as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import socket
import threading
from typing import Iterator


class FakeHub(http.server.ThreadingHTTPServer):
    """``drops``: how many GETs of more than ``drop_after`` bytes to cut off after
    ``drop_after`` bytes (a connection lost mid-download); ``gets`` records the
    path and byte offset of each GET. Range requests are honoured, as the Hub's
    CDN does."""

    def __init__(self, files: dict[str, bytes], drops: int = 0, drop_after: int = 0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.requests: list[str] = []
        self.gets: list[tuple[str, int]] = []
        self.drops, self.drop_after = drops, drop_after
        self.unavailable = False  # answer downloads with 503
        self.etag = '"0123456789abcdef"'

        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"

    def ranges(self, path: str) -> list[int]:
        """The byte offset each GET of ``path`` started at."""
        return [start for p, start in self.gets if p == path]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeHub
    protocol_version = "HTTP/1.1"

    def _answer(self, with_body: bool) -> None:
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.server.requests.append(f"{self.command} {self.path}")
        start = 0
        if with_body and (header := self.headers.get("Range", "")).startswith("bytes="):
            start = int(header[len("bytes="):].split("-")[0] or 0)
        if with_body and self.server.unavailable:
            self.send_error(503)
            return
        if with_body:
            self.server.gets.append((self.path, start))
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", self.server.etag)
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        if not with_body:
            return
        if self.server.drops > 0 and len(body) - start > self.server.drop_after:
            self.server.drops -= 1
            self.wfile.write(body[start : start + self.server.drop_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the peer sees the body end early
            return
        self.wfile.write(body[start:])

    def do_HEAD(self):
        self._answer(with_body=False)

    def do_GET(self):
        self._answer(with_body=True)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def fake_hub(files: dict[str, bytes] | None = None, drops: int = 0, drop_after: int = 0) -> Iterator[FakeHub]:
    hub = FakeHub(dict(files or {}), drops, drop_after)
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.shutdown()
        hub.server_close()


def modelscope_files(model_id: str, path: str, data: bytes, sha256: str | None = None) -> dict[str, bytes]:
    """ModelScope's file API for one file, as its own library calls it: the listing
    (size and SHA-256 of each file) and the download URL."""
    listing = {"Code": 200, "Data": {"Files": [{
        "Name": path, "Path": path, "Type": "blob", "Size": len(data),
        "Sha256": sha256 or hashlib.sha256(data).hexdigest(),
    }]}}
    return {
        f"/api/v1/models/{model_id}/repo/files?Revision=master&Recursive=True": json.dumps(listing).encode(),
        f"/api/v1/models/{model_id}/repo?Revision=master&FilePath={path}": data,
    }


def refused_endpoint() -> str:
    """An address on 127.0.0.1 where nothing listens: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"
