"""benchmarks/gpu_check.py runs end to end on a CPU (--quick), so the prepared GPU run cannot rot."""

from __future__ import annotations

import json
import math

import pytest

from tests.calibrated import FIXTURES

pytestmark = pytest.mark.slow  # every phase on the tiny checkpoint and its stress variant


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_run_on_a_cpu_writes_a_complete_report(tmp_path, monkeypatch):
    from benchmarks import gpu_check

    monkeypatch.delenv("OUT", raising=False)
    # No budget cut: this checks that every phase runs to the end, however busy the machine.
    gpu_check.main(["--device", "cpu", "--quick", "--budget", "36000", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    table = (tmp_path / "gpu_check.md").read_text()
    with_original = gpu_check.original_available() is None

    assert report["errors"] == [] and report["skipped"] == []
    assert set(report["phase_seconds"]) == {"latency", "throughput", "numerics", "training"}
    assert {"device", "torch", "cpu"} <= set(report["machine"]) and report["machine"]["device"] == "cpu"
    has_photos = any(p.suffix.lower() in (".png", ".jpg", ".jpeg") for p in FIXTURES.glob("*"))
    assert report["inputs"]["source"] == ("photos" if has_photos else "generated scenes (tests.calibrated.calibration_images)")

    latency = {(r["impl"], r["precision"]): r for r in report["latency"]}
    expected = {("ours", "fp32"), ("ours", "fp16"), ("ours", "bf16"), ("original", "fp32"), ("original", "fp16")}
    assert set(latency) == expected
    for key, row in latency.items():
        if key[0] == "original" and not with_original:
            assert "spandrel" in row["error"]
            continue
        assert row["size"] == 64 and row["finite"] is True, key
        assert is_number(row["latency_s"]) and row["latency_s"] > 0, key
        assert row["peak_allocated_bytes"] is None  # CUDA only
    # Half weights really are held in half (norms and a few small tensors stay FP32).
    assert latency["ours", "fp16"]["weight_bytes"] < 0.55 * latency["ours", "fp32"]["weight_bytes"]

    throughput = {(r["precision"], r["batch"]): r for r in report["throughput"]}
    assert set(throughput) == {("fp16", 2), ("fp32", 2)}
    assert all(is_number(r["images_per_s"]) and r["images_per_s"] > 0 for r in throughput.values())

    runs = {"ours fp16", "ours bf16"} | ({"original fp16 autocast", "original fp32"} if with_original else set())
    numerics = {(r["checkpoint"], r["run"]): r for r in report["numerics"] if "error" not in r}
    assert set(numerics) == {(checkpoint, run) for checkpoint in ("calibrated", "blocks") for run in runs}
    for key, row in numerics.items():
        assert row["variant"] == "tiny" and isinstance(row["finite"], bool), key
        assert 0 <= row["nonfinite_fraction"] <= 1
        if row["mean_abs_ab"] is not None:
            assert is_number(row["max_abs_ab"]) and 0 <= row["mean_abs_ab"] <= row["max_abs_ab"], key
            assert is_number(row["colorfulness_change"]), key

    assert "## Latency and peak memory" in table and "## Throughput" in table and "## Half precision against fp32" in table
    assert table.count("| tiny | blocks |") == len(runs)

    # Fine-tuning steps: the loss-scaled fp16 path and fp32, LoRA with checkpointing; no CUDA, so no VRAM peak.
    training = {(r["precision"], r["train"], r["checkpointing"]): r for r in report["training"]}
    assert set(training) == {("fp16", "lora", True), ("fp32", "lora", True)}
    for key, row in training.items():
        assert (row["variant"], row["size"], row["batch"], row["steps"]) == ("tiny", 64, 2, 1), key
        assert is_number(row["seconds_per_step"]) and row["seconds_per_step"] > 0 and is_number(row["last_loss"]), key
        assert row["trained_parameters"] > 0 and "peak_allocated_bytes" not in row, key
        assert row["perceptual"] in ("imagenet", "stand-in"), key  # on by default, as in a real fine-tune
    assert "## Fine-tuning steps (perceptual loss on, VGG16-bn" in table and table.count("| tiny | fp16 | lora | on | 64 | 2 |") == 1
    assert "Goal (DDColor-L, fp16, 512, batch 2, under 6 GiB): not measured in this run." in table


def test_the_training_goal_is_judged_on_its_rows():
    from benchmarks import gpu_check

    def row(train, checkpointing, gib, **changes):
        return {"variant": "large", "precision": "fp16", "size": 512, "batch": 2, "train": train,
                "checkpointing": checkpointing, "peak_allocated_bytes": int(gib * 2**30), **changes}

    assert gpu_check.training_goal([row("all", False, 9.0, size=256)]) is None  # no row measures the goal
    verdict = gpu_check.training_goal([row("all", False, 7.5), row("lora", True, 3.2), row("all", True, 5.9, batch=4)])
    assert verdict.startswith("Goal: DDColor-L fine-tunes at 512, batch 2, in under 6 GiB in fp16")
    assert ": met. Under: lora + checkpointing (3.20 GiB); over: all (7.50 GiB)." in verdict
    assert "NOT met" in gpu_check.training_goal([row("all", False, 6.5)])
