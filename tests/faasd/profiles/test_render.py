"""`faasd profile --show`'s text: the summary line says what planners scale, and by what."""

from __future__ import annotations

from typing import Any

from faasd.profiles.render import format_table


def _doc(slowdown: dict[str, float]) -> dict[str, Any]:
    return {"function": "f", "version": 2, "profile_version": 9, "running": False,
            "cold_start_ms": None, "slowdown_under_load": slowdown, "configurations": [
                {"batch": 1, "vcpu": 1, "vgpu": 0, "latency_ms": 3.0, "std_ms": 0.1,
                 "cost_per_request": 1e-7, "count": 8, "executions": 5, "source": "measured"},
                {"batch": 4, "vcpu": 1, "vgpu": 0, "latency_ms": 9.0, "std_ms": 0.0,
                 "cost_per_request": 2e-7, "count": 0, "executions": 0, "source": "fitted"}]}


def test_the_summary_names_the_slowdown_only_where_there_is_one() -> None:
    summary, header, first, second = format_table(_doc({"cpu": 1.34, "gpu": 1.0})).splitlines()
    assert summary.endswith("planned at their slowdown under load: CPU ×1.34")
    assert "RUNS" in header.split()
    assert first.split()[-2:] == ["5", "measured"] and second.split()[-2:] == ["0", "fitted"]
    quiet = format_table(_doc({"cpu": 1.0, "gpu": 1.0})).splitlines()[0]
    assert quiet == "f v2 · profile version 9 · no cold start measured"
