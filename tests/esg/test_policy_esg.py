"""EsgPolicy behind the seam: hand-worked decisions on small clusters, then invariants."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Any

import pytest

from esg.model import Config, Job, Profile, Workflow
from esg.policies import make_policy
from esg.policies.esg import EsgPolicy
from esg.policy import (
    Action,
    Arrival,
    Completion,
    Dispatch,
    Event,
    FunctionLimits,
    NodeView,
    Snapshot,
    Timer,
    WakeUp,
)
from esg.pricing import Pricing
from esg.sim.cluster import ClusterSpec
from esg.sim.engine import Simulation
from esg.sim.workloads import make_scenario
from esg.testing import cluster, job, node, snapshot, synthetic_profile

# Prices chosen for hand arithmetic: $1 per vCPU-second, $10 per GPU-unit-second.
PRICES = Pricing(cpu_per_s=1.0, gpu_per_s=10.0)
CPU1, CPU4, PAIR, GPU1 = Config(1, 1), Config(1, 4), Config(2, 1), Config(1, 1, 1)
# Cost per request = (vcpu + 10 vgpu) * latency_s / batch:
#   CPU1 100 ms: 1 * 0.1 / 1 = 0.100     CPU4  40 ms: 4 * 0.04 / 1 = 0.160
#   PAIR 150 ms: 1 * 0.15 / 2 = 0.075    GPU1  20 ms: 11 * 0.02 / 1 = 0.220
PROFILE = Profile("f", {CPU1: 100.0, CPU4: 40.0, PAIR: 150.0, GPU1: 20.0})


def _policy() -> EsgPolicy:
    # the paper's batch wait, to the edge of the budget (the reserve is tested on its own)
    return EsgPolicy(pricing=PRICES, wait_reserve=0.0)


def _snap(
    now_s: float,
    jobs: list[Job],
    *,
    slo_s: float = 1.0,
    nodes: tuple[NodeView, ...] = (),
    limits: dict[str, FunctionLimits] | None = None,
    running: dict[str, int] | None = None,
) -> Snapshot:
    """One node of 16 vCPUs and a 7-unit GPU (unless `nodes`), function f alone, PROFILE."""
    return snapshot(
        now_s=now_s,
        nodes=nodes or (node("n0", vcpu=16, gpu_units=(7,)),),
        jobs=jobs,
        workflows=[Workflow.single("f", slo_s)],
        profiles=[PROFILE],
        limits=limits,
        running=running,
    )


def _dispatches(actions: list[Action]) -> list[Dispatch]:
    return [a for a in actions if isinstance(a, Dispatch)]


def test_make_policy_builds_esg_with_keyword_settings() -> None:
    policy = make_policy("esg", {"k": 4, "group_size": 2, "pricing": {"gpu_to_cpu_ratio": 10}})
    assert isinstance(policy, EsgPolicy)
    assert (policy.k, policy.group_size) == (4, 2)
    assert policy.pricing.gpu_per_s == pytest.approx(10 * policy.pricing.cpu_per_s)
    assert isinstance(make_policy("esg"), EsgPolicy)


def test_a_lone_job_waits_for_a_pair_while_the_budget_allows() -> None:
    # Best plan: PAIR ($0.075) but only one job is queued. Runnable now: CPU1 ($0.100, 100 ms),
    # PAIR with one job ($0.150), CPU4, GPU1. Planned on mean x (1 + 10 % margin), warm (no
    # cold-start estimate) and local: slack = 1000 - 1.1 * 100 = 890 ms: wait, waking
    # min_wait/2 = 0.25 ms early, at 0.88975 s.
    j0 = job(0, start_s=0.0, slo_s=1.0)
    actions = _policy().on_event(Arrival(j0), _snap(0.0, [j0]))
    [wake] = actions
    assert isinstance(wake, WakeUp) and wake.at_s == pytest.approx(0.88975)
    # Without the margin the slack is 1000 - 100 = 900 ms.
    exact = EsgPolicy(pricing=PRICES, latency_margin=0.0, wait_reserve=0.0)
    [wake] = exact.on_event(Arrival(j0), _snap(0.0, [j0]))
    assert isinstance(wake, WakeUp) and wake.at_s == pytest.approx(0.89975)


def test_the_wait_for_a_batch_keeps_a_reserve_for_a_slow_batch() -> None:
    # wait_reserve 0.25 (the default) on an idle node: the wait may spend the slack less a
    # quarter of the latency of the plan runnable now (CPU1, 100 ms): 890 - 25 = 865 ms,
    # waking at 0.86475 s. At that moment the budget is 1000 - 864.75 = 135.25 ms and CPU1
    # (1.1 * 100) still meets it with 25 ms to spare for a batch slower than its mean.
    policy = EsgPolicy(pricing=PRICES)
    assert policy.wait_reserve == 0.25
    j0 = job(0, start_s=0.0, slo_s=1.0)
    [wake] = policy.on_event(Arrival(j0), _snap(0.0, [j0]))
    assert isinstance(wake, WakeUp) and wake.at_s == pytest.approx(0.86475)
    [dispatch] = _dispatches(policy.on_event(Timer(), _snap(0.86475, [j0])))
    assert (dispatch.config, dispatch.job_ids) == (CPU1, ("j0",))
    with pytest.raises(ValueError, match="wait_reserve"):
        EsgPolicy(wait_reserve=-0.1)


def test_the_reserve_shrinks_as_the_vcpus_fill() -> None:
    # 12 of 16 vCPUs in use since t = 0: at t = 10 s the share in use over the last second is
    # 0.75 (to within e^-10), so the reserve is 0.25 x (1 - 0.75) x 100 = 6.25 ms and the lone
    # job's wait ends at 10 + (890 - 6.25 - 0.25) / 1000 s. At light load the batch wait ended
    # calls at their SLO; at heavy load the batches carry the throughput.
    policy = EsgPolicy(pricing=PRICES, wait_reserve=0.25)
    busy = (node("n0", vcpu=16, free_vcpu=4, gpu_units=(7,)),)
    policy.on_event(Timer(), _snap(0.0, [], nodes=busy))
    j0 = job(0, start_s=10.0, slo_s=1.0)
    [wake] = policy.on_event(Arrival(j0), _snap(10.0, [j0], nodes=busy))
    assert isinstance(wake, WakeUp) and wake.at_s == pytest.approx(10.8835, abs=1e-6)


def test_the_time_a_call_spends_outside_its_stages_is_left_over_from_the_slo() -> None:
    # The daemon measured 10 ms per call of "app" outside its batches (hops, the answer): the
    # lone job's slack is 890 - 10 = 880 ms, so the wait ends 10 ms earlier than above; the
    # figure of another application changes nothing.
    j0 = job(0, start_s=0.0, slo_s=1.0)
    snap = dataclasses.replace(_snap(0.0, [j0]), outside_ms={"app": 10.0})
    [wake] = _policy().on_event(Arrival(j0), snap)
    assert isinstance(wake, WakeUp) and wake.at_s == pytest.approx(0.87975)
    other = dataclasses.replace(snap, outside_ms={"g": 10.0})
    [wake] = _policy().on_event(Arrival(j0), other)
    assert isinstance(wake, WakeUp) and wake.at_s == pytest.approx(0.88975)
    # When the wait is over, the 10 ms are not spent either: at 0.87975 s the budget is
    # 1000 - 879.75 - 10 = 110.25 ms, which CPU1 (1.1 * 100 ms) meets.
    [dispatch] = _dispatches(_policy().on_event(Timer(), dataclasses.replace(
        _snap(0.87975, [j0]), outside_ms={"app": 10.0})))
    assert dispatch.config == CPU1
    [dispatch] = _dispatches(_policy().on_event(Timer(), dataclasses.replace(
        _snap(0.88475, [j0]), outside_ms={"app": 10.0})))
    assert dispatch.config == CPU4


def test_the_split_slo_moves_in_steps_of_two_percent_so_small_changes_reuse_it() -> None:
    # SLO 1 s: steps of 20 ms, rounded up. 0.61 and 15 ms of outside time both narrow the split
    # SLO to 980 ms (the same split, computed once); 21 ms narrows it to 960 ms.
    policy, flow = _policy(), Workflow.single("f", 1.0)
    snap = _snap(0.0, [job(0)])
    narrowed = [policy._workflow("f", "f", dataclasses.replace(snap, workflows={"f": flow}), ms)
                for ms in (0.61, 15.0, 21.0)]
    assert [w.slo_s for w in narrowed] == pytest.approx([0.98, 0.98, 0.96])
    assert narrowed[0] is narrowed[1]


@pytest.mark.parametrize(
    ("free_vcpu", "busy_above", "waits"),
    [(4, 0.0, False), (16, 0.0, False), (4, 0.1, False), (16, 0.1, True)],
)
def test_a_batch_the_arrival_rate_cannot_fill_in_time_is_not_waited_for(
    free_vcpu: int, busy_above: float, waits: bool
) -> None:
    # Jobs arrive 1 s apart; a lone job's slack is 890 ms (see above), so a pair is not
    # expected before the wait is over: the second job runs at once (CPU1), on a busy node
    # (12 of 16 vCPUs in use since the first arrival) and an idle one. With the earlier rule
    # (busy_above=0.1) an idle node waits as ESG without the estimate.
    policy = EsgPolicy(pricing=PRICES, busy_above=busy_above)
    busy = (node("n0", vcpu=16, free_vcpu=free_vcpu, gpu_units=(7,)),)
    j0 = job(0, start_s=0.0, slo_s=1.0)
    assert isinstance(policy.on_event(Arrival(j0), _snap(0.0, [j0], nodes=busy))[0], WakeUp)
    j1 = job(1, start_s=1.0, slo_s=1.0)  # j0 has been served meanwhile
    [action] = policy.on_event(Arrival(j1), _snap(1.0, [j1], nodes=busy))
    if waits:
        assert isinstance(action, WakeUp)
    else:
        assert isinstance(action, Dispatch) and action.config == CPU1
        assert action.job_ids == ("j1",)


def test_the_second_job_completes_the_pair() -> None:
    j0, j1 = job(0, slo_s=1.0), job(1, start_s=0.1, slo_s=1.0)
    actions = _policy().on_event(Arrival(j1), _snap(0.1, [j0, j1]))
    [dispatch] = _dispatches(actions)
    assert (dispatch.config, dispatch.job_ids) == (PAIR, ("j0", "j1"))
    assert dispatch.plan == {"f": PAIR}


def test_when_the_wait_is_over_the_best_plan_runnable_now_goes() -> None:
    # At 0.88975 s: budget = 110.25 ms. PAIR (1.1 * 150 ms) no longer fits; CPU1 (110) does.
    j0 = job(0, slo_s=1.0)
    [dispatch] = _dispatches(_policy().on_event(Timer(), _snap(0.88975, [j0])))
    assert (dispatch.config, dispatch.job_ids) == (CPU1, ("j0",))
    # 5 ms later only CPU4 (1.1 * 40 ms) meets the budget with the margin: speed is bought.
    [dispatch] = _dispatches(_policy().on_event(Timer(), _snap(0.89475, [j0])))
    assert dispatch.config == CPU4


@pytest.mark.parametrize(
    ("slo_s", "expected"),
    [
        (0.045, CPU4),  # 45 ms: CPU1 and PAIR are too slow; CPU4 ($0.16) beats GPU1 ($0.22)
        (0.030, GPU1),  # 30 ms: only GPU1 (20 ms) fits
    ],
)
def test_tight_budgets_buy_speed(slo_s: float, expected: Config) -> None:
    # Two jobs queued so that no waiting is involved; batch-1 plans: one dispatch per job.
    jobs = [job(0, slo_s=slo_s), job(1, slo_s=slo_s)]
    dispatches = _dispatches(_policy().on_event(Timer(), _snap(0.0, jobs, slo_s=slo_s)))
    assert [d.config for d in dispatches] == [expected, expected]
    assert [d.gpu for d in dispatches] == [0 if expected.vgpu else None] * 2
    assert [d.job_ids for d in dispatches] == [("j0",), ("j1",)]


def test_late_requests_run_cheap_unless_told_to_run_fast() -> None:
    # 10 ms left, the fastest plan takes 20 ms: these requests are late whatever happens.
    jobs = [job(0, slo_s=0.01), job(1, slo_s=0.01)]
    snap = _snap(0.0, jobs, slo_s=0.01)
    # Default: the cheapest plan runnable now, PAIR ($0.075) for both jobs in one batch.
    [cheap] = _dispatches(_policy().on_event(Timer(), snap))
    assert (cheap.config, cheap.job_ids) == (PAIR, ("j0", "j1"))
    # late="fastest": the fastest plan, GPU1, once per job.
    fast = _dispatches(EsgPolicy(pricing=PRICES, late="fastest").on_event(Timer(), snap))
    assert [d.config for d in fast] == [GPU1, GPU1]


@pytest.mark.parametrize(
    ("left_ms", "expected"),
    [
        (45.0, GPU1),  # a's budget 45 - 50 < 0, but 20 + 20 <= 45: run fast to win time back
        (35.0, PAIR),  # 35 < 20 + 20: late whatever happens, run cheap
    ],
)
def test_a_blown_group_budget_runs_fast_while_the_slo_is_still_reachable(
    left_ms: float, expected: Config
) -> None:
    # a -> b, one function per group; both have PROFILE's table (fastest 20 ms each), so the
    # 100 ms SLO is split 50/50 and a's group must leave 50 ms for b's.
    wf = Workflow.from_edges("app", ["a", "b"], [("a", "b")], slo_s=0.1)
    profiles = [Profile(f, PROFILE.latency_ms) for f in "ab"]
    start = left_ms / 1000.0 - 0.1  # the requests arrived this long before now = 0
    jobs = [job(i, function="a", start_s=start, enqueued_s=0.0, slo_s=0.1) for i in range(2)]
    snap = snapshot(
        nodes=[node("n0", gpu_units=(7,))], jobs=jobs, workflows=[wf], profiles=profiles
    )
    dispatches = _dispatches(EsgPolicy(pricing=PRICES, group_size=1).on_event(Timer(), snap))
    assert dispatches[0].config == expected


def test_with_cold_starts_a_warm_configuration_wins_when_a_cold_one_cannot_make_it() -> None:
    warm_node = node("n0", warm={("f", CPU4): 1})
    jobs = [job(0, slo_s=0.3), job(1, slo_s=0.3)]
    snap = _snap(0.0, jobs, slo_s=0.3, nodes=(warm_node,))
    policy = EsgPolicy(pricing=PRICES, cold_start_ms=500.0)
    # 300 ms: any cold plan needs 500 ms more; the warm CPU4 (40 ms) fits. Without the cold
    # start setting, PAIR ($0.075, 150 ms) would be chosen.
    assert _dispatches(policy.on_event(Timer(), snap))[0].config == CPU4
    assert _dispatches(_policy().on_event(Timer(), snap))[0].config == PAIR
    # 1 s: PAIR fits even after a 500 ms cold start, but its start holds a vCPU for 500 ms:
    # $0.075 + 1 * 0.5 / 2 = $0.325 per request against the warm CPU4's $0.160.
    relaxed = _snap(0.0, [job(0, slo_s=1.0), job(1, slo_s=1.0)], nodes=(warm_node,))
    assert _dispatches(policy.on_event(Timer(), relaxed))[0].config == CPU4
    # With a 50 ms cold start PAIR costs $0.075 + 0.05 / 2 = $0.100 per request and wins.
    quick_start = EsgPolicy(pricing=PRICES, cold_start_ms=50.0)
    assert _dispatches(quick_start.on_event(Timer(), relaxed))[0].config == PAIR


def test_a_stage_that_cannot_make_it_runs_where_it_finishes_first_cold_starts_counted() -> None:
    # As the blown-group-budget case above with 45 ms left (a's budget is already missed, the
    # SLO still reachable: fastest plans), but cold starts take 500 ms and a CPU1 sandbox of a
    # is warm: cold GPU1 would end after 520 ms, the warm CPU1 after 100 ms. CPU1 runs.
    wf = Workflow.from_edges("app", ["a", "b"], [("a", "b")], slo_s=0.1)
    profiles = [Profile(f, PROFILE.latency_ms) for f in "ab"]
    start = 0.045 - 0.1
    jobs = [job(i, function="a", start_s=start, enqueued_s=0.0, slo_s=0.1) for i in range(2)]
    policy = EsgPolicy(pricing=PRICES, group_size=1, cold_start_ms=500.0)
    warm = node("n0", gpu_units=(7,), warm={("a", CPU1): 2})
    snap = snapshot(nodes=[warm], jobs=jobs, workflows=[wf], profiles=profiles)
    assert [d.config for d in _dispatches(policy.on_event(Timer(), snap))] == [CPU1, CPU1]
    # Nothing warm: every plan pays the same cold start, and the fastest, GPU1, runs.
    cold = snapshot(nodes=[node("n0", gpu_units=(7,))], jobs=jobs, workflows=[wf],
                    profiles=profiles)
    assert {d.config for d in _dispatches(policy.on_event(Timer(), cold))} == {GPU1}


def test_late_requests_run_on_a_warm_sandbox_before_starting_a_cheaper_one() -> None:
    # 10 ms left: late whatever happens. PAIR is the cheapest plan but would need a 500 ms
    # cold start; a CPU4 sandbox is warm: the late requests take it.
    warm_node = node("n0", vcpu=16, gpu_units=(7,), warm={("f", CPU4): 1})
    jobs = [job(0, slo_s=0.01), job(1, slo_s=0.01)]
    snap = _snap(0.0, jobs, slo_s=0.01, nodes=(warm_node,))
    policy = EsgPolicy(pricing=PRICES, cold_start_ms=500.0)
    assert _dispatches(policy.on_event(Timer(), snap))[0].config == CPU4
    # Without a cold-start estimate every plan is as ready as any other: PAIR, the cheapest.
    assert _dispatches(_policy().on_event(Timer(), snap))[0].config == PAIR


def test_the_measured_overhead_of_a_batch_is_reserved_from_the_budget() -> None:
    # 115 ms, batch 1: CPU1 plans 1.1 * 100 = 110 ms and fits. With 10 ms of overhead per
    # batch it would end at 120 ms: CPU4 (1.1 * 40 + 10 ms) runs instead.
    jobs = [job(0, slo_s=0.115), job(1, slo_s=0.115)]
    bare = {"f": FunctionLimits(max_batch=1)}
    slow = {"f": FunctionLimits(max_batch=1, overhead_ms=10.0)}
    plain = _dispatches(_policy().on_event(Timer(), _snap(0.0, jobs, slo_s=0.115, limits=bare)))
    assert {d.config for d in plain} == {CPU1}
    costly = _snap(0.0, jobs, slo_s=0.115, limits=slow)
    assert {d.config for d in _dispatches(_policy().on_event(Timer(), costly))} == {CPU4}
    # One policy that sees the overhead change (the daemon measures it as it goes) follows it.
    policy = _policy()
    for limits, config in ((bare, CPU1), (slow, CPU4), (bare, CPU1)):
        seen = _snap(0.0, jobs, slo_s=0.115, limits=limits)
        assert {d.config for d in _dispatches(policy.on_event(Timer(), seen))} == {config}


def _uncapped_then_capped(
    jobs: list[Job], at: NodeView, *, max_batch: int, cold_start_ms: float, slo_s: float = 1.0,
    now_s: float = 0.0, policy: EsgPolicy | None = None,
) -> tuple[Config | None, Config | None]:
    """The configuration ESG dispatches first (None: nothing) on node `at` without an instance
    cap, then with a cap of one."""
    chosen: list[Config | None] = []
    for cap in (None, 1):
        limits = {"f": FunctionLimits(max_batch=max_batch, max_instances=cap,
                                      cold_start_ms=cold_start_ms)}
        snap = _snap(now_s, jobs, slo_s=slo_s, nodes=(at,), limits=limits)
        dispatches = _dispatches((policy or _policy()).on_event(Timer(), snap))
        chosen.append(dispatches[0].config if dispatches else None)
    return chosen[0], chosen[1]


def test_at_the_instance_cap_a_cold_start_is_charged_the_restart_of_the_sandbox_it_stops() -> None:
    # A warm CPU4 sandbox ($0.160 per request), cold starts of 100 ms. PAIR cold costs $0.075
    # + 1 * 0.1 / 2 = $0.125 and wins; at an instance cap of one it would stop the CPU4 sandbox,
    # which costs another 100 ms start later: $0.175, and the warm CPU4 stays.
    warm_node = node("n0", vcpu=16, gpu_units=(7,), warm={("f", CPU4): 1})
    jobs = [job(0, slo_s=1.0), job(1, slo_s=1.0)]
    assert _uncapped_then_capped(jobs, warm_node, max_batch=2, cold_start_ms=100.0) == (
        PAIR, CPU4)


def test_at_the_instance_cap_a_shape_that_only_meets_the_budget_warm_does_not_evict() -> None:
    # 60 ms left, a warm idle CPU1 sandbox (110 ms planned: too slow), cold starts of 240 ms.
    # CPU4 meets the budget warm (44 ms) but not cold (284 ms). With room for another sandbox
    # ESG starts it anyway (later requests want that configuration); at an instance cap of one
    # that start would stop the CPU1 sandbox, and the next batch could want it back: the late
    # rules run the warm CPU1 instead (it finishes first, cold start counted).
    warm_node = node("n0", vcpu=16, gpu_units=(0,), warm={("f", CPU1): 1})
    jobs = [job(0, slo_s=0.06)]
    assert _uncapped_then_capped(jobs, warm_node, max_batch=1, cold_start_ms=240.0,
                                 slo_s=0.06) == (CPU4, CPU1)


def test_a_late_batch_at_the_instance_cap_runs_the_idle_shape_not_a_cheaper_cold_one() -> None:
    # Two jobs already late. The two cheapest plans (PAIR $0.075, CPU1 $0.100) are of the
    # 1-vCPU shape, cold; the idle sandbox is CPU4's. With room for another sandbox the late
    # rule runs the cheapest, PAIR; at an instance cap of one PAIR's start would stop the CPU4
    # sandbox, so CPU4 runs.
    warm_node = node("n0", vcpu=16, gpu_units=(0,), warm={("f", CPU4): 1})
    jobs = [job(0, slo_s=0.001), job(1, slo_s=0.001)]
    assert _uncapped_then_capped(jobs, warm_node, max_batch=2, cold_start_ms=100.0,
                                 slo_s=0.001, now_s=0.01,
                                 policy=EsgPolicy(pricing=PRICES, k=2)) == (PAIR, CPU4)


def test_at_the_instance_cap_a_late_batch_waits_for_its_idle_shape_to_fit() -> None:
    # 15 ms left: late whatever runs (GPU1 takes 20 ms). The idle CPU4 sandbox needs 4 vCPUs
    # and 2 are free, so the late rule runs the cheapest plan that fits, CPU1, cold. At an
    # instance cap of one that start stops the CPU4 sandbox: the batch waits for the next
    # completion instead.
    busy_node = node("n0", vcpu=16, free_vcpu=2, gpu_units=(0,), warm={("f", CPU4): 1})
    jobs = [job(0, slo_s=0.015)]
    assert _uncapped_then_capped(jobs, busy_node, max_batch=1, cold_start_ms=240.0,
                                 slo_s=0.015) == (CPU1, None)


def test_the_sandbox_that_reaches_the_cap_is_priced_for_the_jobs_queued() -> None:
    # One job, 300 ms left, cold starts of 500 ms: no plan is ready, but PAIR (165 ms planned)
    # and CPU1 (110 ms) meet the budget warm, so one starts at once. For a full batch PAIR is
    # the cheaper ($0.075 against $0.100), and without a cap it runs (later requests may fill
    # it). At an instance cap of one the sandbox started now serves every later batch: for the
    # one job there PAIR costs $0.150 and takes 150 ms, so CPU1 runs.
    jobs = [job(0, slo_s=0.3)]
    empty = node("n0", vcpu=16, gpu_units=(0,))
    assert _uncapped_then_capped(jobs, empty, max_batch=2, cold_start_ms=500.0,
                                 slo_s=0.3) == (PAIR, CPU1)


def test_nothing_fits_keeps_the_jobs_queued() -> None:
    full = (node("n0", vcpu=16, free_vcpu=0, gpu_units=(0,)),)
    jobs = [job(0), job(1)]
    assert _policy().on_event(Timer(), _snap(0.0, jobs, nodes=full)) == []


def test_the_predecessors_node_is_preferred() -> None:
    wf = Workflow.from_edges("app", ["a", "b"], [("a", "b")], slo_s=2.0)
    profiles = [synthetic_profile("a", 40.0), synthetic_profile("b", 60.0)]
    jobs = [job(i, function="b", slo_s=2.0, input_node="n7") for i in range(8)]
    snap = snapshot(nodes=cluster(), jobs=jobs, workflows=[wf], profiles=profiles)
    dispatches = _dispatches(EsgPolicy().on_event(Timer(), snap))
    assert dispatches and dispatches[0].node == "n7"


def test_the_whole_group_is_planned_within_its_budget() -> None:
    # a -> b -> c, 300 ms SLO, one group of three: the plan for a covers b and c too.
    wf = Workflow.from_edges("app", ["a", "b", "c"], [("a", "b"), ("b", "c")], slo_s=0.3)
    profiles = [synthetic_profile(f, base) for f, base in (("a", 40.0), ("b", 120.0), ("c", 25.0))]
    jobs = [job(i, function="a", slo_s=0.3) for i in range(8)]
    snap = snapshot(nodes=cluster(), jobs=jobs, workflows=[wf], profiles=profiles)
    [dispatch, *_] = _dispatches(EsgPolicy().on_event(Timer(), snap))
    assert set(dispatch.plan) == {"a", "b", "c"}
    assert dispatch.plan["a"] == dispatch.config
    total_ms = sum(p.latency_ms[dispatch.plan[f]] for p, f in zip(profiles, "abc", strict=True))
    assert total_ms <= 300.0


def test_a_function_without_a_profile_runs_fcfs_at_its_limits() -> None:
    # The daemon's case: one CPU-only node, a freshly deployed function, 5 jobs, max_batch 4.
    limits = {"x": FunctionLimits(max_batch=4, max_queue_delay_s=0.01, vcpu=2)}
    jobs = [job(i, function="x", start_s=1.0) for i in range(5)]
    snap = snapshot(
        now_s=1.0, nodes=[node("local", vcpu=4, gpu_units=())], jobs=jobs, limits=limits
    )
    actions = EsgPolicy().on_event(Arrival(jobs[-1]), snap)
    assert actions == [
        Dispatch("app", "x", ("j0", "j1", "j2", "j3"), Config(4, 2), "local"),
        WakeUp(1.01),  # the fifth waits up to max_queue_delay_s for company
    ]


def test_a_call_without_a_deadline_runs_at_the_functions_limits_though_it_has_a_profile() -> None:
    # A function without an SLO called alone: nothing to plan for, so its faasd.yaml batching
    # applies (the profile would have picked PAIR at 1 vCPU and dispatched the lone job).
    limits = {"f": FunctionLimits(max_batch=4, max_queue_delay_s=0.01, vcpu=2)}
    jobs = [job(i, start_s=1.0, slo_s=math.inf) for i in range(5)]
    actions = _policy().on_event(Arrival(jobs[-1]), _snap(1.0, jobs, limits=limits))
    assert actions == [
        Dispatch("app", "f", ("j0", "j1", "j2", "j3"), Config(4, 2), "n0"),
        WakeUp(1.01),
    ]
    # The same jobs with a deadline are planned from the profile.
    timed = [job(i, start_s=1.0, slo_s=1.0) for i in range(5)]
    planned = _dispatches(_policy().on_event(Arrival(timed[-1]), _snap(1.0, timed, limits=limits)))
    assert planned and all(d.config in PROFILE.latency_ms for d in planned)


def test_the_daemon_bounds_batch_and_has_no_gpu() -> None:
    # GPU configurations are dropped (no GPU on the node), batches above max_batch too.
    profile = synthetic_profile("x", 30.0)
    limits = {"x": FunctionLimits(max_batch=2, vcpu=2)}
    jobs = [job(i, function="x", slo_s=0.5) for i in range(6)]
    snap = snapshot(
        nodes=[node("local", vcpu=4, gpu_units=())], jobs=jobs, profiles=[profile], limits=limits
    )
    dispatches = _dispatches(EsgPolicy().on_event(Timer(), snap))
    assert dispatches
    for d in dispatches:
        assert d.config.vgpu == 0 and d.config.batch <= 2 and d.config.vcpu <= 4
    assert sum(d.config.vcpu for d in dispatches) <= 4  # never more than the node has


def test_max_instances_caps_concurrent_batches() -> None:
    limits = {"f": FunctionLimits(max_batch=2, max_instances=1)}
    jobs = [job(i) for i in range(4)]
    busy = _snap(0.0, jobs, limits=limits, running={"f": 1})
    assert _policy().on_event(Timer(), busy) == []
    idle = _snap(0.0, jobs, limits=limits)
    assert len(_dispatches(_policy().on_event(Timer(), idle))) == 1


def _random_snapshot(rng: random.Random, now_s: float) -> Snapshot:
    names = ["a", "b", "c", "d"]
    wf = Workflow.from_edges("app", names, [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")], 0.4)
    profiles = [synthetic_profile(f, rng.uniform(10, 100), rng=rng, noise=0.1) for f in names]
    jobs = [
        job(
            i,
            function=rng.choice(names),
            start_s=now_s - rng.uniform(0, 0.2),
            slo_s=0.4,
            input_node=f"n{rng.randrange(16)}",
        )
        for i in range(rng.randrange(1, 40))
    ]
    nodes = [
        node(f"n{i}", free_vcpu=rng.randrange(0, 17), gpu_units=(rng.randrange(0, 8),))
        for i in range(16)
    ]
    return snapshot(now_s=now_s, nodes=nodes, jobs=jobs, workflows=[wf], profiles=profiles)


@pytest.mark.parametrize("seed", range(12))
def test_actions_never_over_commit_and_are_deterministic(seed: int) -> None:
    snap = _random_snapshot(random.Random(seed), now_s=1.0)
    policy = EsgPolicy()
    actions = policy.on_event(Timer(), snap)
    # A fresh policy (empty caches) decides the same: caching never changes an answer.
    assert EsgPolicy().on_event(Timer(), snap) == actions
    assert policy.on_event(Timer(), snap) == actions
    wakeups = [a for a in actions if isinstance(a, WakeUp)]
    assert len(wakeups) <= 1 and all(w.at_s > snap.now_s for w in wakeups)
    after = snap
    for d in _dispatches(actions):
        queued = {j.id for j in after.queues[(d.app, d.function)]}
        assert set(d.job_ids) <= queued
        after = after.reserve(d)
        view = after.node(d.node)
        assert view.free_vcpu >= 0 and all(g.free_units >= 0 for g in view.gpus)
        assert d.config.vgpu in (0, 1, 2, 3, 4, 7)


def test_completion_events_retry_what_did_not_fit() -> None:
    jobs = [job(0), job(1)]
    full = (node("n0", vcpu=16, free_vcpu=0, gpu_units=(0,)),)
    policy = _policy()
    assert policy.on_event(Timer(), _snap(0.0, jobs, nodes=full)) == []
    done = Dispatch("other", "g", ("z",), Config(1, 16), "n0")
    freed = _snap(0.05, jobs)
    assert _dispatches(policy.on_event(Completion(done, exec_s=0.05), freed))


# ---------------------------------------------------------------- what the planned latency includes


def test_a_per_function_cold_start_estimate_in_the_limits_is_planned_for() -> None:
    # As the cold_start_ms setting above, but the estimate comes with the function's limits.
    warm_node = node("n0", warm={("f", CPU4): 1})
    limits = {"f": FunctionLimits(max_batch=2, cold_start_ms=500.0)}
    jobs = [job(0, slo_s=0.3), job(1, slo_s=0.3)]
    snap = _snap(0.0, jobs, slo_s=0.3, nodes=(warm_node,), limits=limits)
    assert _dispatches(_policy().on_event(Timer(), snap))[0].config == CPU4
    # The limits' estimate wins over the policy's setting.
    quick = {"f": FunctionLimits(max_batch=2, cold_start_ms=0.0)}
    snap = _snap(0.0, jobs, slo_s=0.3, nodes=(warm_node,), limits=quick)
    slow_setting = EsgPolicy(pricing=PRICES, cold_start_ms=500.0)
    assert _dispatches(slow_setting.on_event(Timer(), snap))[0].config == PAIR


def test_a_gpu_slice_costs_its_extra_cold_start() -> None:
    # 43 ms SLO, nothing warm, CPU cold start 0, GPU extra 100 ms. With the margin only GPU1
    # fits (1.1 * 20 ms; see the next test), but cold it needs 122 ms; no plan meets the
    # budget with margin and setup, so the cheapest plan that meets it on warm means runs:
    # CPU4 (40 ms <= 43).
    limits = {"f": FunctionLimits(max_batch=2, cold_start_ms=0.0, cold_start_gpu_ms=100.0)}
    jobs = [job(0, slo_s=0.043), job(1, slo_s=0.043)]
    snap = _snap(0.0, jobs, slo_s=0.043, limits=limits)
    assert {d.config for d in _dispatches(_policy().on_event(Timer(), snap))} == {CPU4}
    # A warm GPU1 sandbox on the node: no cold start, GPU1 it is.
    warm_gpu = (node("n0", warm={("f", GPU1): 2}),)
    snap = _snap(0.0, jobs, slo_s=0.043, nodes=warm_gpu, limits=limits)
    assert {d.config for d in _dispatches(_policy().on_event(Timer(), snap))} == {GPU1}


def test_the_latency_margin_buys_speed_where_the_mean_is_just_inside_the_budget() -> None:
    # 43 ms: CPU4's mean (40 ms) fits, but 1.1 * 40 = 44 ms does not: GPU1 (22 ms) runs.
    jobs = [job(0, slo_s=0.043), job(1, slo_s=0.043)]
    snap = _snap(0.0, jobs, slo_s=0.043)
    assert {d.config for d in _dispatches(_policy().on_event(Timer(), snap))} == {GPU1}
    exact = EsgPolicy(pricing=PRICES, latency_margin=0.0)
    assert {d.config for d in _dispatches(exact.on_event(Timer(), snap))} == {CPU4}


def _remote_job(i: int, slo_s: float, nbytes: int, where: str) -> Job:
    return dataclasses.replace(job(i, slo_s=slo_s, input_node=where), input_bytes=nbytes)


def test_moving_the_inputs_is_part_of_the_planned_latency() -> None:
    # The inputs (10 MB each) are on n1, which is full; n0 must pull them over 10 GbE:
    # 0.2 + 10e6 / 1.25e9 s = 8.2 ms. 50 ms SLO: CPU4 needs 1.1 * 40 + 8.2 = 52.2 ms (too
    # slow), GPU1 1.1 * 20 + 8.2 = 30.2 ms.
    nodes = (node("n0"), node("n1", free_vcpu=0, gpu_units=(0,)))
    jobs = [_remote_job(i, 0.05, 10_000_000, "n1") for i in range(2)]
    snap = _snap(0.0, jobs, slo_s=0.05, nodes=nodes)
    assert {(d.config, d.node) for d in _dispatches(_policy().on_event(Timer(), snap))} == {
        (GPU1, "n0")
    }
    # Inputs that are small to move: CPU4 on n0 (44 + 0.2 ms).
    light = [_remote_job(i, 0.05, 1_000, "n1") for i in range(2)]
    snap = _snap(0.0, light, slo_s=0.05, nodes=nodes)
    assert {d.config for d in _dispatches(_policy().on_event(Timer(), snap))} == {CPU4}
    # With room on n1 the data stays put: CPU4 on n1.
    roomy = (node("n0"), node("n1"))
    snap = _snap(0.0, jobs, slo_s=0.05, nodes=roomy)
    assert {(d.config, d.node) for d in _dispatches(_policy().on_event(Timer(), snap))} == {
        (CPU4, "n1")
    }


def test_when_the_vcpus_run_out_the_next_plan_that_fits_runs() -> None:
    # Only 2 vCPUs free; the CPU configurations want 4. Even with K = 1 (the priority queue
    # holds only the cheapest plan, CPU4) the policy dispatches the GPU plan that fits now
    # instead of leaving the jobs queued.
    cpu4, pair4 = Config(1, 4), Config(2, 4)
    profile = Profile("f", {cpu4: 40.0, pair4: 60.0, GPU1: 20.0})
    snap = snapshot(
        nodes=[node("n0", free_vcpu=2)],
        jobs=[job(0, slo_s=0.2), job(1, slo_s=0.2)],
        workflows=[Workflow.single("f", 0.2)],
        profiles=[profile],
    )
    dispatches = _dispatches(EsgPolicy(pricing=PRICES, k=1).on_event(Timer(), snap))
    assert [d.config for d in dispatches] == [GPU1, GPU1]  # one vCPU and one unit each


@pytest.mark.parametrize(
    "settings",
    [
        {"latency_margin": -0.1},
        {"cold_start_gpu_ms": -1.0},
        {"net_bytes_per_s": 0.0},
        {"net_latency_ms": -1.0},
        {"slo_split": "evenly"},
    ],
)
def test_bad_planning_settings_are_refused(settings: dict[str, float | str]) -> None:
    with pytest.raises(ValueError):
        EsgPolicy(**settings)  # type: ignore[arg-type]


class _Forgetful(EsgPolicy):
    """ESG that works out every stage's shape and every queue head's setups afresh."""

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        self._shapes.clear()
        self._overhead_paths.clear()
        self._setups.clear()
        return super().on_event(event, snapshot)


class _Counting(EsgPolicy):
    """ESG as it is, counting the decisions where no job could join a batch in time."""

    skipped = 0

    def _no_job_in_time(self, stage: Any, snapshot: Snapshot) -> bool:
        skip = super()._no_job_in_time(stage, snapshot)
        self.skipped += skip
        return skip


class _AlwaysPlansTheFullBatch(EsgPolicy):
    """ESG that searches for the batch it would like even when no job can join it in time."""

    def _no_job_in_time(self, stage: Any, snapshot: Snapshot) -> bool:
        return False


@pytest.mark.parametrize(("load", "slo"), [("light", "strict"), ("heavy", "moderate")])
@pytest.mark.parametrize("other", [_Forgetful, _AlwaysPlansTheFullBatch])
def test_what_esg_keeps_and_skips_never_changes_a_decision(
    load: str, slo: str, other: type[EsgPolicy]
) -> None:
    spec = ClusterSpec(nodes=1)
    scenario = make_scenario(load, slo, cluster=spec, seed=2, duration_s=0.4, warmup_s=0.2)

    def batches(policy: EsgPolicy) -> list[tuple[str, Config, int, float]]:
        ticks = itertools.count()
        record = Simulation(scenario, policy, spec, timer=lambda: next(ticks) * 1e-5).run()
        return [(b.function, b.config, b.jobs, b.start_s) for b in record.batches]

    kept = _Counting()
    ran = batches(kept)
    assert len(ran) > 20 and kept._shapes and kept._setups and kept.skipped > 0
    assert batches(other()) == ran
