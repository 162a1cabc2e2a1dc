"""Temporal stabilization: flicker, faithfulness and cost, on clips whose motion is known exactly.

    python benchmarks/bench_temporal.py                          # oracle, tiny, large; strengths 0.6 0.9 1
    python benchmarks/bench_temporal.py --models oracle --frames 12
    python benchmarks/bench_temporal.py --markdown results.md --figure docs/temporal_flicker.png
    python benchmarks/bench_temporal.py --models oracle --checkpoint STANDIN.pth --size 256 --photos chelsea.png coffee.png

There are no real black-and-white clips here, so each clip is made from a
color photo (by default ../shared/fixtures' haze.jpg and lr-face.jpg;
``--photos`` takes others, scikit-image's too) moved by known
affine motions, rendered in black and white with film grain: a camera pan, a
fast pan, a slow zoom, a slow rotation, a static shot with exposure flicker, a
moving object over a background, a hard cut between two shots, and a fade to
black into another shot. Frames are ``size x size``, the working resolution,
so the model sees them unresampled and the known motion holds pixel for pixel.

Models:

* ``oracle``: a stand-in that predicts each frame's true colors (those of the
  color photo) plus an error that is new in every frame, as a model's is
  (smooth random color fields and a color cast). It shows what stabilization
  does to flicker of a realistic size, and whether it moves colors toward the
  truth or away from it.
* ``tiny`` / ``large``: DDColor with calibrated synthetic checkpoints
  (tests/calibrated.py). Untrained, they change colors almost at random from
  frame to frame (flicker of 20-40 ab units, far above a trained model's) and
  far from the true colors; they show the goals hold on real network output, and the cost.
* ``--checkpoint PATH``: any checkpoint, such as the trained stand-in that
  benchmarks/temporal_standin.py makes (DDColor-T fine-tuned on these clips'
  color frames; scikit-image's chelsea.png and coffee.png held out).

Stabilization is ``ddcolor.temporal.stabilize`` applied to the model's
per-frame predictions, as ``ddcolor.colorize(temporal=s)`` applies it, so the
forward passes run once per clip for all strengths. Measured on ab (Lab):

* flicker: mean over consecutive frames of |ab_t - ab_(t-1) moved along the
  true motion|, over pixels visible in both (not across cuts or black frames);
* chroma: mean |ab| stabilized / per-frame (goal within 5%);
* dE: mean |ab stabilized - ab per-frame| (the same L, so this is Delta E 76);
  goal: no larger than the per-frame output's own flicker;
* restart: dE at the first frame of each new shot (goal <= 0.5);
* revealed (object clip): dE on background the object uncovered since the
  previous frame, where smeared colors would show;
* truth: mean |ab - true ab| (the color photo's), stabilized (per-frame).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ddcolor  # noqa: E402
from ddcolor import temporal  # noqa: E402
from ddcolor.color import gray_rgb_from_lightness, rgb_to_lab  # noqa: E402
from ddcolor.pipeline import AB_MAX, AB_MIN  # noqa: E402

from benchmarks.bench_engine import checkpoint, machine  # noqa: E402

FIXTURES = REPO.parent / "shared" / "fixtures"
PHOTOS = ("haze.jpg", "lr-face.jpg")
KINDS = ("pan", "fast_pan", "zoom", "rotation", "static", "object", "cut", "fade")
GRAIN = 0.02  # film grain, standard deviation in [0, 1] gray values
EXPOSURE_FLICKER = 0.06  # static shot: frame-to-frame gain, standard deviation
FIGURE_CLIP = "object"

# Goals (issue 8).
MIN_REDUCTION, MAX_CHROMA_CHANGE, MAX_RESTART = 0.60, 0.05, 0.5


@dataclass
class Clip:
    name: str
    colors: np.ndarray  # (T, S, S, 3) float32 RGB of the color truth
    frames: np.ndarray  # (T, S, S, 3) what the model sees: black and white, with grain
    # back[t]: (map_x, map_y, valid) where each pixel of frame t was in frame
    # t-1; None where there is no such frame (first frame, cut, black frame).
    back: list = field(default_factory=list)
    shots: list[int] = field(default_factory=list)  # first frames of new shots
    revealed: list = field(default_factory=list)  # per frame: background uncovered since t-1, or None


# ----------------------------------------------------------------------------- clips


def photo_path(name: str) -> Path:
    """A photo of ../shared/fixtures, or else one of scikit-image's bundled photos (chelsea.png, coffee.png...)."""
    if (FIXTURES / name).is_file():
        return FIXTURES / name
    from benchmarks.bench_finetune_quality import skimage_photos

    path = skimage_photos() / name
    if not path.is_file():
        sys.exit(f"no photo {name!r} in {FIXTURES} nor among scikit-image's photos ({path.parent})")
    return path


def load_photo(name: str, height: int) -> np.ndarray:
    """A photo (see photo_path) as float32 RGB, scaled to ``height`` rows (room to move a size x size frame)."""
    image = cv2.cvtColor(cv2.imread(str(photo_path(name)), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    scale = height / image.shape[0]
    return cv2.resize(image, (round(image.shape[1] * scale), height), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def affine(scale: float = 1.0, angle: float = 0.0, center=(0.0, 0.0), at=(0.0, 0.0)) -> np.ndarray:
    """3x3 matrix taking frame pixel p to canvas point ``at + R(angle) * scale * (p - center)``."""
    c, s = math.cos(math.radians(angle)) * scale, math.sin(math.radians(angle)) * scale
    rotate = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return np.array([[1, 0, at[0]], [0, 1, at[1]], [0, 0, 1]]) @ rotate @ np.array([[1, 0, -center[0]], [0, 1, -center[1]], [0, 0, 1]])


def render(canvas: np.ndarray, camera: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(canvas, camera[:2], (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)


def motion_map(camera_now: np.ndarray, camera_before: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each pixel of the current frame was in the previous one, and whether it was inside it."""
    m = np.linalg.inv(camera_before) @ camera_now
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    map_x, map_y = m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]
    valid = (map_x >= 0) & (map_x <= size - 1) & (map_y >= 0) & (map_y <= size - 1)
    return map_x.astype(np.float32), map_y.astype(np.float32), valid


def make_clip(kind: str, frames: int, size: int, seed: int = 0, photos: tuple[str, str] = PHOTOS) -> Clip:
    """A clip of ``kind`` moving over ``photos[0]``; the object, and the shot after a cut or fade, show ``photos[1]``."""
    rng = np.random.default_rng(seed)
    first, second = load_photo(photos[0], int(size * 1.4)), load_photo(photos[1], int(size * 1.4))
    half = size / 2
    middle = (first.shape[1] / 2, first.shape[0] / 2)
    gains = np.ones(frames)
    canvases = [first] * frames
    object_path = None
    if kind in ("pan", "cut", "fade", "object"):
        speed = 1.0 if kind == "object" else 3.0
        cameras = [affine(at=(40 + speed * t, 60)) for t in range(frames)]
    elif kind == "fast_pan":
        cameras = [affine(at=(10 + 12 * t, 40 + 4 * t)) for t in range(frames)]
    elif kind == "zoom":  # in, to 75% of the field of view
        cameras = [affine(1 - 0.25 * t / (frames - 1), center=(half, half), at=middle) for t in range(frames)]
    elif kind == "rotation":  # 10 degrees over the clip
        cameras = [affine(angle=10 * t / (frames - 1), center=(half, half), at=middle) for t in range(frames)]
    elif kind == "static":
        cameras = [affine(at=(80, 60))] * frames
        gains = 1 + EXPOSURE_FLICKER * rng.standard_normal(frames)
    else:
        raise ValueError(kind)
    shots = []
    if kind == "cut":
        shots = [frames // 2]
        canvases = [first] * shots[0] + [second] * (frames - shots[0])
    if kind == "fade":  # out to black over a quarter, two black frames, in on the second photo
        out_start, black = frames // 4, frames // 2 - 1
        t = np.arange(frames)
        fade_out, fade_in = (black - t) / (black - out_start + 1), (t - black - 1) / (frames // 4)
        gains = np.clip(np.where(t < black + 2, fade_out, fade_in), 0, 1)
        shots = [black + 2]
        canvases = [first] * (black + 2) + [second] * (frames - black - 2)
    colors = np.stack([render(c, cam, size) for c, cam in zip(canvases, cameras)])

    masks = None
    if kind == "object":  # a disk cut from the second photo, crossing the frame
        radius = size // 6
        object_path = [(size * 0.2 + 9 * t, size * 0.45 + 2 * t) for t in range(frames)]
        y, x = np.mgrid[0:size, 0:size]
        masks = [(x - cx) ** 2 + (y - cy) ** 2 <= radius**2 for cx, cy in object_path]
        for t, (cx, cy) in enumerate(object_path):
            patch = render(second, affine(at=(second.shape[1] / 2 - cx, second.shape[0] / 2 - cy)), size)
            soft = cv2.GaussianBlur(masks[t].astype(np.float32), (0, 0), 0.7)[..., None]
            colors[t] = soft * patch + (1 - soft) * colors[t]

    colors = (colors * gains[:, None, None, None]).clip(0, 1).astype(np.float32)
    lightness = rgb_to_lab(torch.from_numpy(colors).permute(0, 3, 1, 2))[:, :1]
    gray = gray_rgb_from_lightness(lightness).permute(0, 2, 3, 1).numpy()
    gray = gray + GRAIN * rng.standard_normal(gray.shape[:3] + (1,)).astype(np.float32)
    clip = Clip(kind, colors, np.clip(gray, 0, 1).astype(np.float32), shots=shots)

    for t in range(frames):
        revealed = None
        if t == 0 or t in shots or gains[t] == 0 or gains[t - 1] == 0:
            clip.back.append(None)
            clip.revealed.append(None)
            continue
        map_x, map_y, valid = motion_map(cameras[t], cameras[t - 1], size)
        if masks is not None:
            around, on_object, was_behind = grow(masks[t]), shrink(masks[t]), grow(masks[t - 1])
            (cx, cy), (px, py) = object_path[t], object_path[t - 1]
            map_x[on_object] -= cx - px
            map_y[on_object] -= cy - py
            # Background that was behind the object in the previous frame was not visible then.
            hidden = was_behind[np.clip(np.rint(map_y), 0, size - 1).astype(int), np.clip(np.rint(map_x), 0, size - 1).astype(int)]
            near_edge = around & ~on_object
            valid &= ~near_edge & (on_object | ~hidden)
            revealed = masks[t - 1] & ~around
        clip.back.append((map_x, map_y, valid))
        clip.revealed.append(revealed)
    return clip


def grow(mask: np.ndarray) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)


def shrink(mask: np.ndarray) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)


# ----------------------------------------------------------------------------- models


def oracle(clip: Clip, seed: int = 1, field_std: float = 2.0, cast_std: float = 1.0, correlation: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Predictions (T, S, S, 2): the true ab plus an error (smooth color fields and a cast); and the true ab.

    ``correlation``: of one frame's error with the previous one's (0: new in every frame). A
    trained model's errors change slowly where the content does (its errors follow what it sees), so
    its frames differ less than its errors are large: a stabilizer that only averages lags behind them.
    """
    rng = np.random.default_rng(seed)
    truth = lab_ab(clip.colors)
    size = clip.colors.shape[1]
    errors, error = [], None
    for _ in range(len(clip.colors)):
        noise = cv2.GaussianBlur(rng.standard_normal((size, size, 2)).astype(np.float32), (0, 0), size / 24)
        noise *= field_std / noise.std()
        new = noise + cast_std * rng.standard_normal(2).astype(np.float32)
        error = new if error is None else correlation * error + math.sqrt(1 - correlation**2) * new
        errors.append(error)
    return truth + np.stack(errors), truth


def lab_ab(rgb: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) RGB in [0, 1] -> (T, S, S, 2) ab."""
    return rgb_to_lab(torch.from_numpy(rgb).permute(0, 3, 1, 2))[:, 1:].permute(0, 2, 3, 1).numpy()


def frame_lightness(clip: Clip) -> torch.Tensor:
    """L (T, 1, S, S) of the black-and-white frames, as colorize computes it."""
    return rgb_to_lab(torch.from_numpy(clip.frames).permute(0, 3, 1, 2))[:, :1]


def predict(model, lightness: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-frame ab at the working size, as colorize computes it, and seconds per frame."""
    ab, seconds = [], []
    with torch.inference_mode():
        for t in range(len(lightness)):
            start = time.perf_counter()
            ab.append(model(gray_rgb_from_lightness(lightness[t : t + 1])).float().clamp(AB_MIN, AB_MAX))
            seconds.append(time.perf_counter() - start)
    return torch.cat(ab), float(np.median(seconds[1:] or seconds))


def stabilized(lightness: torch.Tensor, ab: torch.Tensor, strength: float) -> tuple[np.ndarray, list[int], float]:
    """Stabilized ab (T, S, S, 2), the frames that restarted, and seconds per frame."""
    start = time.perf_counter()
    out, state = temporal.stabilize(lightness, ab, temporal.TemporalState(), strength)
    return out.permute(0, 2, 3, 1).numpy(), state.cuts, (time.perf_counter() - start) / len(ab)


# ----------------------------------------------------------------------------- metrics


def norm(ab: np.ndarray) -> np.ndarray:
    return np.sqrt((ab**2).sum(-1))


def flicker_series(ab: np.ndarray, clip: Clip) -> list[float]:
    """Per frame: mean |ab_t - ab_(t-1) moved along the true motion| (nan where there is no previous frame)."""
    series = [math.nan]
    for t in range(1, len(ab)):
        if clip.back[t] is None:
            series.append(math.nan)
            continue
        map_x, map_y, valid = clip.back[t]
        before = cv2.remap(np.ascontiguousarray(ab[t - 1]), map_x, map_y, cv2.INTER_LINEAR)
        series.append(float(norm(ab[t] - before)[valid].mean()))
    return series


def measure(clip: Clip, per_frame: np.ndarray, out: np.ndarray, cuts: list[int], truth: np.ndarray | None) -> dict:
    flicker_pf, flicker_out = np.nanmean(flicker_series(per_frame, clip)), np.nanmean(flicker_series(out, clip))
    change = norm(out - per_frame)
    row = {
        "flicker per-frame": flicker_pf,
        "flicker": flicker_out,
        "reduction": 1 - flicker_out / flicker_pf,
        "chroma": norm(out).mean() / norm(per_frame).mean(),
        "dE": change.mean(),
        "restart": max((change[s].mean() for s in clip.shots), default=math.nan),
        "cuts": cuts,
        "shots": clip.shots,
    }
    revealed = [change[t][m].mean() for t, m in enumerate(clip.revealed) if m is not None and m.any()]
    row["revealed"] = float(np.mean(revealed)) if revealed else math.nan
    if truth is not None:
        row["truth"], row["truth per-frame"] = norm(out - truth).mean(), norm(per_frame - truth).mean()
    missed = []
    if row["reduction"] < MIN_REDUCTION:
        missed.append("flicker")
    if abs(row["chroma"] - 1) > MAX_CHROMA_CHANGE:
        missed.append("chroma")
    if row["dE"] > flicker_pf:
        missed.append("dE")
    if row["restart"] > MAX_RESTART:
        missed.append("restart")
    row["missed"] = missed
    return row


# ----------------------------------------------------------------------------- report


def table(model_name: str, rows: list[tuple[str, float, dict]]) -> str:
    with_truth = "truth" in rows[0][2]
    head = "| clip | strength | flicker: per-frame → stabilized | less flicker | chroma | dE vs per-frame | restart | restarted at |"
    head += " revealed dE |"
    head += " error vs truth: stabilized (per-frame) |" if with_truth else ""
    head += " goals |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(x, fmt="{:.2f}"):
        return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)

    for clip, strength, r in rows:
        line = (
            f"| {clip} | {strength:g} | {r['flicker per-frame']:.2f} → {r['flicker']:.2f} | -{r['reduction']:.0%} | "
            f"{r['chroma']:.3f} | {r['dE']:.2f} | {f(r['restart'])} | {r['cuts'] or '—'} | {f(r['revealed'])} |"
        )
        line += f" {r['truth']:.2f} ({r['truth per-frame']:.2f}) |" if with_truth else ""
        line += f" {'MISSED ' + ', '.join(r['missed']) if r['missed'] else 'met'} |"
        lines.append(line)
    return f"**{model_name}**\n\n" + "\n".join(lines)


def figure(path: Path, per_frame: list[float], out: list[float], title: str) -> None:
    """A line plot of per-frame flicker over time (PIL only, no plotting library)."""
    from PIL import Image, ImageDraw

    width, height, left, bottom, top, right = 720, 360, 60, 50, 40, 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    values = [v for v in per_frame + out if not math.isnan(v)]
    top_value = math.ceil(1.3 * max(values))  # headroom for the legend
    n = len(per_frame)

    def xy(t, v):
        return left + (width - left - right) * t / (n - 1), height - bottom - (height - bottom - top) * v / top_value

    draw.line([xy(0, 0), xy(n - 1, 0)], fill="black")
    draw.line([xy(0, 0), xy(0, top_value)], fill="black")
    for v in range(0, top_value + 1, max(1, top_value // 5)):
        draw.text((left - 25, xy(0, v)[1] - 6), f"{v}", fill="black")
    for t in range(0, n, max(1, n // 8)):
        draw.text((xy(t, 0)[0] - 4, height - bottom + 6), f"{t}", fill="black")
    draw.text((width // 2 - 20, height - 20), "frame", fill="black")
    draw.text((8, top - 16), "Lab units", fill="black")
    draw.text((8, 8), title, fill="black")
    for series, color, label, row in ((per_frame, (200, 60, 40), "per-frame", 0), (out, (30, 90, 200), "stabilized", 1)):
        points = [xy(t, v) for t, v in enumerate(series) if not math.isnan(v)]
        draw.line(points, fill=color, width=3)
        draw.line([(width - 170, 50 + 18 * row), (width - 140, 50 + 18 * row)], fill=color, width=3)
        draw.text((width - 132, 44 + 18 * row), f"{label} (mean {np.nanmean(series):.1f})", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["oracle", "tiny", "large"], choices=["oracle", "tiny", "large"])
    parser.add_argument("--checkpoint", nargs="+", type=Path, default=[], metavar="PATH",
                        help="also measure these checkpoints (e.g. the trained stand-in of benchmarks/temporal_standin.py)")
    parser.add_argument("--oracle-correlation", type=float, default=0.0, metavar="R",
                        help="of the oracle's error from one frame to the next (default 0: new in every frame)")
    parser.add_argument("--photos", nargs=2, default=list(PHOTOS), metavar=("FIRST", "SECOND"),
                        help="what the clips show (the object and the second shot show SECOND): ../shared/fixtures "
                        "photos or scikit-image's (chelsea.png, coffee.png...)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--strengths", nargs="+", type=float, default=[0.6, temporal.RECOMMENDED_STRENGTH, 1.0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--precision", default="auto", help="for tiny and large")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--markdown", type=Path, help="write the tables here too")
    parser.add_argument("--figure", type=Path, help=f"plot flicker over time of the {FIGURE_CLIP} clip (first model, recommended strength)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    clips = {kind: make_clip(kind, args.frames, args.size, photos=tuple(args.photos)) for kind in args.kinds}
    models = args.models + [str(path) for path in args.checkpoint]
    report = [
        f"Machine: {machine('cpu')}. Clips of {args.frames} frames, {args.size}x{args.size}, size {args.size}, "
        f"of {' and '.join(args.photos)}; recommended strength {temporal.RECOMMENDED_STRENGTH:g}.\n",
        "    python benchmarks/bench_temporal.py " + " ".join(sys.argv[1:]) + "\n",
    ]
    print(report[0], flush=True)
    cost_lines = ["| model | precision | model per frame | stabilization per frame | share |", "|---|---|---|---|---|"]
    for name in models:
        model = None if name == "oracle" else ddcolor.load_model(checkpoint(name) if name in ("tiny", "large") else name, precision=args.precision)
        name = Path(name).stem
        rows, stabilize_seconds, model_seconds = [], [], []
        for kind, clip in clips.items():
            lightness = frame_lightness(clip)
            if model is None:
                predictions, truth = oracle(clip, correlation=args.oracle_correlation)
                ab = torch.from_numpy(predictions).permute(0, 3, 1, 2).contiguous()
            else:
                ab, seconds = predict(model, lightness)
                model_seconds.append(seconds)
                truth = lab_ab(clip.colors)
            per_frame = ab.permute(0, 2, 3, 1).numpy()
            for strength in args.strengths:
                out, cuts, seconds = stabilized(lightness, ab, strength)
                stabilize_seconds.append(seconds)
                rows.append((kind, strength, measure(clip, per_frame, out, cuts, truth)))
                if args.figure and kind == FIGURE_CLIP and strength == temporal.RECOMMENDED_STRENGTH and name == Path(models[0]).stem:
                    title = f"Flicker of the {FIGURE_CLIP} clip ({name} model): motion-compensated ab change from the previous frame, "
                    title += f"strength {strength:g}"
                    figure(args.figure, flicker_series(per_frame, clip), flicker_series(out, clip), title)
            print(f"{name} {kind} done", file=sys.stderr, flush=True)
        text = table(name if model is None else f"{name} ({ddcolor.precision_plan(model).precision})", rows)
        print(text + "\n", flush=True)
        report.append(text + "\n")
        if model is not None:
            per_frame_s, stab_s = float(np.median(model_seconds)), float(np.median(stabilize_seconds))
            cost_lines.append(f"| {name} | {ddcolor.precision_plan(model).precision} | {per_frame_s:.2f} s | {stab_s * 1000:.0f} ms | {stab_s / per_frame_s:.1%} |")
    if len(cost_lines) > 2:
        cost = "**Cost** (medians over the clips)\n\n" + "\n".join(cost_lines)
        print(cost, flush=True)
        report.append(cost + "\n")
    if args.markdown:
        args.markdown.write_text("\n".join(report))


if __name__ == "__main__":
    main()
