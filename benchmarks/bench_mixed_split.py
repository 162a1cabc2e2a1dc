"""Speed of each ``mixed`` split against fp32 and the original, interleaved in one process.

``precision.MIXED_SPLITS`` holds one split per kind of bf16 unit. This times a
forward of each split, of our fp32 and of the original architecture's fp32
(spandrel's port) round-robin, so a busy machine slows them alike and the
ratios stay meaningful where absolute times do not. The numerics of each split
are ``bench_precision.py --splits``.

    python benchmarks/bench_mixed_split.py --variant large --size 256 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_engine import machine  # noqa: E402
from ddcolor.precision import MIXED_SPLITS, apply_precision, mixed_split  # noqa: E402
from tests.calibrated import CONFIGS  # noqa: E402
from tests.oracle import load_state, original_model  # noqa: E402
from tests.support import calibrated_checkpoint, fresh_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="large", choices=sorted(CONFIGS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    state = load_state(calibrated_checkpoint(args.variant))
    runs = {"ours fp32": fresh_model(state).predict}
    for units, split in MIXED_SPLITS.items():
        mine = " (this CPU's)" if split == mixed_split() else ""
        label = f"ours mixed, {units} split{mine}: pwconv1 {split[0]}, pwconv2 {split[1]}"
        runs[label] = apply_precision(fresh_model(state), "mixed", split=split).predict
    runs["original fp32"] = original_model(dict(state)).eval()
    x = torch.rand(1, 3, args.size, args.size)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up
        run(x)
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - start)
    print(f"{args.variant} at {args.size}, median of {args.repeats}, {torch.get_num_threads()} thread(s); {machine('cpu')}\n")
    original = statistics.median(times["original fp32"])
    print("| run | median | / original fp32 |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} s | {median / original:.2f} |")


if __name__ == "__main__":
    main()
