"""A local stand-in for the Hugging Face Hub's file endpoint, for download tests (no internet here).

It answers ``HEAD``/``GET /<repo>/resolve/main/<file>`` with the headers
huggingface_hub reads (ETag, X-Repo-Commit, Content-Length). Point
``HF_ENDPOINT`` at ``hub.endpoint``::

    with fake_hub({"/piddnad/DDColor-models/resolve/main/x.pth": data}) as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from typing import Iterator


class FakeHub(http.server.ThreadingHTTPServer):
    """``drops``: how many GETs to cut off after ``drop_after`` bytes (a connection
    lost mid-download); ``ranges`` records the byte offset each GET started at.
    Range requests are honoured, as the Hub's CDN does."""

    def __init__(self, files: dict[str, bytes], drops: int = 0, drop_after: int = 0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.requests: list[str] = []
        self.ranges: list[int] = []
        self.drops, self.drop_after = drops, drop_after
        self.unavailable = False  # answer downloads with 503
        self.etag = '"0123456789abcdef"'

        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"


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
            self.server.ranges.append(start)
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
        if self.server.drops > 0:
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
