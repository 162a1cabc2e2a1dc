"""What the READMEs state about the code: the precision each device runs, the Chinese README's coverage.

Each row is checked on the device kinds it names (CPUs with AMX or AVX-512 bf16
units, AVX2-only CPUs, GPUs with and without bf16 in hardware, Apple GPUs) by
faking what the probes report, so the table is checked on every machine,
whatever its own CPU and GPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ddcolor import PUBLISHED, precision
from ddcolor.precision import resolve_precision

REPO = Path(__file__).resolve().parent.parent
ASKED = ("auto", "fp16", "bf16", "fp32")
CJK = re.compile(r"[\u4e00-\u9fff]")


def precision_table(readme: Path) -> dict[str, list[str]]:
    """Rows of the table whose columns are the device, then auto, fp16, bf16, fp32."""
    rows, inside = {}, False
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells[1:] == list(ASKED):
            inside = True
        elif inside and cells and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1:]
        elif inside and not cells:
            break
    return rows


def device_kinds(label: str) -> list[tuple[str, str | bool | None]]:
    """(device, its bf16 units: the CPU's kind, or whether the GPU has them) that a row's label names, in either language."""
    if "ROCm" in label:
        return [("cuda", True)]
    if "Turing" in label:
        return [("cuda", False)]
    if "MPS" in label:
        return [("mps", None)]
    if "AMX" in label and "AVX-512" in label:
        return [("cpu", "amx"), ("cpu", "avx512")]
    if "AVX2" in label:
        return [("cpu", None)]
    raise AssertionError(f"a row for a device the test does not know: {label!r}")


@pytest.mark.parametrize("readme", ["README.md", "README.zh-CN.md"])
def test_the_precision_table_is_what_resolve_precision_does(readme, monkeypatch):
    rows = precision_table(REPO / readme)
    kinds = [kind for label in rows for kind in device_kinds(label)]
    assert sorted(kinds, key=str) == sorted(
        [("cuda", True), ("cuda", False), ("mps", None), ("cpu", "amx"), ("cpu", "avx512"), ("cpu", None)], key=str
    ), f"{readme} must cover every device kind once"
    for label, cells in rows.items():
        for device, units in device_kinds(label):
            cpu_units, gpu_units = (units, False) if device == "cpu" else (None, bool(units))
            monkeypatch.setattr(precision, "cpu_bf16_units", lambda cpu_units=cpu_units: cpu_units)
            monkeypatch.setattr(precision, "cuda_native_bf16", lambda device=None, gpu_units=gpu_units: gpu_units)
            ran = [resolve_precision(asked, device).precision for asked in ASKED]
            assert ran == cells, f"{readme}, {label}: the table says {cells}, the code runs {ran}"


def test_the_chinese_readme_is_linked_and_covers_presets_models_and_downloads():
    english = (REPO / "README.md").read_text(encoding="utf-8")
    chinese = (REPO / "README.zh-CN.md").read_text(encoding="utf-8")
    assert "(README.zh-CN.md)" in english.split("\n## ")[0], "linked from the top of README.md"
    twins = [p.stem for p in (REPO / "workflows").glob("*.json") if CJK.search(p.stem)]
    assert twins and all(twin in chinese for twin in twins)
    for name, entry in PUBLISHED.items():
        assert f"`{name}`" in chinese
        if entry.modelscope:
            model_id, filename = entry.modelscope
            assert model_id in chinese and filename in chinese and model_id in english
    for variable in ("DDCOLOR_SOURCE", "HF_ENDPOINT", "MODELSCOPE_ENDPOINT", "HF_HUB_OFFLINE"):
        assert variable in chinese and variable in english
