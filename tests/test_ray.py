"""``python -m ddcolor colorize ... --ray``: the local batch on a real Ray cluster (ddcolor/cli/ray_runner.py).

The clusters here are real: raylets started with Ray's own ``Cluster`` on this
machine, every address on the loopback, stopped through the API that started
them. The rules for workers (how many, where, with how many cores) are tested
without a cluster on a stand-in for the two calls they read.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ddcolor.cli import main
from ddcolor.cli.batch import DONE, FAILED, Job, Outcome, Summary
from tests.support import photo, probe, write_clip

REPO = Path(__file__).resolve().parent.parent
# Ray binds every node to the machine's network address unless told it is a
# one-machine cluster: this keeps the nodes, the driver and the CLI on 127.0.0.1.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
NODE = {
    "node_ip_address": "127.0.0.1",
    "object_store_memory": 96 << 20,
    "include_dashboard": False,
    "dashboard_agent_listen_port": 0,
}
# A killed node is declared dead after ~5 s instead of Ray's default ~15 s.
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 5}


def run(*args) -> int:
    return main([str(a) for a in args])


def make_photos(folder: Path, count: int, width: int = 96, height: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"p{i}.png")
        Image.fromarray(photo(width, height, seed=i)).save(paths[-1])
    return paths


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too: temporaries must not be there)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def local_run(*args, threads: int) -> None:
    """The local command, with PyTorch on ``threads`` threads as a worker holding that many cores runs it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run(*args)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def ray_environment():
    """Loopback-only Ray with a private temp folder (its sockets, logs and the
    current-cluster file), so nothing here joins or disturbs another Ray on this machine."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip('the ray extra is not installed: pip install -e ".[ray]"')
    temp = tempfile.mkdtemp(prefix="ddray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    saved = {key: os.environ.get(key) for key in [*LOOPBACK_ONLY, "RAY_TMPDIR", "RAY_ADDRESS"]}
    os.environ.update(LOOPBACK_ONLY, RAY_TMPDIR=temp)  # before Ray is imported: it reads them then
    os.environ.pop("RAY_ADDRESS", None)
    assert "ray" not in sys.modules, "Ray was imported before its environment was set"
    try:
        yield temp
    finally:
        leftovers = processes_using(temp)
        for pid in leftovers:  # only processes of our own private session folder
            os.kill(pid, signal.SIGKILL)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp, ignore_errors=True)
        assert not leftovers, f"Ray processes left running: {leftovers}"


def processes_using(temp: str, wait: float = 10.0) -> list[int]:
    """Processes whose command line names ``temp`` (the Ray processes we started), after
    giving them ``wait`` seconds to exit."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if temp.encode() in cmdline:
                    found.append(int(entry))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(ray_environment):
    """Three raylets on this machine: a head without CPUs (it keeps the cluster's
    state and would take the whole cluster down with it) and two 1-core nodes for workers."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_cpus": 0, "_system_config": HEALTH_CHECKS})
    try:
        for _ in range(2):
            cluster.add_node(**NODE, num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


# ----------------------------------------------------------------------------- on a cluster


@pytest.mark.slow
def test_ray_alone_runs_on_a_local_instance_stops_on_ctrl_c_and_resumes(ray_environment, tmp_path, small_checkpoint):
    """``--ray`` without an address, no cluster running: a local instance is started and
    stopped with the run. Ctrl-C stops the run with complete files only and an honest
    count; the same command with --skip-existing then does exactly what is missing, and
    the files are those of the local run (the one worker owns every core, as it does)."""
    count = 12
    folder = tmp_path / "in"
    make_photos(folder, count, 320, 240)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ddcolor", "colorize", str(folder), "-o", str(out),
               "--model", str(small_checkpoint), "--size", "128", "--ray"]
    own_temp = tempfile.mkdtemp(prefix="ddray", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": own_temp}  # its own current-cluster file: nothing to join
    try:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 240
        while not list(out.glob("*_color.png")):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "no image done within 240 s:\n" + "".join(lines)
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130, "".join(lines)
        reader.join(timeout=10)
        log = "".join(lines)
        assert processes_using(own_temp) == []  # the instance it started is gone

        written = sorted(out.iterdir())
        assert 1 <= len(written) < count and all(p.name.endswith("_color.png") for p in written)  # no temporaries
        for path in written:
            with Image.open(path) as image:
                image.load()  # complete
        assert f"colorized {len(written)}, skipped 0, failed 0" in log
        assert f"interrupted: {count - len(written)} image(s) not started" in log

        resumed = subprocess.run([*command, "--skip-existing"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"colorized {count - len(written)}, skipped {len(written)}, failed 0" in resumed.stdout
        assert processes_using(own_temp) == []
    finally:
        if process.poll() is None:
            process.kill()
        for pid in processes_using(own_temp, wait=0):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(own_temp, ignore_errors=True)
    cores = int(re.search(r"1 CPU worker\(s\) of (\d+) core\(s\)", log)[1])
    assert int(re.search(r"(\d+) thread\(s\)", log)[1]) == cores
    local_run("colorize", folder, "-o", tmp_path / "local", "--model", small_checkpoint, "--size", 128, threads=cores)
    assert files(out) == files(tmp_path / "local")


@pytest.mark.slow
def test_a_cluster_run_writes_what_the_local_run_writes(cluster, tmp_path, small_checkpoint, capsys, monkeypatch):
    """Same files byte for byte, same summary and exit code, a corrupt file reported,
    options (format, quality, suffix) meaning the same."""
    from ddcolor.cli import ray_runner

    folder = tmp_path / "in"
    make_photos(folder, 2)
    Image.fromarray(photo(72, 120, seed=5)).save(folder / "p2.png")
    Image.fromarray(photo(seed=7)).convert("LA").save(folder / "alpha.png")  # stays PNG with --format jpg
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_clip(folder / "film.mp4", frames=6)  # a video is one task: the whole clip on one worker
    # Blocks of several images, as in collections past MAX_BLOCKS: shapes differ within a block.
    monkeypatch.setattr(ray_runner, "MAX_BLOCKS", 2)
    options = ["--model", small_checkpoint, "--size", 64, "--format", "jpg", "--quality", 80, "--suffix", "_c"]

    local_run("colorize", folder, "-o", tmp_path / "local", *options, threads=1)  # each worker holds 1 core
    capsys.readouterr()
    assert run("colorize", folder, "-o", tmp_path / "ray", *options, "--ray", cluster.address) == 1
    captured = capsys.readouterr()

    ray_files, local_files = files(tmp_path / "ray"), files(tmp_path / "local")
    assert sorted(ray_files) == ["alpha_c.png", "film_c.mp4", "p0_c.jpg", "p1_c.jpg", "p2_c.jpg"]
    assert {k: v for k, v in ray_files.items() if not k.endswith(".mp4")} == {
        k: v for k, v in local_files.items() if not k.endswith(".mp4")
    }
    # The video: the same frames (H.264's bytes may depend on the encoder's threads), sound kept.
    on_ray, local = probe(tmp_path / "ray" / "film_c.mp4"), probe(tmp_path / "local" / "film_c.mp4")
    assert on_ray["frames"].shape == local["frames"].shape == (6, 48, 64, 3)
    assert np.abs(on_ray["frames"].astype(int) - local["frames"]).max() <= 2
    assert len(on_ray["audio"]) == 1
    assert "colorized 5, skipped 0, failed 1" in captured.out
    assert f"failed: {folder / 'corrupt.png'}: cannot decode" in captured.out
    assert "written as alpha_c.png to keep its alpha channel" in captured.out
    assert "CPU worker(s) of 1 core(s)" in captured.err


@pytest.mark.slow
def test_a_node_killed_mid_run_loses_nothing_and_does_nothing_twice(cluster, ray_environment, tmp_path, small_checkpoint):
    """SIGKILL the node whose worker is colorizing, mid-run: Ray restarts the worker on
    the other node and retries what was lost; every image ends up written once, whole,
    as the local run writes it, and the summary counts each once."""
    count = 16
    folder = tmp_path / "in"
    make_photos(folder, count, 320, 240)
    out = tmp_path / "out"
    out.mkdir()
    # What a writer killed mid-write by an earlier crash leaves; the run cleans it away.
    (out / ".p3_color.png.abcd_123.part").write_bytes(b"\x89PNG half")
    options = ["--model", small_checkpoint, "--size", 128]
    local_run("colorize", folder, "-o", tmp_path / "local", *options, threads=1)

    command = [sys.executable, "-m", "ddcolor", "colorize", str(folder), "-o", str(out), *map(str, options),
               "--ray", cluster.address, "--workers", "1"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        worker_node = None
        while worker_node is None or not list(out.glob("*_color.png")):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "no image done within 240 s:\n" + "".join(lines)
            worker_node = worker_node or next((m[1] for m in map(WORKER_LINE.search, list(lines)) if m), None)
            time.sleep(0.2)
        done_before_kill = len(list(out.glob("*_color.png")))
        victim = next(node for node in cluster.worker_nodes if node.node_id == worker_node)
        cluster.remove_node(victim, allow_graceful=False)
        assert process.wait(timeout=240) == 0, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
    log = "".join(lines)

    assert done_before_kill < count, "the run ended before the node was killed; nothing was tested"
    restarted_on = {m[1] for m in WORKER_LINE.finditer(log)} - {worker_node}
    assert restarted_on, f"no worker started on another node after the kill:\n{log}"
    assert files(out) == files(tmp_path / "local")  # each image once, complete, no temporaries
    assert f"colorized {count}, skipped 0, failed 0" in log


WORKER_LINE = re.compile(r"worker on node ([0-9a-f]+): cpu")


# ----------------------------------------------------------------------------- without a cluster


@pytest.mark.parametrize(
    "options, message",
    [
        (["--ray", "--device", "cuda:1"], "each worker takes the device Ray gives it"),
        (["--workers", "2"], "--workers applies to --ray runs"),
        (["--ray", "--workers", "0"], "--workers 0: use 1 or more"),
    ],
)
def test_usage_errors_come_before_any_cluster(photos, small_checkpoint, capsys, options, message):
    assert run("colorize", photos, "--model", small_checkpoint, *options) == 2
    assert message in capsys.readouterr().err
    assert not list(photos.glob("*_color*"))


def test_an_address_that_is_an_input_is_caught(photos, small_checkpoint, capsys):
    """``--ray scans/ more.png`` reads scans/ as the address: say so instead of joining nothing."""
    assert run("colorize", photos / "p0.png", "--model", small_checkpoint, "--ray", photos) == 2
    assert "write --ray after the inputs" in capsys.readouterr().err


def test_urls_are_refused_before_anything_is_written(photos, small_checkpoint, tmp_path, monkeypatch, capsys):
    """Only file systems are supported (on a cluster, one every machine sees at the same path)."""
    monkeypatch.chdir(tmp_path)
    assert run("colorize", "s3://archive/scans", "--model", small_checkpoint, "--ray") == 2
    assert "s3://archive/scans: URLs are not supported" in capsys.readouterr().err
    assert run("colorize", photos, "-o", "s3://archive/colored", "--model", small_checkpoint, "--ray") == 2
    assert "URLs are not supported" in capsys.readouterr().err
    assert not (tmp_path / "s3:").exists()


def test_without_ray_installed_the_error_says_how_to_install_it(photos, small_checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert run("colorize", photos, "--model", small_checkpoint, "--ray") == 2
    assert 'pip install "comfyui-ddcolor-fp16[ray]"' in capsys.readouterr().err


def test_the_local_run_never_imports_ray(photos, small_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # any import of ray (or ray.data) would raise
    assert run("colorize", photos, "--model", small_checkpoint, "--size", 64) == 0


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    make_photos(folder, 2)
    return folder


class FakeRay:
    """The two calls plan_workers reads: the cluster's totals and its nodes."""

    def __init__(self, *nodes: dict):
        self._nodes = [{"Alive": True, "Resources": resources} for resources in nodes]

    def cluster_resources(self) -> dict:
        totals: dict = {}
        for node in self._nodes:
            for key, value in node["Resources"].items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def nodes(self) -> list:
        return self._nodes


CHECKPOINT = SimpleNamespace(fp32_bytes=900 << 20)


@pytest.mark.parametrize(
    "nodes, device, workers, expected",
    [
        # GPUs: one worker per GPU, fewer with --workers; CPU-only nodes then just read and write.
        ([{"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 4}, {"CPU": 64}], "auto", None, ("cuda", 8, 1)),
        ([{"CPU": 16, "GPU": 4}], "auto", 2, ("cuda", 2, 1)),
        ([{"CPU": 16, "GPU": 4}], "cpu", None, ("cpu", 1, 16)),
        # CPUs: a worker owns a node of the smallest size, like a local run there...
        ([{"CPU": 0}, {"CPU": 8}, {"CPU": 8}], "auto", None, ("cpu", 2, 8)),
        ([{"CPU": 8}, {"CPU": 32}], "auto", None, ("cpu", 5, 8)),
        # ...and --workers N splits the cluster's cores N ways.
        ([{"CPU": 8}, {"CPU": 8}], "auto", 4, ("cpu", 4, 4)),
        ([{"CPU": 2}], "auto", 2, ("cpu", 2, 1)),
        ([{"CPU": 2}], "auto", 5, ("cpu", 2, 1)),
    ],
)
def test_worker_plan(nodes, device, workers, expected):
    from ddcolor.cli.ray_runner import plan_workers

    plan = plan_workers(FakeRay(*nodes), device, workers, CHECKPOINT, 512)
    assert (plan.device, plan.workers, plan.cpus_per_worker) == expected
    if plan.device == "cpu":  # Ray places no more CPU workers on a node than its memory holds
        assert plan.actor_resources()["memory"] > CHECKPOINT.fp32_bytes


def test_cuda_on_a_cluster_without_gpus_is_a_usage_error():
    from ddcolor.cli.batch import UsageError
    from ddcolor.cli.ray_runner import plan_workers

    with pytest.raises(UsageError, match="no GPUs"):
        plan_workers(FakeRay({"CPU": 8}), "cuda", None, CHECKPOINT, 512)


def test_lost_reports_are_settled_from_what_is_on_disk(tmp_path):
    """An image whose report never came counts as done only if its output was replaced
    since the run was planned; otherwise it is not finished (or failed, if the run failed)."""
    from ddcolor.cli.ray_runner import output_identities, settle

    jobs = [Job(tmp_path / f"p{i}.png", tmp_path / f"p{i}_color.png") for i in range(4)]
    jobs[3].target.write_bytes(b"from an earlier run")
    before = {i: output_identities(job) for i, job in enumerate(jobs)}
    jobs[0].target.write_bytes(b"reported")
    jobs[1].target.write_bytes(b"written, then the node died before reporting")
    outcomes = {0: Outcome(jobs[0], DONE)}

    summary = Summary()
    settle(jobs, outcomes, before, None, summary)
    assert [(o.job.source.name, o.status) for o in summary.outcomes] == [("p0.png", DONE), ("p1.png", DONE)]
    assert "report was lost" in summary.outcomes[1].reason
    assert summary.not_started == 2 and summary.exit_code() == 130

    failed = Summary()
    settle(jobs, outcomes, before, RuntimeError("GCS unreachable"), failed)
    assert [o.status for o in failed.outcomes] == [DONE, DONE, FAILED, FAILED]
    assert "the Ray run failed (RuntimeError: GCS unreachable)" in failed.outcomes[2].reason
    assert failed.exit_code() == 1


def test_a_row_flows_through_the_stages_as_on_the_workers(tmp_path, small_checkpoint, monkeypatch):
    """The three stage functions, called in order as Ray calls them: an image comes out
    as the local run writes it; a whole-file job (a video, later) runs on the model
    worker and passes the write stage untouched; one that raises fails that file only."""
    import torch

    import ddcolor
    from ddcolor.cli import ray_runner
    from ddcolor.cli.ray_runner import ModelWorker, Options, read_stage, write_stage

    make_photos(tmp_path / "in", 1)
    # fp32 on both sides: auto is mixed on CPUs with bf16 units, fp32 on others.
    local_run("colorize", tmp_path / "in", "-o", tmp_path / "local", "--model", small_checkpoint, "--size", 64, "--precision", "fp32",
              threads=torch.get_num_threads())
    calls = []

    def whole_file(model, job, options):
        calls.append((job.source.name, options.size))
        if job.source.name == "broken.mov":
            raise RuntimeError("no video stream")
        return Outcome(job, DONE, "240 frames")

    monkeypatch.setitem(ray_runner.WHOLE_FILE_JOBS, "clip", whole_file)
    worker = ModelWorker.__new__(ModelWorker)  # what __init__ sets up, without Ray
    worker.options = Options(small_checkpoint.name, "cpu", "fp32", False, 64, 95)
    worker.model = ddcolor.load_model(small_checkpoint, precision="fp32")
    rows = [
        {"index": 0, "kind": "image", "source": str(tmp_path / "in" / "p0.png"), "target": str(tmp_path / "ray" / "p0_color.png")},
        {"index": 1, "kind": "clip", "source": str(tmp_path / "film.mov"), "target": str(tmp_path / "ray" / "film_color.mp4")},
        {"index": 2, "kind": "clip", "source": str(tmp_path / "broken.mov"), "target": str(tmp_path / "ray" / "broken_color.mp4")},
    ]
    results = []
    for row in rows:
        read = read_stage(row)
        batch = {key: [value] for key, value in read.items()}  # batch_size=1, as map_batches gives it
        colored = worker(batch)
        results.append(write_stage({key: values[0] for key, values in colored.items()}, quality=95))

    assert [(r["index"], r["status"]) for r in results] == [(0, DONE), (1, DONE), (2, FAILED)]
    assert results[1]["reason"] == "240 frames" and "clip failed: no video stream" in results[2]["reason"]
    assert calls == [("film.mov", 64), ("broken.mov", 64)]
    assert files(tmp_path / "ray") == files(tmp_path / "local")
