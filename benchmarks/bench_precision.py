"""Half precision against fp32: ab deviations and colorfulness, ours and the original.

For each variant and checkpoint (calibrated, stress), the fixture photos go
through the network at ``--size`` in fp32 (reference), fp16 and bf16 (ours,
strict: exactly that precision), and through the original architecture
(spandrel-extra-arches' port) under fp16 / bf16 autocast. Reported: finite,
mean and max |ab - ab_fp32|, and the Hasler-Suesstrunk colorfulness of the
result relative to fp32.

    python benchmarks/bench_precision.py                     # tiny and large, 512
    python benchmarks/bench_precision.py --variants tiny --size 384
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ddcolor.checkpoint import model_from_state_dict  # noqa: E402
from ddcolor.precision import apply_precision  # noqa: E402
from tests.calibrated import FIXTURES, make_checkpoint  # noqa: E402
from tests.oracle import original_model  # noqa: E402
from tests.test_precision import colorfulness_of, fixture_inputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["tiny", "large"])
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    photos = sorted(p for p in FIXTURES.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    x = fixture_inputs(photos, args.size)
    print(f"{len(photos)} fixture photos at {args.size}; torch {torch.__version__}; CPU\n")
    print("| variant | checkpoint | run | finite | mean abs ab diff | max abs ab diff | colorfulness vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for variant in args.variants:
        for stress in (False, True):
            state = make_checkpoint(variant, stress=stress)
            with torch.inference_mode():
                reference = model_from_state_dict(dict(state))(x)
                runs = {f"ours {p}": apply_precision(model_from_state_dict(dict(state)), p)(x) for p in ("fp16", "bf16")}
                original = original_model(dict(state))
                for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
                    with torch.autocast("cpu", dtype=dtype):
                        runs[f"original, {name} autocast"] = original(x).float()
                del original
            base = colorfulness_of(x, reference)
            for run, ab in runs.items():
                row = f"| {variant} | {'stress' if stress else 'calibrated'} | {run} |"
                if not torch.isfinite(ab).all():
                    print(f"{row} False ({(~torch.isfinite(ab)).float().mean():.1%} NaN/Inf) | - | - | - |", flush=True)
                    continue
                diff = (ab - reference).abs()
                shift = colorfulness_of(x, ab) / base - 1
                print(f"{row} True | {diff.mean():.3f} | {diff.max():.2f} | {shift:+.2%} |", flush=True)


if __name__ == "__main__":
    main()
