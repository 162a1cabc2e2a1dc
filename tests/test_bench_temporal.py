"""benchmarks/bench_temporal.py runs end to end on small clips, and its measurements see what they claim to."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.calibrated import FIXTURES
from tests.pack import REPO


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if not all((FIXTURES / name).is_file() for name in ("haze.jpg", "lr-face.jpg")):
        pytest.skip("needs ../shared/fixtures (haze.jpg, lr-face.jpg)")
    out = tmp_path_factory.mktemp("bench") / "temporal.md"
    command = [sys.executable, "benchmarks/bench_temporal.py", "--models", "oracle", "--kinds", "pan", "cut", "object"]
    command += ["--frames", "8", "--size", "128", "--strengths", "0", "0.9", "--markdown", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {}
    for line in out.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 8 and cells[0] in ("pan", "cut", "object"):
            rows[cells[0], float(cells[1])] = cells
    return rows


def test_strength_zero_changes_nothing(report):
    for kind in ("pan", "cut", "object"):
        row = report[kind, 0.0]
        before, after = (float(x) for x in row[2].split("→"))
        assert before == after and row[5] == "0.00", row  # same flicker, dE 0 from per-frame output


def test_stabilization_cuts_the_oracle_flicker_and_restarts_at_the_cut(report):
    for kind in ("pan", "cut", "object"):
        row = report[kind, 0.9]
        before, after = (float(x) for x in row[2].split("→"))
        assert after < 0.5 * before, row
        assert 0.9 < float(row[4]) < 1.1, row  # chroma kept
        # Closer to the oracle's true colors than its per-frame predictions are.
        stabilized, per_frame = row[9].replace(")", "").split(" (")
        assert float(stabilized) < float(per_frame), row
    cut = report["cut", 0.9]
    assert cut[7] == "[4]" and cut[6] == "0.00", cut  # the cut after frame 4 is found; nothing carried over it
