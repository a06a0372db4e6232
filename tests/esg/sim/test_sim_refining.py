"""The simulator standing in for the daemon: executions from a table of their own, and the
policies' profiles refined by every warm batch with the daemon's rule."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import pytest

from esg.model import Config, Profile, Workflow
from esg.policy import Action, Dispatch, Event, Snapshot
from esg.refine import Point, RefinePolicy, observe
from esg.sim.execution import ExecutionModel
from esg.sim.refining import LiveProfiles
from esg.sim.workloads import custom_scenario as scenario
from tests.esg.sim.test_sim_engine import CPU
from tests.esg.sim.test_sim_execution import Watching, _run, _settings

EXACT = ExecutionModel(noise_sigma=0.0)


def _slow_truth(arrivals: int, points: dict[Config, Point] | None = None):  # type: ignore[no-untyped-def]
    """One function profiled at 10 ms that really takes 20."""
    sc = scenario(Workflow.single("f", slo_s=1.0), {"f": {CPU: 10.0}},
                  arrivals=[float(i) for i in range(arrivals)])
    return replace(sc, true_profiles={"f": Profile("f", {CPU: 20.0})},
                   profile_points=None if points is None else {"f": points})


def test_the_engine_executes_the_true_table_and_the_policy_still_sees_the_profile() -> None:
    policy = Watching(CPU)
    record = _run(policy, _slow_truth(4), _settings(EXACT))
    assert [r.latency_s for r in record.requests.values()] == pytest.approx([0.02] * 4)
    assert policy.told_s == pytest.approx([0.02] * 4)
    assert set(policy.seen_ms) == {10.0}  # refinement is off by default


def test_refinement_moves_a_young_point_to_what_runs_and_bumps_the_version() -> None:
    class Versions(Watching):
        def __init__(self) -> None:
            super().__init__(CPU)
            self.versions: list[int] = []
            self.refined: set[bool] = set()

        def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
            self.versions.append(snapshot.profiles["f"].version)
            self.refined.add(snapshot.profiles_refined)
            return super().on_event(event, snapshot)

    young = Versions()
    _run(young, _slow_truth(8, {CPU: Point.measured(10.0, 0.5, 3)}),
         _settings(EXACT, refine_profiles=True))
    assert young.refined == {True}
    assert young.seen_ms[0] == 10.0
    # The first batch is a new sandbox's (not used, as on the daemon); the seven warm ones, of
    # 20 ms each, go through the daemon's rule and publish what it publishes.
    point = Point.measured(10.0, 0.5, 3)
    for _ in range(7):
        point = observe(point, 20.0).point
    assert young.seen_ms[-1] == pytest.approx(point.published_ms) and point.published_ms >= 15
    assert young.seen_ms == sorted(young.seen_ms)
    assert young.versions[-1] > young.versions[0] and young.versions == sorted(young.versions)
    # A point without a count counts as settled (a full window): the same executions move it
    # less.
    settled = Watching(CPU)
    _run(settled, _slow_truth(8), _settings(EXACT, refine_profiles=True))
    assert 10.0 < settled.seen_ms[-1] < young.seen_ms[-1] - 2


def test_a_batch_size_only_refinement_added_runs_as_the_smallest_true_batch_holding_it() -> None:
    three = Config(3, 2, 0)

    class Threes:
        name: ClassVar[str] = "threes"

        def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
            jobs = snapshot.queues.get(("f", "f"), ())
            if len(jobs) < 3:
                return []
            return [Dispatch("f", "f", tuple(j.id for j in jobs[:3]), three, "node00")]

    tables = {"f": {Config(1, 2, 0): 10.0, three: 25.0, Config(4, 2, 0): 30.0}}
    sc = scenario(Workflow.single("f", slo_s=1.0), tables, arrivals=[0.0] * 3 + [1.0] * 3)
    truth = {"f": Profile("f", {Config(1, 2, 0): 12.0, Config(4, 2, 0): 40.0})}
    record = _run(Threes(), replace(sc, true_profiles=truth), _settings(EXACT))  # type: ignore[arg-type]
    assert [r.latency_s for r in record.requests.values()] == pytest.approx([0.04] * 6)


def test_live_profiles_add_the_points_executions_bring_and_keep_the_rest() -> None:
    live = LiveProfiles({"f": Profile("f", {CPU: 10.0}, version=5)})
    assert live.observe("f", Config(2, 2, 0), 15.0) is True  # a new point: published at once
    assert live.profiles["f"].latency_ms == {CPU: 10.0, Config(2, 2, 0): 15.0}
    assert live.profiles["f"].version == 6
    assert live.observe("f", CPU, 10.1) is True  # its first execution: no longer scaled
    assert live.profiles["f"].latency_ms == {CPU: 10.0, Config(2, 2, 0): 15.0}
    assert live.observe("f", CPU, 10.1) is False  # within the noise: nothing published
    assert live.profiles["f"].version == 7 and live.changes == 2


def test_live_profiles_plan_what_no_batch_ran_at_the_slowdown_of_what_did() -> None:
    """As the daemon's planners do (`esg.refine.planning_table`): 1 vCPU ran at twice its
    profiled time, 2 vCPUs never ran, so the policies see it twice as slow too."""
    two = Config(1, 2, 0)
    one = Config(1, 1, 0)
    points = {one: Point.measured(10.0, 0.0, 1), two: Point.measured(6.0, 0.0, 1)}
    every_change = RefinePolicy(rel_change=0.0, abs_change_ms=0.0, z=0.0)
    live = LiveProfiles({"f": Profile("f", {one: 10.0, two: 6.0}, version=1)}, {"f": points},
                        every_change)
    for _ in range(9):
        live.observe("f", one, 21.0)
    seen = live.profiles["f"].latency_ms  # (10 + 9 · 21) / 10 = 19.9 at 1 vCPU: ×1.99
    assert seen[one] == pytest.approx(19.9) and seen[two] == pytest.approx(6.0 * 1.99)
