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
    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.requests: list[str] = []
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeHub

    def _answer(self, with_body: bool) -> None:
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.server.requests.append(f"{self.command} {self.path}")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"0123456789abcdef"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_HEAD(self):
        self._answer(with_body=False)

    def do_GET(self):
        self._answer(with_body=True)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def fake_hub(files: dict[str, bytes] | None = None) -> Iterator[FakeHub]:
    hub = FakeHub(dict(files or {}))
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.shutdown()
        hub.server_close()
