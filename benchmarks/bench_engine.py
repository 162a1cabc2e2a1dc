"""Engine benchmark: latency and peak memory of ours vs the original DDColor architecture.

Each (implementation, variant, size, precision) runs in a fresh subprocess
that loads a calibrated synthetic checkpoint of the published layout, runs
one warm-up forward and then ``--repeats`` timed ones. Reported:

* median latency of the forward pass (model input prepared, no image I/O);
* peak memory: on a CPU the peak RSS of the whole subprocess (loading
  included), on CUDA ``torch.cuda.max_memory_allocated``.

The peer is spandrel-extra-arches' port of the original code (``peer``),
measured in the same run, in fp32 (it declares fp16 unsupported), plus under
bf16 autocast where bf16 is measured for us.

    python benchmarks/bench_engine.py                       # CPU, the full table
    python benchmarks/bench_engine.py --variants tiny --sizes 512 --precisions fp32
    python benchmarks/bench_engine.py --device cuda --precisions fp32 fp16 bf16
    python benchmarks/bench_engine.py --markdown benchmarks/RESULTS.md   # append the table
    python benchmarks/bench_engine.py --live --precisions fp32 fp16     # live activation bytes (GPU estimate)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def checkpoint(variant: str) -> Path:
    """The calibrated checkpoint of ``variant``: the test suite's, built once into .cache/tests."""
    sys.path.insert(0, str(REPO))
    from tests.support import calibrated_checkpoint

    return calibrated_checkpoint(variant)


def measure(impl: str, path: str, size: int, precision: str, device: str, repeats: int, live: bool = False) -> dict:
    """Runs inside the subprocess. ``live``: report the peak bytes of live
    activation tensors of one forward (the profiler's allocation timeline)
    instead of timings: what a GPU's max_memory_allocated would add to the weights."""
    import resource

    import torch

    if impl == "ours":
        import ddcolor

        model = ddcolor.load_model(path, device=device, precision=precision, strict_precision=True)
        context = torch.inference_mode
    else:
        import warnings

        from spandrel_extra_arches.architectures.DDColor import DDColorArch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)["params"]
            model = DDColorArch().load(state).model.eval().to(device)
            del state

        def context():
            if precision == "fp32":
                return torch.inference_mode()
            autocast = torch.autocast(device.split(":")[0], dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])

            class Both:
                def __enter__(self):
                    self.inference = torch.inference_mode()
                    self.inference.__enter__()
                    autocast.__enter__()

                def __exit__(self, *exc):
                    autocast.__exit__(*exc)
                    self.inference.__exit__(*exc)

            return Both()

    x = torch.rand(1, 3, size, size, device=device)
    if live:
        from tests.support import peak_live_bytes

        with context():
            model(x)  # warm-up
            weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
            if precision != "fp32" and impl == "peer":
                return {"error": "autocast keeps fp32 weights; not comparable"}
        with context():
            return {"live_bytes": peak_live_bytes(lambda: model(x)), "weight_bytes": weights}
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with context():
            out = model(x)
        if cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    finite = bool(torch.isfinite(out).all())
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"latency_s": statistics.median(times), "peak_bytes": peak, "finite": finite}


def run_one(impl: str, variant: str, size: int, precision: str, device: str, repeats: int, live: bool = False) -> dict:
    code = (
        "import json, sys; sys.path.insert(0, %r); from benchmarks.bench_engine import measure; "
        "print('RESULT ' + json.dumps(measure(*json.loads(sys.argv[1]))))" % str(REPO)
    )
    args = json.dumps([impl, str(checkpoint(variant)), size, precision, device, repeats, live])
    proc = subprocess.run([sys.executable, "-c", code, args], cwd=REPO, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " / ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
    else:
        from ddcolor.precision import cpu_bf16_units

        model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
        units = {"amx": "AMX bf16 units", "avx512": "avx512_bf16, no AMX"}.get(cpu_bf16_units(), "no native bf16")
        name = f"{model} ({torch.backends.cpu.get_cpu_capability()}, {units}), {os.cpu_count()} cores"
    return f"{name}; torch {torch.__version__}; Python {platform.python_version()}"


def append_markdown(lines: list[str], markdown: Path | None) -> None:
    """Append a finished report (its lines) to the ``--markdown`` file, when one was given."""
    if markdown:
        with open(markdown, "a") as f:
            f.write("\n".join(lines) + "\n")


def report(lines: list[str], markdown: Path | None) -> None:
    """Print a finished report, and append it to the ``--markdown`` file when one was given."""
    print("\n".join(lines), flush=True)
    append_markdown(lines, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["tiny", "large"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024, 1280])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="measure ours only")
    parser.add_argument("--live", action="store_true", help="peak live activation and weight bytes instead of timings")
    parser.add_argument("--markdown", type=Path, help="append the table to this file")
    args = parser.parse_args()

    if args.live:
        header = "| variant | size | precision | ours weights + live activations | peer weights + live activations |"
        rows = [f"Machine: {machine(args.device)}; peak live tensor bytes of one forward (profiler).", "", header, "|" + "---|" * 5]
    else:
        header = "| variant | size | precision | ours latency | peer latency | ratio | ours peak mem | peer peak mem | ratio |"
        rows = [f"Machine: {machine(args.device)}; device {args.device}; median of {args.repeats} after 1 warm-up.", "", header, "|" + "---|" * 9]
    print("\n".join(rows), flush=True)
    for variant in args.variants:
        for size in args.sizes:
            for precision in args.precisions:
                ours = run_one("ours", variant, size, precision, args.device, args.repeats, args.live)
                peer = {} if args.no_peer else run_one("peer", variant, size, precision, args.device, args.repeats, args.live)
                rows.append((format_live_row if args.live else format_row)(variant, size, precision, ours, peer))
                print(rows[-1], flush=True)
    append_markdown(rows + [""], args.markdown)


def format_live_row(variant: str, size: int, precision: str, ours: dict, peer: dict) -> str:
    def cell(result: dict) -> str:
        if "live_bytes" not in result:
            return result.get("error", "-")
        weights, live = result["weight_bytes"] / 2**20, result["live_bytes"] / 2**20
        return f"{weights:.0f} + {live:.0f} = {weights + live:.0f} MiB"

    return f"| {variant} | {size} | {precision} | {cell(ours)} | {cell(peer)} |"


def format_row(variant: str, size: int, precision: str, ours: dict, peer: dict) -> str:
    def cell(result: dict, key: str) -> str:
        if "error" in result:
            return "error: " + result["error"][:80]
        if key not in result:
            return "-"
        value = result[key]
        flag = "" if result.get("finite", True) else " (non-finite!)"
        return (f"{value:.2f} s" if key == "latency_s" else f"{value / 2**30:.2f} GiB") + flag

    def ratio(key: str) -> str:
        if key in ours and key in peer:
            return f"{ours[key] / peer[key]:.2f}"
        return "-"

    peer_precision = precision if precision == "fp32" else f"{precision} autocast"
    return (
        f"| {variant} | {size} | {precision} | {cell(ours, 'latency_s')} | {cell(peer, 'latency_s')} ({peer_precision}) | "
        f"{ratio('latency_s')} | {cell(ours, 'peak_bytes')} | {cell(peer, 'peak_bytes')} | {ratio('peak_bytes')} |"
    )


if __name__ == "__main__":
    main()
