"""A trained stand-in for measuring temporal stabilization: DDColor-T fine-tuned on color footage.

    pip install -e ".[bench]"          # scikit-image, for its sample photos (no download at run time)
    python benchmarks/temporal_standin.py -o /tmp/standin/tiny_footage.pth --steps 300
    python benchmarks/bench_temporal.py --models oracle --checkpoint /tmp/standin/tiny_footage.pth --size 256
    python benchmarks/bench_temporal.py --models oracle --checkpoint /tmp/standin/tiny_footage.pth --size 256 \\
        --photos chelsea.png coffee.png           # clips of photos it never saw

The calibrated checkpoints (tests/support.py) are untrained: their colors
change almost at random from frame to frame, which can mislead a measure of
stabilization. This fine-tunes the calibrated DDColor-T with the project's own
fine-tuning (``python -m ddcolor finetune``: fp32, perceptual loss off since
its VGG weights cannot be downloaded offline) on color footage: the color
frames of bench_temporal.py's clips (made from the fixture photos
``bench_temporal.PHOTOS`` before they are made black and white, every
``FRAME_STRIDE``-th frame of each kind) and a few of scikit-image's color
photos. The photos in ``HELD_OUT`` are never trained on: they validate the run
and make clips the stand-in has not seen. Weights stay out of the repository:
write them anywhere (``-o``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import bench_temporal  # noqa: E402
from benchmarks.bench_finetune_quality import skimage_photos  # noqa: E402
from tests.support import calibrated_checkpoint  # noqa: E402

SKIMAGE_TRAIN = ("astronaut.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png")
HELD_OUT = ("chelsea.png", "coffee.png")  # scikit-image's; never trained on
FRAME_STRIDE = 4


def write_footage(folder: Path, frames: int, size: int) -> int:
    """The color frames of bench_temporal's clips as PNGs in ``folder``; returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for kind in bench_temporal.KINDS:
        clip = bench_temporal.make_clip(kind, frames, size)
        for t in range(0, frames, FRAME_STRIDE):
            rgb = (clip.colors[t] * 255).round().astype(np.uint8)
            cv2.imwrite(str(folder / f"{kind}_{t:02d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            count += 1
    return count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="the checkpoint to write (outside the repository)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="training crop, and the size of the footage's frames")
    parser.add_argument("--frames", type=int, default=24, help="frames of each clip (every 4th is trained on)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training process")
    args = parser.parse_args(argv)

    data = skimage_photos()
    work = Path(tempfile.mkdtemp(prefix="ddcolor_standin_"))
    frames = write_footage(work / "footage", args.frames, args.size)
    (work / "held_out").mkdir()
    for name in HELD_OUT:
        (work / "held_out" / name).symlink_to(data / name)
    print(f"{frames} frames of footage and {len(SKIMAGE_TRAIN)} scikit-image photos to train on, in {work}", flush=True)
    command = [sys.executable, "-m", "ddcolor", "finetune", str(work / "footage"), *(str(data / n) for n in SKIMAGE_TRAIN)]
    command += ["--val", str(work / "held_out"), "-o", str(args.output), "--model", str(calibrated_checkpoint("tiny"))]
    command += ["--precision", "fp32", "--no-perceptual", "--size", str(args.size), "--steps", str(args.steps)]
    command += ["--batch", str(args.batch), "--lr", str(args.lr), "--val-every", "100", "--save-every", "0", "--seed", "0"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    sys.exit(subprocess.run(command, cwd=REPO, env=env).returncode)


if __name__ == "__main__":
    main()
