"""Images per second of ``python -m ddcolor colorize`` locally and on Ray, and what Ray adds per image.

    python benchmarks/bench_ray.py                       # 16 photos, size 512, tiny checkpoint
    python benchmarks/bench_ray.py --count 16 --size 512 --variant tiny

Starts a one-node Ray cluster on this machine (loopback only, all its cores),
as a cluster that is already up, then runs the real command line in a fresh
process on the same photos (about 1000x700, as benchmarks/bench_cli.py makes
them) three ways:

* local: ``colorize`` without Ray (one model, PyTorch on every core);
* ray, 1 worker: ``--ray ADDRESS --workers 1`` (one model holding every core:
  the same computation as local, so the difference is what Ray adds);
* ray, 2 workers: ``--workers 2`` (two models, the cores split between them).

Per run: the process's wall time (spawn to exit), the time to the first
output, and the steady rate from the first output to the last (output files'
modification times), so start-up (connecting, starting workers, shipping and
loading the model) is told apart from the cost per image. On a machine with
few cores the cores are the ceiling: two workers share the same cores one
local model uses, so the rate can at best match the local one; the ratio is
what to read. On a cluster the rate grows with the workers (one per GPU).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Keep every Ray address on 127.0.0.1 (Ray would otherwise bind the machine's network address).
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def machine() -> str:
    import ray
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), platform.processor())
    flags = set(next((l.split(":", 1)[1].split() for l in cpuinfo.splitlines() if l.startswith("flags")), []))
    units = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags] or ["no AVX2"]
    return (
        f"{model} ({', '.join(units)}), {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Ray {ray.__version__}, Python {platform.python_version()}"
    )


def run(label: str, command: list[str], out: Path, count: int, env: dict) -> dict:
    load = os.getloadavg()[0]
    began_wall = time.time()
    began = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    summary = next((l for l in result.stdout.splitlines() if l.startswith("colorized")), "")
    threads = sorted(set(re.findall(r"worker on node \w+: cpu \(\w+\), (\d+) thread", result.stdout)))
    outputs = sorted(p.stat().st_mtime for p in out.glob("*_color.png"))
    if result.returncode != 0 or len(outputs) != count:
        sys.exit(f"{label} failed ({result.returncode}, {len(outputs)} outputs):\n{result.stdout}\n{result.stderr[-3000:]}")
    first = outputs[0] - began_wall
    rate = (count - 1) / (outputs[-1] - outputs[0]) if count > 1 and outputs[-1] > outputs[0] else float("nan")
    print(
        f"{label:<16} {count / wall:5.2f} img/s end to end ({wall:5.1f} s), first output after {first:5.1f} s, "
        f"then {rate:5.2f} img/s ({1 / rate:5.2f} s per image); load average {load:.1f}",
        flush=True,
    )
    print(f"{'':<16} CLI: {summary}" + (f"; workers ran {'/'.join(threads)} PyTorch thread(s)" if threads else ""), flush=True)
    return {"wall": wall, "first": first, "rate": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--variant", default="tiny", choices=("tiny", "small", "large"))
    args = parser.parse_args()

    temp = tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp")  # short: Ray's socket paths
    os.environ.update(LOOPBACK_ONLY, RAY_TMPDIR=temp)
    os.environ.pop("RAY_ADDRESS", None)
    sys.path.insert(0, str(REPO))
    from benchmarks.bench_cli import make_photos
    from tests.support import calibrated_checkpoint  # built once, cached in .cache/tests

    from ray.cluster_utils import Cluster

    print(f"machine: {machine()}")
    model = calibrated_checkpoint(args.variant)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    node = {
        "node_ip_address": "127.0.0.1", "num_cpus": os.cpu_count(), "include_dashboard": False, "dashboard_agent_listen_port": 0,
        "object_store_memory": max(1 << 30, 3 * model.stat().st_size),  # the checkpoint travels through it
    }
    cluster = Cluster(initialize_head=True, head_node_args=node)
    try:
        work = Path(temp)
        inputs = work / "in"
        inputs.mkdir()
        make_photos(inputs, args.count)
        print(f"{args.count} photos of about 1000x700, size {args.size}, calibrated {args.variant} checkpoint, fp32 on the CPU")
        base = [sys.executable, "-m", "ddcolor", "colorize", str(inputs), "--model", str(model), "--size", str(args.size)]
        results = {}
        for label, extra in [
            ("local", []),
            ("ray, 1 worker", ["--ray", cluster.address, "--workers", "1"]),
            ("ray, 2 workers", ["--ray", cluster.address, "--workers", "2"]),
        ]:
            out = work / label.replace(", ", "-").replace(" ", "")
            results[label] = run(label, [*base, "-o", str(out), *extra], out, args.count, env)
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    local, one, two = results["local"], results["ray, 1 worker"], results["ray, 2 workers"]
    print(
        f"Ray adds {1 / one['rate'] - 1 / local['rate']:+.3f} s per image (1 worker against local, same cores and threads) "
        f"and {one['first'] - local['first']:+.1f} s before the first image (joining, starting the worker, shipping the model); "
        f"2 workers run at {two['rate'] / local['rate']:.2f}x the local rate and {two['rate'] / one['rate']:.2f}x one worker's "
        f"on these {os.cpu_count()} cores."
    )


if __name__ == "__main__":
    main()
