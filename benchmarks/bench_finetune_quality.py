"""A fine-tuning quality run anyone can repeat offline: ΔE to the true colors before and after.

    pip install -e ".[bench]"          # scikit-image, for its sample photos (no download at run time)
    python benchmarks/bench_finetune_quality.py                          # tiny, 128 px, 150 steps
    python benchmarks/bench_finetune_quality.py --steps 300 --size 192 --markdown benchmarks/RESULTS.md

From the calibrated DDColor-T checkpoint (tests/support.py; synthetic
weights, not the published ones), fine-tune with ``ddcolor.finetune`` on the
color photographs that scikit-image ships inside its package (astronaut,
coffee, rocket, the two motorcycle views, retina, immunohistochemistry,
Hubble deep field) and validate on other photos: scikit-image's chelsea (a
cat) and the color photos of ../shared/fixtures where that folder exists.
Reported at each validation: mean CIEDE2000 ΔE between the model's colors and
the true ones (on the photos' own lightness, center crops at ``--size``),
against the trivial gray answer (ab = 0, the same lightness), and
colorfulness. The perceptual loss is off: its VGG16-bn ImageNet weights
cannot be downloaded offline.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_engine import machine, report  # noqa: E402
from tests.support import FIXTURES, calibrated_checkpoint  # noqa: E402

TRAIN_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
                "retina.jpg", "ihc.png", "hubble_deep_field.jpg")
VALIDATION_PHOTOS = ("chelsea.png",)


def skimage_photos() -> Path:
    """scikit-image's data folder, found without importing it (no download happens either way)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-image is not installed: pip install -e \".[bench]\" (or pip install scikit-image)")
    return Path(spec.submodule_search_locations[0]) / "data"


def photos(folder: Path, names) -> list:
    from ddcolor.cli.finetune import photos_from_files

    return photos_from_files([str(folder / name) for name in names])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tiny", choices=("small", "tiny", "large"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--train", default="all", choices=("all", "decoder", "lora"))
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--out", type=Path, help="where the checkpoint, log and PNGs go (default: a temporary folder)")
    parser.add_argument("--markdown", type=Path, help="append the table to this file")
    args = parser.parse_args(argv)

    from ddcolor.finetune import FinetuneConfig, finetune

    data = skimage_photos()
    validation = photos(data, VALIDATION_PHOTOS)
    shared = sorted(p.name for p in FIXTURES.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    validation += photos(FIXTURES, shared)  # gray ones among them are left out (and said so)
    out = args.out or Path(tempfile.mkdtemp(prefix="ddcolor_quality_"))
    config = FinetuneConfig(
        output=out / f"quality_{args.variant}.pth", model=str(calibrated_checkpoint(args.variant)), steps=args.steps,
        batch=args.batch, size=args.size, lr=args.lr, precision=args.precision, train=args.train,
        val_every=args.val_every, save_every=0, perceptual=False,
    )
    command = "python benchmarks/bench_finetune_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Machine: {machine('cpu')}", flush=True)
    began = time.perf_counter()
    result = finetune(config, photos(data, TRAIN_PHOTOS), validation, say=lambda message: print(message, flush=True))
    minutes = (time.perf_counter() - began) / 60
    first = result.validations[0]
    used = [s.name for s in result.skipped_photos]
    lines = [
        "",
        f"Machine: {machine('cpu')}. Command: `{command.strip()}` ({minutes:.0f} min).",
        f"DDColor-{args.variant} (calibrated synthetic checkpoint), {result.precision}, train {args.train}, {args.steps} steps of "
        f"{args.batch} at {args.size}, lr {args.lr:g}, perceptual loss off (VGG16-bn weights unavailable offline). "
        f"Trained on {result.train_photos} scikit-image photos ({', '.join(TRAIN_PHOTOS)}); validated on "
        f"{result.validation_photos} others (center crops): {', '.join(VALIDATION_PHOTOS)}"
        + (f" and ../shared/fixtures' color photos" if shared else "")
        + (f" (left out: {', '.join(Path(n).name for n in used)})" if used else "") + ".",
        "",
        "| step | mean ΔE (CIEDE2000) to the true colors | colorfulness |",
        "|---|---|---|",
        *(f"| {v['step']} | {v['delta_e']:.2f} | {v['colorfulness']:.1f} |" for v in result.validations),
        f"| gray answer (ab = 0) | {first['delta_e_gray']:.2f} | 0 |",
        f"| true colors | 0 | {first['colorfulness_true']:.1f} |",
        "",
    ]
    report(lines, args.markdown)


if __name__ == "__main__":
    main()
