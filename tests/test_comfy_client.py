"""``python -m ddcolor queue``: against a loopback stand-in ComfyUI, and a real one when COMFYUI_PATH is set.

The stand-in speaks the part of ComfyUI's API the client uses (/queue,
/upload/image, /prompt, /history/{id}, /view) and can misbehave on demand:
reject the workflow with node_errors, answer slowly, never finish, forget a
job (a restart), fail a node, or die mid-batch. It serves each job's uploaded
image back as its output, so a test can tell that every input went through
its own job. Everything listens on 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import email.parser
import io
import email.policy
import json
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from ddcolor.cli import comfy_client
from ddcolor.cli.batch import DONE, Job, Progress, StopRequest, Summary, UsageError
from ddcolor.cli import main
from ddcolor.cli.comfy_client import ComfyClient, load_workflow, queue_jobs

WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "2": {"class_type": "DDColorColorize", "inputs": {"image": ["1", 0], "precision": "fp16", "size": 640}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "ddcolor"}},
}
REJECTION = {
    "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
    "node_errors": {
        "2": {
            "errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": "model: 'nope.pth' not in ['ddcolor_modelscope.pth']", "extra_info": {}}],
            "dependent_outputs": ["3"],
            "class_type": "DDColorColorize",
        }
    },
}


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, **behaviour):
        self.polls_to_finish = behaviour.get("polls_to_finish", 1)
        self.reject = behaviour.get("reject")
        self.history_delay = behaviour.get("history_delay", 0.0)
        self.never_finish = behaviour.get("never_finish", False)
        self.forget = behaviour.get("forget", 0)  # how many jobs to lose, as a restart does
        self.node_failure = behaviour.get("node_failure")
        self.die_after_views = behaviour.get("die_after_views")
        self.on_prompt = behaviour.get("on_prompt", lambda: None)
        self.lock = threading.Lock()
        self.uploads: dict[str, bytes] = {}
        self.prompts: dict[str, dict] = {}  # id -> prompt
        self.pending: dict[str, int] = {}  # id -> polls seen
        self.history: dict[str, dict] = {}
        self.deleted: list[str] = []
        self.submissions = 0  # POST /prompt, accepted or not
        self.views = 0
        self.in_flight = 0
        self.most_in_flight = 0
        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def die(self) -> None:
        """Stop answering: later connections are refused."""
        threading.Thread(target=lambda: (self.shutdown(), self.server_close()), daemon=True).start()

    def finish(self, prompt_id: str) -> None:
        prompt = self.prompts[prompt_id]
        if self.node_failure:
            status = {"status_str": "error", "completed": False, "messages": [
                ["execution_start", {"prompt_id": prompt_id}],
                ["execution_error", {"prompt_id": prompt_id, "node_id": "2", "node_type": "DDColorColorize",
                                     "exception_type": "RuntimeError", "exception_message": self.node_failure}],
            ]}
            self.history[prompt_id] = {"prompt": [0, prompt_id, prompt, {}, ["3"]], "outputs": {}, "status": status}
            return
        image = prompt["1"]["inputs"]["image"]
        outputs = {"3": {"images": [{"filename": f"out_{image.split('/')[-1]}", "subfolder": "", "type": "output"}]}}
        status = {"status_str": "success", "completed": True, "messages": []}
        self.history[prompt_id] = {"prompt": [0, prompt_id, prompt, {}, ["3"]], "outputs": outputs, "status": status}


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], tuple[str, bytes]]:
    """Form fields and the one uploaded file of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields, upload = {}, None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename():
            upload = (part.get_filename(), part.get_payload(decode=True))
        else:
            fields[name] = part.get_payload(decode=True).decode()
    assert upload is not None, "no file in the upload"
    return fields, upload


class Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args):
        pass

    def reply(self, status: int, body: object = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        s = self.server
        url = urlparse(self.path)
        if url.path == "/queue":
            with s.lock:
                running = [[0, pid, s.prompts[pid], {}, ["3"]] for pid in s.pending]
            self.reply(200, {"queue_running": running[:1], "queue_pending": running[1:]})
        elif url.path.startswith("/history/"):
            time.sleep(s.history_delay)
            prompt_id = url.path.split("/")[-1]
            with s.lock:
                if prompt_id in s.pending and not s.never_finish:
                    s.pending[prompt_id] += 1
                    if s.forget > 0:
                        s.forget -= 1
                        del s.pending[prompt_id]  # gone from queue and history alike
                    elif s.pending[prompt_id] >= s.polls_to_finish:
                        del s.pending[prompt_id]
                        s.finish(prompt_id)
                entry = s.history.get(prompt_id)
            self.reply(200, {prompt_id: entry} if entry else {})
        elif url.path == "/view":
            query = parse_qs(url.query)
            assert query["type"] == ["output"]
            name = query["filename"][0].removeprefix("out_")
            with s.lock:
                data = s.uploads[name]
                s.views += 1
                s.in_flight -= 1
                if s.die_after_views and s.views >= s.die_after_views:
                    s.die()
            self.reply(200, raw=data)
        else:
            self.reply(404, {})

    def do_POST(self):
        s = self.server
        length = int(self.headers["Content-Length"])
        if self.path == "/upload/image":
            fields, (filename, data) = parse_multipart(self.headers["Content-Type"], self.rfile.read(length))
            assert fields["overwrite"] == "true" and fields["type"] == "input"
            with s.lock:
                s.uploads[filename] = data
            self.reply(200, {"name": filename, "subfolder": fields.get("subfolder", ""), "type": "input"})
            return
        body = json.loads(self.rfile.read(length))
        if self.path == "/prompt":
            with s.lock:
                s.submissions += 1
            if s.reject:
                self.reply(400, s.reject)
                return
            prompt_id = str(uuid.uuid4())
            with s.lock:
                s.prompts[prompt_id] = body["prompt"]
                s.pending[prompt_id] = 0
                s.in_flight += 1
                s.most_in_flight = max(s.most_in_flight, s.in_flight)
            s.on_prompt()
            self.reply(200, {"prompt_id": prompt_id, "number": len(s.prompts), "node_errors": {}})
        elif self.path == "/queue":
            with s.lock:
                s.deleted.extend(body.get("delete", []))
            self.reply(200, raw=b"")
        else:
            self.reply(404, {})


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    monkeypatch.setattr(comfy_client, "POLL_INTERVAL", 0.02)


@pytest.fixture
def workflow(tmp_path) -> Path:
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(WORKFLOW))
    return path


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for i in range(3):
        path = folder / f"p{i}.png"
        Image.fromarray(np.full((8, 12), 40 * i + 10, np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def standin(request):
    servers = []

    def start(**behaviour) -> StandIn:
        server = StandIn(**behaviour)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def queue(server_url: str, workflow: Path, inputs, out: Path, *options) -> int:
    return main(["queue", "--server", server_url, "--workflow", str(workflow), *map(str, inputs), "-o", str(out), *map(str, options)])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


# ----------------------------------------------------------------------------- the normal run


def test_each_image_goes_through_its_own_job(standin, workflow, photos, tmp_path, capsys):
    server = standin(polls_to_finish=10)
    assert queue(server.url, workflow, photos, tmp_path / "out", "--jobs", 2) == 0
    for photo in photos:
        # The stand-in returns the uploaded image: equal bytes mean the right job for the right file.
        assert (tmp_path / "out" / f"{photo.stem}_color.png").read_bytes() == photo.read_bytes()
    assert len(server.prompts) == 3
    for prompt in server.prompts.values():
        image = prompt["1"]["inputs"]["image"]
        assert image.startswith("ddcolor/") and image.split("_", 1)[1] in {p.name for p in photos}
        assert prompt["2"] == WORKFLOW["2"] and prompt["3"] == WORKFLOW["3"]  # the rest untouched
    assert server.most_in_flight == 2  # bounded, and actually concurrent
    assert "done 3, skipped 0, failed 0" in capsys.readouterr().out


def test_skip_existing_sends_nothing_for_done_images(standin, workflow, photos, tmp_path, capsys):
    server = standin()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "p0_color.png").write_bytes(b"kept")
    assert queue(server.url, workflow, photos, tmp_path / "out", "--skip-existing") == 0
    assert (tmp_path / "out" / "p0_color.png").read_bytes() == b"kept"
    assert len(server.prompts) == 2
    assert "done 2, skipped 1, failed 0" in capsys.readouterr().out


def test_an_unreadable_file_is_reported_and_not_sent(standin, workflow, photos, tmp_path, capsys):
    server = standin()
    photos[1].write_bytes(b"garbage")
    assert queue(server.url, workflow, photos, tmp_path / "out") == 1
    assert sorted(server.uploads) and not any(name.endswith("p1.png") for name in server.uploads)
    out = capsys.readouterr().out
    assert "done 2, skipped 0, failed 1" in out
    assert f"failed: {photos[1]}: not an image format Pillow can read" in out


# ----------------------------------------------------------------------------- error cases


def test_node_errors_are_printed_readably_and_stop_the_batch(standin, workflow, photos, tmp_path, capsys):
    server = standin(reject=REJECTION)
    assert queue(server.url, workflow, photos, tmp_path / "out", "--jobs", 1) == 1
    out = capsys.readouterr().out
    assert "ComfyUI rejected the workflow: Prompt outputs failed validation" in out
    node_line = "node 2 (DDColorColorize): Value not in list: model: 'nope.pth' not in ['ddcolor_modelscope.pth']"
    assert re.search(r"\n +" + re.escape(node_line) + "\n", out)  # on a line of its own
    assert "not attempted: 2 image(s): the server rejected the workflow" in out
    assert server.submissions == 1 and len(server.uploads) == 1  # one try, then the batch stopped
    assert not (tmp_path / "out").exists()


def test_server_down_at_start_is_reported_at_once(workflow, photos, tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    began = time.monotonic()
    assert queue(url, workflow, photos, tmp_path / "out") == 1
    assert time.monotonic() - began < 10
    err = capsys.readouterr().err
    assert url in err and "Connection refused" in err and "Is ComfyUI running?" in err


def test_server_dying_mid_batch_is_reported_not_hung_on(standin, workflow, photos, tmp_path, capsys):
    server = standin(die_after_views=1)
    began = time.monotonic()
    code = queue(server.url, workflow, photos, tmp_path / "out", "--jobs", 1, "--reconnect", 1)
    assert code == 1
    assert time.monotonic() - began < 20
    out = capsys.readouterr().out
    assert "done 1, skipped 0, failed 2" in out
    assert "Connection refused (waited 1 s for it to come back; --reconnect)" in out
    assert f"not attempted: 1 image(s): ComfyUI at {server.url} stopped answering" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0_color.png"]


def test_a_slow_server_times_out_with_the_option_to_change(standin, workflow, photos, tmp_path, capsys):
    server = standin(history_delay=3.0)
    began = time.monotonic()
    code = queue(server.url, workflow, photos[:1], tmp_path / "out", "--request-timeout", 0.3, "--reconnect", 0.5)
    assert code == 1
    assert time.monotonic() - began < 10
    out = capsys.readouterr().out
    assert "no answer to GET /history/" in out and "within 0.3 s (--request-timeout)" in out


def test_a_job_that_never_finishes_hits_the_deadline_and_is_withdrawn(standin, workflow, photos, tmp_path, capsys):
    server = standin(never_finish=True)
    began = time.monotonic()
    assert queue(server.url, workflow, photos[:1], tmp_path / "out", "--timeout", 0.5) == 1
    assert time.monotonic() - began < 10
    assert "no result after 0.5 s (the server is busy or slow); raise --timeout" in capsys.readouterr().out
    assert server.deleted == list(server.prompts)


def test_a_job_lost_to_a_restart_is_sent_again_once(standin, workflow, photos, tmp_path, capsys):
    server = standin(forget=1)
    assert queue(server.url, workflow, photos[:1], tmp_path / "out") == 0
    assert len(server.prompts) == 2
    assert (tmp_path / "out" / "p0_color.png").read_bytes() == photos[0].read_bytes()

    server = standin(forget=2)
    assert queue(server.url, workflow, photos[:1], tmp_path / "again") == 1
    assert "lost the job (it restarted, or its queue was cleared)" in capsys.readouterr().out


def test_a_node_failure_names_the_node_and_the_exception(standin, workflow, photos, tmp_path, capsys):
    server = standin(node_failure="out of memory colorizing one (8, 12) image")
    assert queue(server.url, workflow, photos[:2], tmp_path / "out") == 1
    out = capsys.readouterr().out
    assert out.count("node 2 (DDColorColorize) raised RuntimeError: out of memory colorizing one (8, 12) image") == 2


def test_ctrl_c_lets_images_in_flight_finish_and_starts_no_more(standin, photos, tmp_path):
    stop = StopRequest()
    server = standin(polls_to_finish=5, on_prompt=stop.set)  # "Ctrl-C" as the first job is queued
    jobs = [Job(p, tmp_path / f"{p.stem}_color.png") for p in photos]
    summary = Summary()
    queue_jobs(ComfyClient(server.url), WORKFLOW, "1", jobs, jobs_at_once=1, timeout=10,
               stop=stop, summary=summary, progress=Progress(len(jobs), stream=io.StringIO()))
    assert (summary.count(DONE), summary.not_started, summary.exit_code()) == (1, 2, 130)
    assert sorted(p.name for p in tmp_path.glob("*_color.png")) == ["p0_color.png"]
    assert server.submissions == 1


# ----------------------------------------------------------------------------- workflows


def test_workflow_files_are_checked_with_fixes_in_the_message(tmp_path):
    def write(data) -> Path:
        path = tmp_path / f"{uuid.uuid4().hex}.json"
        path.write_text(json.dumps(data))
        return path

    assert load_workflow(write(WORKFLOW)) == (WORKFLOW, "1")
    assert load_workflow(write({"prompt": WORKFLOW}))[1] == "1"  # a saved /prompt body
    with pytest.raises(UsageError, match=r"UI workflow .* Export \(API\)"):
        load_workflow(write({"nodes": [], "links": []}))
    with pytest.raises(UsageError, match="no LoadImage node"):
        load_workflow(write({"3": WORKFLOW["3"]}))
    two = {**WORKFLOW, "4": {"class_type": "LoadImage", "inputs": {"image": "b.png"}}}
    with pytest.raises(UsageError, match=r"2 LoadImage nodes \(1, 4\); choose one with --input-node"):
        load_workflow(write(two))
    assert load_workflow(write(two), "4")[1] == "4"
    with pytest.raises(UsageError, match="--input-node 9: no such node"):
        load_workflow(write(WORKFLOW), "9")
    with pytest.raises(UsageError, match="no 'image' input"):
        load_workflow(write(WORKFLOW), "3")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UsageError, match="not a JSON file"):
        load_workflow(tmp_path / "bad.json")
    with pytest.raises(UsageError, match="no such file"):
        load_workflow(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- a real ComfyUI


@pytest.mark.e2e
def test_queue_against_a_real_comfyui(tmp_path, small_checkpoint, fixture_photos, capsys):
    """The real server, this node pack and the published API workflow, end to end.

    Needs COMFYUI_PATH (and COMFYUI_PYTHON if ComfyUI has its own venv); see
    tests/comfyui_server.py. The results must match ``colorize`` run locally
    with the same checkpoint and size.
    """
    harness = pytest.importorskip("tests.comfyui_server")
    try:
        harness.comfyui_paths()
    except harness.ComfyUIUnavailable as e:
        pytest.skip(str(e))
    workflow_path = Path(__file__).resolve().parent.parent / "workflows" / "api" / "ddcolor_person.json"
    if not workflow_path.is_file():
        pytest.skip(f"{workflow_path} does not exist yet")
    workflow, _ = load_workflow(workflow_path)
    # Whatever model the workflow names resolves to the calibrated checkpoint.
    models = [node["inputs"].get("model", "ddcolor_modelscope") for node in workflow.values() if node["class_type"].startswith("DDColor")]
    names = {m if m.endswith((".pth", ".safetensors")) else f"{m}.pth" for m in models} | {"ddcolor_modelscope.pth"}
    photos = fixture_photos[:2]
    with harness.comfyui_server(checkpoints={name: small_checkpoint for name in names}) as comfy:
        code = queue(comfy.url, workflow_path, photos, tmp_path / "remote", "--timeout", 300)
        assert code == 0, comfy.log_tail()
    assert "done 2, skipped 0, failed 0" in capsys.readouterr().out

    ddcolor_inputs = [node["inputs"] for node in workflow.values() if node["class_type"].startswith("DDColor")]
    # The same requested precision as the server's run: the server and this process share the CPU,
    # so it resolves alike (what it resolves to differs between CPUs).
    assert main(["colorize", *map(str, photos), "-o", str(tmp_path / "local"), "--model", str(small_checkpoint),
                 "--size", str(ddcolor_inputs[0].get("size", 512)), "--precision", ddcolor_inputs[0].get("precision", "fp16")]) == 0
    for photo in photos:
        with Image.open(tmp_path / "remote" / f"{photo.stem}_color.png") as remote, \
             Image.open(tmp_path / "local" / f"{photo.stem}_color.png") as local:
            assert remote.size == local.size
            remote_rgb = np.asarray(remote.convert("RGB"), np.int16)
            difference = np.abs(remote_rgb - np.asarray(local.convert("RGB"), np.int16))
        assert (remote_rgb.max(-1) - remote_rgb.min(-1)).mean() > 2.0, f"{photo.name}: the server's result is gray"
        assert difference.mean() < 1.0, f"{photo.name}: server and local results differ by {difference.mean():.2f} on average"
        print(f"{photo.name}: server vs local mean |difference| {difference.mean():.3f}, max {difference.max()}")
