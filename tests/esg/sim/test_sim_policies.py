"""Every registered policy on a contended cluster: it never over-commits a node, dispatches
only queued jobs, uses valid MIG sizes, and keeps its own rules; plus per-policy rule tests."""

from __future__ import annotations

import itertools
import math
from typing import ClassVar

import pytest

from esg.model import MIG_SIZES, Config, Job, Workflow
from esg.policies import POLICIES, make_policy
from esg.policies.aquatope import AquatopePolicy
from esg.policies.clockwork import ClockworkPolicy
from esg.policies.fast_gshare import FastGSharePolicy
from esg.policies.harmonybatch import HarmonyBatchPolicy
from esg.policies.inferfair import InferFairPolicy
from esg.policies.mqfq_sticky import MqfqStickyPolicy
from esg.policies.orion import OrionPolicy
from esg.policies.toolkit import RateMeter, critical_path_s, home_order, static_slo_shares
from esg.policy import (
    Action,
    Arrival,
    Completion,
    Dispatch,
    Drop,
    Event,
    FunctionLimits,
    GpuView,
    NodeView,
    Policy,
    Snapshot,
    Timer,
    WakeUp,
)
from esg.pricing import DEFAULT_PRICING
from esg.sim.cluster import ClusterSpec
from esg.sim.engine import Simulation
from esg.sim.workloads import Scenario, custom_scenario, make_scenario

BUILDABLE = []
for _name in POLICIES:
    try:
        make_policy(_name)
    except ImportError:
        continue
    BUILDABLE.append(_name)


class Checked:
    """Wraps a policy and checks every answer against the snapshot it was given."""

    name: ClassVar[str] = "checked"

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.dispatches: list[Dispatch] = []

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        actions = self.inner.on_event(event, snapshot)
        view = snapshot
        for action in actions:
            if isinstance(action, Dispatch):
                queued = {j.id for j in view.queues.get((action.app, action.function), ())}
                assert set(action.job_ids) <= queued, "dispatched a job that is not queued"
                node = view.node(action.node)
                assert node.free_vcpu >= action.config.vcpu, "over-commits vCPUs"
                assert action.config in snapshot.profiles[action.function].latency_ms
                if action.config.vgpu:
                    assert action.config.vgpu in MIG_SIZES
                    gpu = next(g for g in node.gpus if g.index == action.gpu)
                    assert gpu.free_units >= action.config.vgpu, "over-commits a GPU"
                view = view.reserve(action)
                self.dispatches.append(action)
            elif isinstance(action, Drop):
                queued = {j.id for j in view.queues.get((action.app, action.function), ())}
                assert set(action.job_ids) <= queued
        return actions


def _timer():  # type: ignore[no-untyped-def]
    ticks = itertools.count()
    return lambda: next(ticks) * 1e-5


def contended(seed: int = 3) -> tuple[Scenario, ClusterSpec]:
    cluster = ClusterSpec(nodes=1)
    return make_scenario("heavy", "strict", cluster=cluster, seed=seed,
                         duration_s=0.6, warmup_s=0.3), cluster


# ESG searches a large configuration space per decision: seconds on this cluster.
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in ("esg", "esg-plus") else n
     for n in BUILDABLE],
)
def test_policy_never_overcommits_and_only_dispatches_queued_jobs(name: str) -> None:
    sc, cluster = contended()
    checked = Checked(make_policy(name))
    record = Simulation(sc, checked, cluster, timer=_timer()).run()
    assert checked.dispatches, f"{name} never dispatched anything"
    assert record.batches  # and the engine ran them
    if name == "fast-gshare":
        assert all(d.config.batch == 1 and len(d.job_ids) == 1 for d in checked.dispatches)
    if name == "infless":
        assert all(d.config.vgpu <= 3 for d in checked.dispatches)
        assert all(d.config.vcpu <= max(d.config.batch, 2) for d in checked.dispatches)
    if name in ("mqfq-sticky", "fcfs"):
        for d in checked.dispatches:
            limits = sc.limits[d.function]
            assert (d.config.vcpu, d.config.vgpu) == (limits.vcpu, limits.vgpu)
    if name in ("clockwork", "inferfair"):
        assert all(d.config.vgpu in (0, 1) for d in checked.dispatches)


@pytest.mark.parametrize("name", [n for n in BUILDABLE if n not in ("esg", "esg-plus")])
def test_policy_runs_are_reproducible(name: str) -> None:
    def outcome() -> list[tuple[str, float | None]]:
        sc, cluster = contended(seed=5)
        record = Simulation(sc, make_policy(name), cluster, timer=_timer()).run()
        return [(rid, r.latency_s) for rid, r in record.requests.items()]

    assert outcome() == outcome()


# ---------------------------------------------------------------- per-policy rules


def _job(i: int, *, app: str = "a", function: str = "f", start: float = 0.0,
         slo: float = 1.0) -> Job:
    return Job(f"{app}{i}", f"{app}r{i}", app, function, start, start, start + slo)


def _snapshot(queues: dict[tuple[str, str], tuple[Job, ...]],
              tables: dict[str, dict[Config, float]],
              workflows: dict[str, Workflow], now: float = 0.0, vcpu: int = 16,
              units: int = 7) -> Snapshot:
    from esg.model import Profile

    node = NodeView("n0", 16, vcpu, (GpuView(0, units),))
    return Snapshot(now_s=now, nodes=(node,), queues=queues, workflows=workflows,
                    profiles={f: Profile(f, t) for f, t in tables.items()},
                    limits={f: FunctionLimits(vcpu=2, vgpu=1) for f in tables})


def test_clockwork_drops_late_jobs_and_runs_the_largest_batch_that_meets_the_head() -> None:
    table = {Config(b, 2, 1): 10.0 * b for b in (1, 2, 4)}
    late = _job(0, start=-1.0, slo=1.0)  # deadline 0.0: already missed
    fresh = tuple(_job(i, slo=0.1) for i in range(1, 4))
    snap = _snapshot({("a", "f"): (late, *fresh)}, {"f": table},
                     {"a": Workflow.single("f", 1.0)})
    actions = ClockworkPolicy(batches=(1, 2, 4)).schedule(snap)
    drops = [a for a in actions if isinstance(a, Drop)]
    dispatches = [a for a in actions if isinstance(a, Dispatch)]
    assert drops and drops[0].job_ids == (late.id,)
    # Three fresh jobs, deadline 0.1 - 5 ms buffer: batch 2 (22.4 ms est.) is the largest that
    # has enough jobs (4 needs 4), then the third runs alone.
    assert [len(d.job_ids) for d in dispatches] == [2, 1]


def test_clockwork_forgets_a_slow_spell_so_a_function_it_dropped_runs_again() -> None:
    """A burst's slow executions made every job of `f` look late; with no batch of it running,
    only the measurements' age can bring the estimate back (see the module docstring)."""
    table = {Config(b, 2, 1): 10.0 * b for b in (1, 2, 4)}
    workflows = {"a": Workflow.single("f", 0.1)}
    policy = ClockworkPolicy(batches=(1, 2, 4), sample_ttl_s=10.0)
    slow = Dispatch("a", "f", ("a0",), Config(1, 2, 1), "n0", gpu=0)
    policy.on_event(Completion(slow, exec_s=0.5), _snapshot({}, {"f": table}, workflows))

    def run(now: float) -> list[Action]:
        job = _job(1, start=now, slo=0.1)
        snap = _snapshot({("a", "f"): (job,)}, {"f": table}, workflows, now=now)
        return policy.on_event(Timer(), snap)

    assert [type(a) for a in run(now=5.0)] == [Drop]  # 0.5 s estimated against 0.1 s
    assert [type(a) for a in run(now=10.5)] == [Dispatch]  # the 0.5 s is forgotten


def test_clockwork_does_not_time_a_new_sandboxs_first_batch() -> None:
    """Clockwork times INFER actions on loaded models; on the daemon a new sandbox's first batch
    also pays one-time initialisation, and counting it dropped calls for the window's life."""
    table = {Config(b, 2, 1): 10.0 * b for b in (1, 2, 4)}
    workflows = {"a": Workflow.single("f", 0.1)}
    policy = ClockworkPolicy(batches=(1, 2, 4))
    first = Dispatch("a", "f", ("a0",), Config(1, 2, 1), "n0", gpu=0)
    policy.on_event(Completion(first, exec_s=0.5, cold_start=True),
                    _snapshot({}, {"f": table}, workflows))
    job = _job(1, start=1.0, slo=0.1)
    snap = _snapshot({("a", "f"): (job,)}, {"f": table}, workflows, now=1.0)
    assert [type(a) for a in policy.on_event(Timer(), snap)] == [Dispatch]
    # the same execution on a warm sandbox counts
    policy.on_event(Completion(first, exec_s=0.5), _snapshot({}, {"f": table}, workflows))
    assert [type(a) for a in policy.on_event(Timer(), snap)] == [Drop]


def test_the_baselines_keep_a_functions_cap_on_concurrent_batches() -> None:
    """With `f` at its `max_instances` (1, one batch running), MQFQ-Sticky serves `g`, although
    `f` was first in line and a node has room for both."""
    from dataclasses import replace

    table = {Config(1, 2, 1): 10.0}
    workflows = {"a": Workflow.single("f", 1.0), "b": Workflow.single("g", 1.0)}
    queues = {("a", "f"): (_job(1),), ("b", "g"): (_job(2, app="b", function="g", start=0.1),)}
    snap = _snapshot(queues, {"f": table, "g": table}, workflows)
    snap = replace(snap, running={"f": 1},
                   limits={**snap.limits, "f": FunctionLimits(vcpu=2, vgpu=1, max_instances=1)})
    policy = MqfqStickyPolicy()
    for job in (*queues[("a", "f")], *queues[("b", "g")]):
        policy.on_event(Arrival(job), replace(snap, queues={}))
    dispatches = [a for a in policy.on_event(Timer(), snap) if isinstance(a, Dispatch)]
    assert [d.function for d in dispatches] == ["g"]


def test_harmonybatch_provision_is_the_cheapest_feasible_config() -> None:
    table = {Config(b, c, 0): 30.0 * b / c + 2 for b in (1, 2, 4) for c in (1, 2, 4)}
    snap = _snapshot({}, {"f": table}, {"a": Workflow.single("f", 1.0)})
    policy = HarmonyBatchPolicy()
    slo, rate = 0.05, 100.0
    config, timeout = policy.provision("f", slo, rate, snap)
    feasible = []
    for c, ms in table.items():
        t = slo - ms / 1000 * 1.12
        if t >= 0 and c.batch <= math.floor(rate * t) + 1:
            feasible.append((DEFAULT_PRICING.cost_per_request(c, ms), ms, c))
    assert config == min(feasible)[2]
    assert timeout == pytest.approx(slo - table[config] / 1000 * 1.12)


def test_orion_meets_the_budget_when_it_can_and_is_cheapest_when_loose() -> None:
    wf = Workflow.from_edges("a", ["x", "y"], [("x", "y")], 1.0)
    # Latency 40/c + 5 ms: more vCPUs are faster but dearer per request (cost ∝ 40 + 5c).
    tables = {f: {Config(1, c, 0): 40.0 / c + 5 for c in (1, 2, 4, 8)} for f in ("x", "y")}
    snap = _snapshot({}, tables, {"a": wf})
    orion = OrionPolicy()
    loose = orion.search(wf, 10.0, snap)
    assert loose == {"x": Config(1, 1, 0), "y": Config(1, 1, 0)}
    tight = orion.search(wf, 0.03, snap)
    e2e = sum(tables[f][tight[f]] for f in ("x", "y")) * 1.08 / 1000
    assert e2e <= 0.03


def test_orion_and_aquatope_count_configuration_misses_when_the_plan_does_not_fit() -> None:
    # Only the 16-vCPU config meets 12 ms (10 ms × 1.08 p95); 8 vCPUs take 15 ms.
    wf = Workflow.single("f", 0.012)
    big, small = Config(1, 16, 0), Config(1, 8, 0)
    for policy in (OrionPolicy(), AquatopePolicy(n_init=4, n_iter=2)):
        # Two requests at once on 24 vCPUs: the planned config fits once, the second falls
        # back to the 8 vCPUs left, which is a miss.
        sc = custom_scenario(wf, {"f": {big: 10.0, small: 15.0}}, [0.0, 0.0])
        cluster = ClusterSpec(nodes=1, vcpu_per_node=24)
        record = Simulation(sc, policy, cluster, timer=_timer()).run()
        assert record.planned_stages == 2
        assert record.missed_stages == 1


def test_aquatope_is_deterministic_per_seed_and_frozen() -> None:
    sc, _ = contended()
    snap = _snapshot({}, {f: dict(p.latency_ms) for f, p in sc.profiles.items()},
                     dict(sc.workflows))
    wf = sc.workflows["image-classification"]
    plan = AquatopePolicy(seed=1).optimise(wf, snap)
    assert plan == AquatopePolicy(seed=1).optimise(wf, snap)
    assert set(plan) == set(wf.functions)
    # Without retraining (tests/esg/test_policy_prewarm.py has it) the plan is frozen: every
    # dispatch of a queue carries the same planned configuration.
    cluster = ClusterSpec(nodes=1)
    checked = Checked(AquatopePolicy(seed=1, retrain_drift=math.inf))
    Simulation(sc, checked, cluster, timer=_timer()).run()
    planned: dict[str, set[Config]] = {}
    for d in checked.dispatches:
        planned.setdefault(d.function, set()).update(d.plan.values())
    assert all(len(configs) == 1 for configs in planned.values())


def test_mqfq_serves_flows_by_start_tag_so_a_backlog_cannot_starve_a_newcomer() -> None:
    cfg = Config(1, 2, 1)
    tables = {"f": {cfg: 10.0}, "g": {cfg: 10.0}}
    wfs = {"a": Workflow.single("f", 1.0), "b": Workflow.single("g", 1.0)}
    sc = Scenario("light/moderate", wfs, {}, {}, {"f": 0.0, "g": 0.0},
                  tuple([(0.0, "a")] * 4 + [(0.0001, "b")]))
    from esg.model import Profile

    sc = Scenario(sc.name, wfs, {f: Profile(f, t) for f, t in tables.items()},
                  {f: FunctionLimits(vcpu=2, vgpu=1) for f in tables}, sc.output_bytes,
                  sc.arrivals)
    # One slot at a time: a cluster of one node with 2 vCPUs.
    cluster = ClusterSpec(nodes=1, vcpu_per_node=2, cold_start_cpu_s=0.0,
                          cold_start_gpu_extra_s=0.0)

    def order(overrun_s: float) -> list[str]:
        checked = Checked(MqfqStickyPolicy(allowed_overrun_s=overrun_s))
        Simulation(sc, checked, cluster, timer=_timer()).run()
        return [d.function for d in checked.dispatches]

    # f's jobs get start tags 0, 10, 20, 30 ms; g's job arrives when VT = 10 ms and gets 10.
    # Sticky dispatch stays with f while f is Active (S_f − VT ≤ T): with T = 0 f is throttled
    # as soon as its head (20 ms) runs ahead of g (10 ms), so g goes third; with T = 5 s
    # stickiness serves f's whole backlog first.
    assert order(0.0) == ["f", "f", "g", "f", "f"]
    assert order(5.0) == ["f", "f", "f", "f", "g"]


def test_inferfair_orders_by_normalised_service_when_overloaded() -> None:
    from esg.policies.clockwork import Strategy

    policy = InferFairPolicy()
    s1 = Strategy(0.1, 1, ("a", "f"), Config(1, 2, 1))
    s2 = Strategy(0.5, 1, ("b", "g"), Config(1, 2, 1))
    snap = _snapshot({}, {}, {})
    for overloaded, first in ((True, s2), (False, s1)):
        service = {("a", "f"): 1.0, ("b", "g"): 0.2}
        policy.normalised_service = (  # type: ignore[method-assign]
            lambda _snap, o=overloaded, s=service: (s, o)
        )
        policy.observe(Timer(), snap)  # a new event: the estimate is recomputed
        assert policy.order([s1, s2], snap)[0] is first


def test_static_shares_never_exceed_the_slo_on_any_path() -> None:
    wf = Workflow.from_edges("a", ["p", "x", "y", "z"],
                             [("p", "x"), ("p", "y"), ("x", "z"), ("y", "z")], 0.3)
    ref = {"p": 5.0, "x": 20.0, "y": 8.0, "z": 2.0}
    shares = static_slo_shares(wf, ref)
    for path in (("p", "x", "z"), ("p", "y", "z")):
        assert sum(shares[f] for f in path) <= 0.3 + 1e-12
    assert sum(shares[f] for f in ("p", "x", "z")) == pytest.approx(0.3)
    through = critical_path_s(wf, {f: v / 1000 for f, v in ref.items()})
    assert through["y"] == pytest.approx(0.015)  # p 5 + y 8 + z 2 ms
    assert through["z"] == pytest.approx(0.027)  # the longer branch, through x


def test_home_order_visits_every_node_once_and_is_stable() -> None:
    names = [f"n{i}" for i in range(6)]
    order = home_order("app", "f", names)
    assert sorted(order) == names
    assert order == home_order("app", "f", reversed(names))


def test_harmonybatch_waits_for_its_batch_until_the_timeout_then_sends_what_it_has() -> None:
    table = {Config(4, 2, 0): 20.0, Config(1, 2, 0): 8.0}
    wf = {"a": Workflow.single("f", 1.0)}
    policy = HarmonyBatchPolicy()
    policy.plan = lambda key, snap: (Config(4, 2, 0), 0.01)  # type: ignore[method-assign]
    one = _snapshot({("a", "f"): (_job(0),)}, {"f": table}, wf, now=0.0)
    assert policy.on_event(Timer(), one) == [WakeUp(0.01)]
    due = _snapshot({("a", "f"): (_job(0),)}, {"f": table}, wf, now=0.01)
    (dispatch,) = policy.on_event(Timer(), due)
    assert isinstance(dispatch, Dispatch) and dispatch.job_ids == ("a0",)
    full = _snapshot({("a", "f"): tuple(_job(i) for i in range(4))}, {"f": table}, wf)
    (batch,) = policy.on_event(Timer(), full)
    assert isinstance(batch, Dispatch) and len(batch.job_ids) == 4


def test_fast_gshare_runs_replicas_of_the_most_efficient_config_plus_a_residual_one() -> None:
    slow, fast = Config(1, 1, 0), Config(1, 4, 0)
    # Per request/s: slow = (1/16) / 50 rps, fast = (4/16) / 222 rps: fast is more efficient.
    table = {slow: 20.0, fast: 4.5}
    snap = _snapshot({}, {"f": table}, {"a": Workflow.single("f", 1.0)}, now=0.5)
    policy = FastGSharePolicy()
    policy._rates[("a", "f")] = RateMeter(rate=250.0, _window_start=0.0)
    # ⌊250 / 222⌋ = 1 replica of `fast`; the residual 28 req/s goes to the config whose rate
    # exceeds it by the least: `slow` (50 req/s).
    assert policy.pool(("a", "f"), snap) == {fast: 1, slow: 1}
