"""The report: rows, normalised cost, the CSV's columns, and the command line end to end."""

from __future__ import annotations

import csv
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from esg.policy import Snapshot
from esg.sim.cli import main
from esg.sim.execution import ExecutionModel
from esg.sim.metrics import RunMetrics, jain, percentile
from esg.sim.report import (
    COLUMNS,
    HELD_OUT_SEEDS,
    ReportSettings,
    markdown_table,
    run_cell,
    table_rows,
    write_csv,
)
from esg.sim.summary import mean_sd, standings, standings_table, summary_rows

ISSUE_COLUMNS = ["policy", "workload", "slo", "slo_hit_rate", "cost_norm", "p50_ms", "p99_ms",
                 "overhead_p50_ms", "overhead_p99_ms", "config_miss_rate"]


def _metrics(policy: str, cell: str, cost: float, hit: float = 0.5) -> RunMetrics:
    return RunMetrics(policy, cell, 10, hit, 0.0, cost, 10.0, 20.0, 0.1, 0.2, math.nan,
                      0.5, 0.5, 0.9, 0.1, 1.5, latencies_ms=(10.0, 20.0))


def test_cost_is_normalised_to_esg_in_the_same_cell(tmp_path: Path) -> None:
    results = [_metrics("fcfs", "light/strict", 3.0), _metrics("esg", "light/strict", 2.0),
               _metrics("fcfs", "heavy/relaxed", 1.0), _metrics("esg", "heavy/relaxed", 4.0)]
    rows = table_rows(results)
    by = {(r["policy"], r["workload"]): r["cost_norm"] for r in rows}
    assert by[("fcfs", "light")] == pytest.approx(1.5)
    assert by[("fcfs", "heavy")] == pytest.approx(0.25)
    assert by[("esg", "light")] == pytest.approx(1.0)
    # Grid order: light before heavy, esg before fcfs (the policy table's order).
    assert [(r["workload"], r["policy"]) for r in rows][:2] == [("light", "esg"),
                                                                ("light", "fcfs")]
    path = tmp_path / "results.csv"
    write_csv(rows, path)
    with path.open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames is not None
        assert list(reader.fieldnames)[: len(ISSUE_COLUMNS)] == ISSUE_COLUMNS
        first = next(reader)
    assert first["config_miss_rate"] == ""  # NaN: not a pre-planned policy
    assert 0 <= float(first["slo_hit_rate"]) <= 1
    table = markdown_table(rows)
    assert table.count("\n") == len(rows) + 2 and "50.0%" in table


def test_without_esg_costs_normalise_to_the_first_policy() -> None:
    rows = table_rows([_metrics("fcfs", "light/strict", 2.0),
                       _metrics("orion", "light/strict", 3.0)])
    assert [r["cost_norm"] for r in rows] == pytest.approx([1.0, 1.5])


def test_percentile_and_jain() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert math.isnan(percentile([], 0.5))
    assert jain([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert jain([1.0, 0.0, 0.0]) == pytest.approx(1 / 3)


@pytest.mark.slow
@pytest.mark.timeout(300)  # 48 cells and figures: 15 s alone, past 120 s beside two busy processes
def test_quick_report_writes_every_output_and_is_reproducible(tmp_path: Path) -> None:
    policies = "fcfs,clockwork,harmonybatch"
    for out in ("a", "b"):
        assert main(["report", "--quick", "--out", str(tmp_path / out), "--seeds", "3,4",
                     "--jobs", "1", "--policies", policies, "--loads", "light,full",
                     "--slos", "tight,relaxed", "--no-charge-overhead"]) == 0
    for name in ("results.csv", "summary.csv", "results.md", "slo_hit_rate.png",
                 "cost_norm.png", "latency_cdf.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0

    def table(out: str, name: str = "results.csv") -> list[dict[str, str]]:
        with (tmp_path / out / name).open() as f:
            rows = list(csv.DictReader(f))
        for row in rows:  # the measured wall time of policy calls is not deterministic
            for column in [c for c in row if c.startswith("overhead")]:
                del row[column]
        return rows

    rows = table("a")
    assert rows == table("b")
    assert len(rows) == 3 * 2 * 2 * 2  # policies x loads x SLOs x seeds
    assert {r["policy"] for r in rows} == set(policies.split(","))
    assert {(r["workload"], r["slo"]) for r in rows} == {
        (load, slo) for load in ("light", "full") for slo in ("tight", "relaxed")
    }
    assert {r["seed"] for r in rows} == {"3", "4"}
    assert {r["profile_error"] for r in rows} == {"0.8-1.3"}  # wrong profiles by default
    assert list(rows[0])[: len(ISSUE_COLUMNS) - 2] == [
        c for c in ISSUE_COLUMNS if not c.startswith("overhead")
    ]
    assert list(rows[0])[-2:] == ["seed", "profile_error"]
    assert set(COLUMNS) >= set(ISSUE_COLUMNS)
    summary = table("a", "summary.csv")
    assert len(summary) == 3 * 2 * 2 and {r["seeds"] for r in summary} == {"2"}
    # The mean of a cell is the mean of its two seeds' rows.
    first = summary[0]
    pair = [float(r["slo_hit_rate"]) for r in rows if all(
        r[k] == first[k] for k in ("policy", "workload", "slo"))]
    assert float(first["slo_hit_rate_mean"]) == pytest.approx(sum(pair) / 2, abs=1e-3)
    assert "±" in (tmp_path / "a" / "results.md").read_text()


def test_cost_is_normalised_within_the_seed_and_summarised_as_mean_and_spread() -> None:
    results = [replace(_metrics("esg", "light/strict", 2.0, hit=0.9), seed=1),
               replace(_metrics("fcfs", "light/strict", 3.0, hit=0.5), seed=1),
               replace(_metrics("esg", "light/strict", 4.0, hit=1.0), seed=2),
               replace(_metrics("fcfs", "light/strict", 2.0, hit=0.7), seed=2)]
    rows = table_rows(results)
    # fcfs: 3 / 2 = 1.5 under seed 1, 2 / 4 = 0.5 under seed 2 (not 5/6 of pooled means).
    assert [(r["policy"], r["seed"], r["cost_norm"]) for r in rows] == [
        ("esg", 1, 1.0), ("esg", 2, 1.0), ("fcfs", 1, 1.5), ("fcfs", 2, 0.5)]
    fcfs = summary_rows(rows)[1]
    assert fcfs["policy"] == "fcfs" and fcfs["seeds"] == 2
    assert fcfs["cost_norm_mean"] == pytest.approx(1.0)
    # Sample standard deviation of {1.5, 0.5}: sqrt(((0.5)^2 + (0.5)^2) / 1) = 0.7071.
    assert fcfs["cost_norm_sd"] == pytest.approx(0.7071, abs=1e-4)
    assert mean_sd(fcfs, "slo_hit_rate", percent=True) == "60.0 ± 14.1"
    assert math.isnan(float(str(fcfs["config_miss_rate_mean"])))  # NaN in every seed


def test_report_options_build_the_grid_and_reject_what_is_not_in_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[ReportSettings] = []
    monkeypatch.setattr("esg.sim.cli.report", lambda settings, out, jobs: seen.append(settings)
                        or 0)
    assert main(["report"]) == 0
    assert main(["report", "--seeds", "7-9", "--loads", "full", "--slos", "tight,strict",
                 "--profile-error", "off", "--no-charge-overhead", "--nodes", "16",
                 "--refine-profiles"]) == 0
    default, chosen = seen
    assert default.seeds == HELD_OUT_SEEDS == (100, 101, 102, 103, 104)
    assert default.charge_overhead and default.execution == ExecutionModel.realistic()
    assert not default.refine_profiles and chosen.refine_profiles
    assert len(default.cells()) == 20
    assert chosen.seeds == (7, 8, 9) and chosen.nodes == 16 and not chosen.charge_overhead
    assert chosen.cells() == [("full", "tight"), ("full", "strict")]
    assert chosen.execution.profile_error == "0"
    for bad in (["--loads", "overloaded"], ["--seeds", "x"], ["--interference", "1"]):
        with pytest.raises(SystemExit):
            main(["report", *bad])


def test_the_report_charges_scheduling_time_unless_told_not_to() -> None:
    # A policy call that takes a whole second (the injected timer steps 1 s per reading) makes
    # every charged request late; uncharged, the same cell meets its SLOs.
    tiny = ReportSettings(nodes=1, duration_s=0.2, warmup_s=0.2)
    assert tiny.charge_overhead

    def slow_clock() -> Callable[[], float]:
        ticks = itertools.count()
        return lambda: float(next(ticks))

    charged = run_cell("fcfs", "light", "relaxed", tiny, slow_clock())
    free = run_cell("fcfs", "light", "relaxed", replace(tiny, charge_overhead=False),
                    slow_clock())
    assert charged.overhead_p50_ms == free.overhead_p50_ms == pytest.approx(1000.0)
    assert charged.slo_hit_rate == 0.0 < free.slo_hit_rate


def test_a_report_cell_can_refine_every_policys_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """`refine_profiles` reaches the engine, which then shows the policies refined profiles
    (`esg.sim.refining`; what they see is tested in test_sim_refining)."""
    import esg.sim.report

    seen: list[bool] = []

    class Spy(esg.sim.report.Simulation):
        def _snapshot(self) -> Snapshot:
            snapshot = super()._snapshot()
            seen.append(snapshot.profiles_refined)
            return snapshot

    monkeypatch.setattr(esg.sim.report, "Simulation", Spy)
    tiny = ReportSettings(nodes=1, duration_s=0.2, warmup_s=0.2, charge_overhead=False)
    run_cell("fcfs", "light", "relaxed", tiny, time.perf_counter)
    assert seen and not any(seen)
    seen.clear()
    run_cell("fcfs", "light", "relaxed", replace(tiny, refine_profiles=True), time.perf_counter)
    assert seen and all(seen)


def test_standings_name_the_field_leader_and_where_ours_win() -> None:
    def run(policy: str, cell: str, seed: int, cost: float, hit: float) -> RunMetrics:
        return replace(_metrics(policy, cell, cost, hit=hit), seed=seed)

    results = [
        # light/strict: esg-plus beats the leader (fcfs) by 5 and 15 points at 0.8-0.9 x its cost.
        run("esg", "light/strict", 1, 1.0, 0.6), run("esg", "light/strict", 2, 1.0, 0.7),
        run("esg-plus", "light/strict", 1, 1.2, 0.95), run("esg-plus", "light/strict", 2, 1.2, 1.0),
        run("fcfs", "light/strict", 1, 1.5, 0.9), run("fcfs", "light/strict", 2, 1.3, 0.85),
        run("orion", "light/strict", 1, 0.9, 0.8), run("orion", "light/strict", 2, 0.9, 0.8),
        # heavy/relaxed: esg-plus has more hits than orion, the leader, but at more cost.
        run("esg", "heavy/relaxed", 1, 1.0, 0.5), run("esg-plus", "heavy/relaxed", 1, 1.5, 0.9),
        run("orion", "heavy/relaxed", 1, 1.2, 0.8), run("fcfs", "heavy/relaxed", 1, 2.0, 0.8),
    ]
    light, heavy = standings(table_rows(results))
    assert (light["workload"], light["slo"], light["leader"]) == ("light", "strict", "fcfs")
    assert light["leader_hits"] == pytest.approx(0.875)
    assert light["leader_cost"] == pytest.approx((1.5 + 1.3) / 2)
    assert light["esg-plus_margin"] == pytest.approx(0.1)
    assert light["esg-plus_margin_sd"] == pytest.approx(math.sqrt(2 * 0.05**2))
    assert light["esg-plus_wins"] is True and light["esg_wins"] is False
    # Orion and fcfs tie at 80 %: the cheaper one leads.
    assert heavy["leader"] == "orion" and heavy["esg-plus_margin"] == pytest.approx(0.1)
    assert heavy["esg-plus_wins"] is False  # 1.5 x ESG's cost against the leader's 1.2
    table = standings_table([light, heavy])
    assert ("| light | strict | fcfs (87.5, 1.40) | 65.0 | -22.5 ± 10.6 | 1.00 | no "
            "| 97.5 | +10.0 ± 7.1 | 1.20 | yes |") in table
    assert "esg wins 0 of 2 cells, esg-plus wins 1 of 2 cells; one of ours wins 1 of 2." in table
