"""benchmarks/gpu_check.py end to end on a fake NVML machine: a dry run of its plumbing (the
sandboxes run on the CPU), so that the check is ready when a GPU machine is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_the_check_runs_on_a_fake_mig_machine_and_labels_every_run() -> None:
    if not (REPO / "functions" / "squeezenet" / "model.onnx").exists():
        pytest.skip("example models not built; run `make models`")
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--fake", "a100-40gb-mig",
         "--calls", "2", "--models", "squeezenet", "--batches", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["fake"] == "a100-40gb-mig"
    assert [(r["vgpu"], r["batch"]) for r in report["runs"]] == [(0, 1), (1, 1)]
    cpu, mig = report["runs"]
    assert cpu["device"] == "cpu" and mig["device"].startswith("cpu (fake MIG-")
    assert mig["round_trip"]["n"] == 2 and mig["cold_start_ms"] > 0


def test_without_a_gpu_the_check_says_so_and_exits_2() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--fake", "no-nvml"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 2
    assert "no GPU units" in out.stderr and "LibraryNotFound" in out.stderr
