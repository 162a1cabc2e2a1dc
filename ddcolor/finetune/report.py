"""What a run records and shows: the history of every step and validation, the log, the PNGs.

``History`` is the single record of a run (it travels in snapshots, so a
resumed run's log and curves are whole); the JSONL log is that history, one
record a line; ``draw_grid`` and ``draw_curves`` draw it with Pillow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .files import write_atomically

GRID_ROWS = 8
GRID_CELL = 192
CURVE_SIZE = (640, 150)
CURVE_SMOOTHING = 0.9  # exponential moving average drawn over the raw values


@dataclass
class History:
    """Every step's loss terms and every validation, as the log's records."""

    records: list[dict] = field(default_factory=list)

    def record_step(self, step: int, terms: dict[str, float], *, skipped: bool, scale: float, seconds: float) -> dict:
        record = {"step": step, **{name: _finite_or_none(value) for name, value in terms.items()},
                  "skipped": skipped, "loss_scale": scale, "seconds": round(seconds, 4)}
        self.records.append(record)
        return record

    def record_validation(self, step: int, metrics: dict[str, float]) -> dict:
        record = {"step": step, "validation": {name: round(value, 4) for name, value in metrics.items()}}
        self.records.append(record)
        return record

    @property
    def steps(self) -> list[dict]:
        return [r for r in self.records if "validation" not in r]

    @property
    def validations(self) -> list[dict]:
        return [{"step": r["step"], **r["validation"]} for r in self.records if "validation" in r]

    def losses(self) -> dict[str, list[float]]:
        """Each loss term per step (NaN where it was not finite): ``loss`` is their sum."""
        names = [k for k in dict.fromkeys(k for r in self.steps for k in r) if k not in ("step", "skipped", "loss_scale", "seconds")]
        return {name: [math.nan if r.get(name) is None else r[name] for r in self.steps] for name in names}

    @property
    def skipped_steps(self) -> int:
        return sum(r["skipped"] for r in self.steps)

    def skipped_in_a_row(self) -> int:
        count = 0
        for record in reversed(self.steps):
            if not record["skipped"]:
                break
            count += 1
        return count

    def best_validation(self) -> dict | None:
        """The validation with the lowest mean ΔE (the earliest of equals)."""
        validations = self.validations
        return min(validations, key=lambda v: v["delta_e"]) if validations else None

    def write_log(self, path: Path) -> None:
        write_atomically(path, lambda temporary: temporary.write_text("".join(json.dumps(r) + "\n" for r in self.records)))

    @staticmethod
    def append_log(path: Path, record: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


# ----------------------------------------------------------------------------- pictures


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _to_image(rgb: Tensor, cell: int) -> Image.Image:
    array = (rgb.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize((cell, cell), Image.Resampling.LANCZOS)


def draw_grid(path: Path, columns: dict[str, Tensor], step: int) -> None:
    """One row per validation photo (the first ``GRID_ROWS``), one column per entry of
    ``columns`` (label -> sRGB (N, 3, S, S)), labelled; written atomically."""
    rows = min(GRID_ROWS, next(iter(columns.values())).shape[0])
    header = 28
    cell = GRID_CELL
    sheet = Image.new("RGB", (cell * len(columns), header + cell * rows), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(16)
    for c, (label, images) in enumerate(columns.items()):
        draw.text((c * cell + 6, 6), label.format(step=step), fill="black", font=font)
        for r in range(rows):
            sheet.paste(_to_image(images[r], cell), (c * cell, header + r * cell))
    write_atomically(path, lambda temporary: sheet.save(temporary, "PNG"))


def draw_curves(path: Path, history: History) -> None:
    """One panel per loss term (raw values light, their moving average dark) and one for
    the validation ΔE, each on its own scale; written atomically."""
    panels = [(name, list(range(1, len(values) + 1)), values) for name, values in history.losses().items()]
    validations = history.validations
    if validations:
        panels.append(("validation: mean CIEDE2000 dE", [v["step"] for v in validations], [v["delta_e"] for v in validations]))
    if not panels:
        return
    width, height = CURVE_SIZE
    sheet = Image.new("RGB", (width, height * len(panels)), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(13)
    for i, (name, steps, values) in enumerate(panels):
        _draw_panel(draw, (0, i * height, width, (i + 1) * height), name, steps, values, font, smooth=not name.startswith("validation"))
    write_atomically(path, lambda temporary: sheet.save(temporary, "PNG"))


def _draw_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], name: str, steps: list[int],
                values: list[float], font, *, smooth: bool) -> None:
    left, top, right, bottom = box
    plot = (left + 60, top + 22, right - 12, bottom - 22)
    draw.rectangle(plot, outline=(160, 160, 160))
    points = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    draw.text((left + 8, top + 4), name, fill="black", font=font)
    if not points:
        return
    low, high = min(v for _, v in points), max(v for _, v in points)
    high = high if high > low else low + 1e-6
    first, last = steps[0], max(steps[-1], steps[0] + 1)

    def xy(step: float, value: float) -> tuple[float, float]:
        x = plot[0] + (step - first) / (last - first) * (plot[2] - plot[0])
        return x, plot[3] - (value - low) / (high - low) * (plot[3] - plot[1])

    draw.text((left + 4, plot[1] - 2), f"{high:.3g}", fill="gray", font=font)
    draw.text((left + 4, plot[3] - 12), f"{low:.3g}", fill="gray", font=font)
    draw.text((plot[0], plot[3] + 4), f"step {first}", fill="gray", font=font)
    draw.text((plot[2] - 70, plot[3] + 4), f"step {steps[-1]}", fill="gray", font=font)
    line = [xy(s, v) for s, v in points]
    if len(line) == 1:
        x, y = line[0]
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(40, 90, 200))
        return
    if not smooth:
        draw.line(line, fill=(200, 80, 40), width=2)
        return
    draw.line(line, fill=(170, 195, 235), width=1)
    average, smoothed = points[0][1], []
    for s, v in points:
        average = CURVE_SMOOTHING * average + (1 - CURVE_SMOOTHING) * v
        smoothed.append(xy(s, average))
    draw.line(smoothed, fill=(30, 70, 170), width=2)


def summary_lines(history: History) -> list[str]:
    """What a person reads at the end: the losses' change, and validation before, best and last."""
    lines = []
    losses = history.losses().get("loss", [])
    finite = [v for v in losses if math.isfinite(v)]
    if finite:
        window = max(1, min(10, len(finite) // 4))
        lines.append(f"loss {np.mean(finite[:window]):.4g} over the first {window} step(s), {np.mean(finite[-window:]):.4g} over the last {window}")
    if history.skipped_steps:
        lines.append(f"{history.skipped_steps} step(s) skipped: gradients overflowed (the loss scale was lowered; a few at the start of fp16 training are normal) or the loss was not finite")
    validations = history.validations
    if validations:
        start, last, best = validations[0], validations[-1], history.best_validation()
        lines.append(
            f"validation mean ΔE {start['delta_e']:.2f} at step {start['step']} -> {last['delta_e']:.2f} at step {last['step']}; "
            f"best {best['delta_e']:.2f} at step {best['step']}"
            + (f" (gray answer: {start['delta_e_gray']:.2f})" if "delta_e_gray" in start else "")
        )
        lines.append(
            f"validation colorfulness {start['colorfulness']:.1f} -> {last['colorfulness']:.1f}"
            + (f" (true colors: {start['colorfulness_true']:.1f})" if "colorfulness_true" in start else "")
        )
    return lines
