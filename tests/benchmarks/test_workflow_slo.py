"""What benchmarks/workflow_slo.py hands the simulator from the daemon's profile documents."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from esg.model import Config

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the script imports its harness, faasd_bench
    return importlib.import_module("workflow_slo")


def _doc(rows: list[tuple[int, int, float, int, str]]) -> dict[str, Any]:
    return {"function": "f", "profile_version": 4, "configurations": [
        {"batch": b, "vcpu": v, "vgpu": 0, "latency_ms": ms, "published_ms": ms, "mean_ms": ms,
         "std_ms": 0.1, "count": n, "executions": max(0, n - 3),
         "profiled_ms": None if source == "fitted" else 1.0, "source": source}
        for b, v, ms, n, source in rows]}


def test_under_load_keeps_what_ran_and_slows_what_only_the_profiler_timed(
    bench: ModuleType,
) -> None:
    alone = _doc([(1, 1, 1.0, 3, "measured"), (2, 1, 2.0, 3, "measured"),
                  (1, 2, 0.5, 3, "measured"), (2, 2, 0.9, 0, "fitted")])
    loaded = _doc([(1, 1, 2.0, 40, "measured"), (2, 1, 6.0, 90, "measured"),
                   (1, 2, 0.5, 3, "measured"), (2, 2, 0.9, 0, "fitted"),
                   (3, 1, 7.0, 5, "measured")])
    table = bench.under_load(alone, loaded).latency_ms
    # ran under load: their refined means (batch 3 only ever ran under load)
    assert table[Config(1, 1)] == 2.0 and table[Config(2, 1)] == 6.0
    assert table[Config(3, 1)] == 7.0
    # timed alone or fitted: x the median slowdown of those that ran (2 and 3: 2.5)
    assert table[Config(1, 2)] == pytest.approx(1.25)
    assert table[Config(2, 2)] == pytest.approx(2.25)
    # nothing ran: nothing to scale by
    assert bench.under_load(alone, alone).latency_ms[Config(1, 2)] == 0.5


def test_points_of_rebuilds_the_daemons_points(bench: ModuleType) -> None:
    points = bench.points_of(_doc([(1, 1, 2.0, 40, "measured"), (2, 2, 0.9, 0, "fitted")]))
    assert points[Config(1, 1)].count == 40 and points[Config(1, 1)].executions == 37
    assert points[Config(1, 1)].var_ms2 == pytest.approx(0.01)
    assert points[Config(1, 1)].profiled_ms == 1.0
    assert points[Config(2, 2)].fitted and points[Config(2, 2)].published_ms == 0.9
    assert points[Config(2, 2)].profiled_ms == 0.0


def test_each_setting_starts_with_the_next_policy_so_none_is_always_first(
    bench: ModuleType,
) -> None:
    policies = ("esg", "fcfs", "orion")
    turns = [bench.rotated(policies, turn) for turn in range(4)]
    assert turns == [("esg", "fcfs", "orion"), ("fcfs", "orion", "esg"),
                     ("orion", "esg", "fcfs"), ("esg", "fcfs", "orion")]
    assert all(sorted(t) == sorted(policies) for t in turns)


def test_shares_name_the_most_run_configurations_first(bench: ModuleType) -> None:
    runs = {Config(1, 1): 6, Config(2, 1): 3, Config(4, 2, 1): 1, Config(8, 1): 0}
    assert bench.shares(runs) == "b1v1 60%, b2v1 30%, b4v2g1 10%"
    assert bench.shares(runs, shown=1) == "b1v1 60%"
    assert bench.shares({Config(8, 1): 0}) == "-"
    line = bench.stage_lines({"net": [0.5, 10.0, 0.2]}, {"net": [0.1, 10.0, 0.3]},
                             {"net": {Config(1, 1): 4}}, {"net": {Config(2, 1): 4}})
    assert line.splitlines()[1].split() == ["net", "50.0", "/", "10.0", "20.0", "/", "30.0",
                                            "b1v1", "100%", "|", "b2v1", "100%"]


def test_the_workflow_line_shows_the_time_beyond_the_daemons_own_account(
    bench: ModuleType,
) -> None:
    outcomes = [bench.Outcome("cutout", 1.0, 200, 6.0, 0.0, 9.9, 4.5),
                bench.Outcome("cutout", 1.1, 200, 12.0, 0.0, 9.9, 10.0),
                bench.Outcome("cutout", 1.2, 599, 120000.0, 0.0, 9.9)]  # no answer: no account
    line = bench.workflow_line(outcomes)
    assert "cutout 33% (p50 12.0 of 9.9 ms, +1.8 beyond the daemon's)" in line
