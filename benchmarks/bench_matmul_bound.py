"""The fastest a CPU can run DDColor's forward in fp32: its matrix-multiply rate on the model's own shapes.

Most of DDColor's work is the ConvNeXt encoder's MLPs (two linear layers per
block, run over row bands of the image). This script times those matrix
products, with the band shapes our encoder uses at ``--size``, and counts the
FLOPs of one whole fp32 forward (PyTorch's FLOP counter, on the calibrated
checkpoint benchmarks/bench_engine.py uses). No forward can take less
than its FLOPs divided by the best rate measured, so that quotient is a lower
bound for the machine; our forward is timed in the same process beside it
(benchmarks/bench_engine.py times it from a checkpoint, against the original).
A busy machine lowers every rate: the load average is printed.

    python benchmarks/bench_matmul_bound.py                          # DDColor-L at 512, fp32
    python benchmarks/bench_matmul_bound.py --variant tiny --size 1024
    python benchmarks/bench_matmul_bound.py --dtypes fp32 bf16 fp16  # the same products in half: fast where the CPU has units for it

Threads: PyTorch's default (one per core); set OMP_NUM_THREADS to change it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ddcolor  # noqa: E402
from benchmarks.bench_engine import checkpoint, machine  # noqa: E402
from ddcolor.convnext import VARIANTS  # noqa: E402
from ddcolor.layers import CHUNK_ELEMENTS  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def mlp_shapes(variant: str, size: int) -> list[tuple[int, int, int, int]]:
    """(stage, rows x width tokens of one band, in features, out features) of each MLP product, as
    ``convnext.Block.forward`` bands them for one image."""
    shapes = []
    for stage, dim in enumerate(VARIANTS[variant][1]):
        width = size // 4 // 2**stage
        rows = min(width, max(1, CHUNK_ELEMENTS // (width * 4 * dim)))
        shapes += [(stage, rows * width, dim, 4 * dim), (stage, rows * width, 4 * dim, dim)]
    return shapes


def matmul_rate(tokens: int, inputs: int, outputs: int, dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of ``F.linear`` (bias included, as the model runs it): median of ``repeats`` after a warm-up."""
    x = torch.randn(tokens, inputs).to(dtype)
    weight = (torch.randn(outputs, inputs) / inputs**0.5).to(dtype)
    bias = torch.zeros(outputs).to(dtype)
    F.linear(x, weight, bias)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        F.linear(x, weight, bias)
        times.append(time.perf_counter() - start)
    return 2 * tokens * inputs * outputs / statistics.median(times) / 1e9


def forward_cost(variant: str, size: int, repeats: int, path: Path | None = None) -> tuple[int, int, float]:
    """FLOPs of one fp32 forward of a (1, 3, size, size) image, those of its encoder MLPs alone,
    and the forward's median time over ``repeats`` after a warm-up, in this process."""
    from torch.utils.flop_counter import FlopCounterMode

    # A calibrated checkpoint, not random weights: those drive activations into
    # subnormal floats, which CPUs compute many times slower.
    model = ddcolor.load_model(path or checkpoint(variant), precision="fp32")
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:  # also the warm-up
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    depths = VARIANTS[variant][0]
    mlp = sum(
        2 * (size // 4 // 2**stage) ** 2 * inputs * outputs * depths[stage]
        for stage, _, inputs, outputs in mlp_shapes(variant, size)
    )
    return counter.get_total_flops(), mlp, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="large", choices=VARIANTS)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=DTYPES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint of --variant to time (default: the calibrated one of bench_engine.py, made if missing)")
    args = parser.parse_args()

    print(f"machine: {machine('cpu')}, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f} at the start")
    print(f"DDColor-{args.variant[0].upper()} at {args.size}: encoder MLP products (one band each), median of {args.repeats}")
    print("| stage | band tokens | in | out | " + " | ".join(f"{d} GFLOP/s" for d in args.dtypes) + " |")
    print("|---|---|---|---|" + "---|" * len(args.dtypes))
    rates = {d: [] for d in args.dtypes}
    for stage, tokens, inputs, outputs in mlp_shapes(args.variant, args.size):
        row = []
        for name in args.dtypes:
            rates[name].append(matmul_rate(tokens, inputs, outputs, DTYPES[name], args.repeats))
            row.append(f"{rates[name][-1]:.0f}")
        print(f"| {stage} | {tokens} | {inputs} | {outputs} | " + " | ".join(row) + " |")

    total, mlp, seconds = forward_cost(args.variant, args.size, args.repeats, args.checkpoint)
    print(f"forward: {total / 1e9:.0f} GFLOP, of which the encoder MLPs {mlp / 1e9:.0f} GFLOP ({mlp / total:.0%})")
    if "fp32" in rates:
        best = max(rates["fp32"])
        bound = total / 1e9 / best
        print(
            f"fp32 matmul rate on these shapes: {min(rates['fp32']):.0f}-{best:.0f} GFLOP/s; lower bound for the "
            f"fp32 forward: {bound:.2f} s (all of it at the best rate); ours measured here: {seconds:.2f} s "
            f"({seconds / bound:.2f}x the bound, {total / 1e9 / seconds:.0f} GFLOP/s on average)"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
