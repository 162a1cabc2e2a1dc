"""Half precision against fp32: ab deviations and colorfulness, ours and the original.

For each variant, on the calibrated checkpoint and every stress recipe of
tests/calibrated.py, the fixture photos go through the network at ``--size``
in fp32 (reference) and in each run of ``--runs``:

* ``fp16``, ``mixed``, ``bf16``: ours, exactly that precision (strict), through ``forward``
  (so with the fp32 safety net; the table says when it fired);
* ``original-fp16``, ``original-bf16``: the original architecture
  (spandrel-extra-arches' port) under autocast.

Reported: finite, mean and max |ab - ab_fp32|, and the Hasler-Suesstrunk
colorfulness of the result relative to fp32. Half precision is emulated, and
slow, on CPUs without native half units; the numbers do not depend on speed.

    python benchmarks/bench_precision.py                          # tiny and large, 512, every recipe
    python benchmarks/bench_precision.py --variants tiny --size 384 --recipes none stage2

``--splits`` instead measures where ``mixed`` may use bf16: each candidate
holds the named MLP layers in bf16 and everything else in fp32, on the
calibrated checkpoints (how ``MIXED_SPLITS`` was chosen, per kind of CPU):

    python benchmarks/bench_precision.py --splits 0123 2 3 23 3:23 23:3
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_engine import machine  # noqa: E402
from ddcolor.checkpoint import model_from_state_dict  # noqa: E402
from ddcolor import precision  # noqa: E402
from ddcolor.precision import apply_precision  # noqa: E402
from tests.calibrated import FIXTURES, STRESS_RECIPES, stressed  # noqa: E402
from tests.oracle import load_state, original_model  # noqa: E402
from tests.support import calibrated_checkpoint, colorfulness_of, fixture_inputs, fresh_model  # noqa: E402

RUNS = ("fp16", "mixed", "bf16", "original-fp16", "original-bf16")


class FallbackWatch(logging.Handler):
    def __init__(self):
        super().__init__()
        self.fired = False

    def emit(self, record: logging.LogRecord) -> None:
        self.fired |= "redone in fp32" in record.getMessage()


def run(state: dict, x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """ab for ``x`` in run ``name``, and whether the fp32 safety net fired."""
    if name.startswith("original-"):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[name.split("-")[1]]
        with torch.autocast("cpu", dtype=dtype):
            return original_model(dict(state))(x).float(), False
    watch = FallbackWatch()
    logger = logging.getLogger("ddcolor")
    logger.addHandler(watch)
    try:
        return apply_precision(fresh_model(state), name)(x), watch.fired
    finally:
        logger.removeHandler(watch)


def parse_split(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """"23": both MLP layers of stages 2 and 3 in bf16; "3:23": pwconv1 of stage 3, pwconv2 of stages 2 and 3."""
    first, colon, second = text.partition(":")
    return tuple(map(int, first)), tuple(map(int, second if colon else first))


def split_rows(variant: str, x: torch.Tensor, splits: list[str]) -> None:
    """One row per split: bf16 in the MLP layers it names, fp32 elsewhere."""
    state = load_state(calibrated_checkpoint(variant))
    reference = model_from_state_dict(dict(state))(x)
    base_colorfulness = colorfulness_of(x, reference)
    for text in splits:
        split = parse_split(text)
        ab = apply_precision(fresh_model(state), "mixed", split=split).predict(x)
        diff = (ab - reference).abs()
        shift = colorfulness_of(x, ab) / base_colorfulness - 1
        label = f"pwconv1 {', '.join(map(str, split[0])) or '-'}; pwconv2 {', '.join(map(str, split[1])) or '-'}"
        label += " (this CPU's split)" if split == precision.mixed_split() else ""
        print(f"| {variant} | {label} | {diff.mean():.3f} | {diff.max():.2f} | {shift:+.2%} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["tiny", "large"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--recipes", nargs="+", default=["none", *STRESS_RECIPES], help="none and/or stress recipes")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--splits", nargs="+", metavar="STAGES", help="candidate mixed splits: 23 (both MLP layers of stages 2 and 3), 3:23 (pwconv1 of stage 3, pwconv2 of stages 2 and 3)")
    args = parser.parse_args()
    if args.splits and not all(re.fullmatch(r"[0-3]+(:[0-3]*)?", s) for s in args.splits):
        parser.error("--splits takes ConvNeXt stage digits 0-3, optionally pwconv1's:pwconv2's, e.g. --splits 0123 23 3:23")
    warnings.simplefilter("ignore")
    photos = sorted(p for p in FIXTURES.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    x = fixture_inputs(photos, args.size)
    print(f"{len(photos)} fixture photos at {args.size}; {machine('cpu')}\n")
    torch.set_grad_enabled(False)
    if args.splits:
        print("| variant | stages with bf16 MLPs | mean abs ab diff | max abs ab diff | colorfulness vs fp32 |")
        print("|---|---|---|---|---|")
        for variant in args.variants:
            split_rows(variant, x, args.splits)
        return
    print("| variant | checkpoint | run | finite | mean abs ab diff | max abs ab diff | colorfulness vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for variant in args.variants:
        base = load_state(calibrated_checkpoint(variant))
        for recipe in args.recipes:
            if recipe == "none":
                state = base
            elif recipe == "blocks":
                state = load_state(calibrated_checkpoint(variant, stress="blocks"))
            else:
                state = stressed(base, recipe, x)
            reference = model_from_state_dict(dict(state))(x)
            base_colorfulness = colorfulness_of(x, reference)
            for name in args.runs:
                ab, fell_back = run(state, x, name)
                if name.startswith("original-"):
                    label = f"original, {name.removeprefix('original-')} autocast"
                else:
                    label = f"ours {name}" + (" (fp32 safety net fired)" if fell_back else "")
                row = f"| {variant} | {'calibrated' if recipe == 'none' else recipe} | {label} |"
                if not torch.isfinite(ab).all():
                    print(f"{row} False ({(~torch.isfinite(ab)).float().mean():.1%} NaN/Inf) | - | - | - |", flush=True)
                    continue
                diff = (ab - reference).abs()
                shift = colorfulness_of(x, ab) / base_colorfulness - 1
                print(f"{row} True | {diff.mean():.3f} | {diff.max():.2f} | {shift:+.2%} |", flush=True)


if __name__ == "__main__":
    main()
