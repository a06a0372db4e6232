"""The baselines' own pre-warming and warm-aware placement, on hand-built snapshots."""

from __future__ import annotations

from dataclasses import replace

import pytest

from esg.model import Config, Profile, Workflow
from esg.policies.aquatope import AquatopePolicy, RatePredictor
from esg.policies.infless import InflessPolicy, Lsth
from esg.policies.orion import OrionPolicy
from esg.policy import Arrival, Dispatch, FunctionLimits, Prewarm, Timer, WakeUp
from esg.sim.cluster import ClusterSpec
from esg.sim.engine import EngineSettings, Simulation
from esg.sim.execution import ExecutionModel
from esg.sim.workloads import custom_scenario
from esg.testing import job, node, snapshot

CPU1 = Config(1, 2, 0)
PROFILE = Profile("f", {CPU1: 20.0})
LIMITS = {"f": FunctionLimits(cold_start_ms=250.0)}
WF = Workflow("app", ("f",), (), slo_s=1.0)


@pytest.mark.parametrize(
    ("gaps", "window"),
    [
        ([0.2] * 10, 0.2),
        # Long history of 0.01 s gaps, then 50 calm ones: long p5 0.01, short p5 1.0.
        ([0.01] * 60 + [1.0] * 50, (0.01 + 1.0) / 2),
        # A calm history, then a burst: both percentiles fall to the burst's gaps.
        ([1.0] * 100 + [0.01] * 50, 0.01),
    ],
)
def test_the_lsth_window_is_the_mean_of_the_long_and_short_head_percentiles(
    gaps: list[float], window: float
) -> None:
    lsth = Lsth(long_gaps=1000, short_gaps=50)
    t = 0.0
    lsth.observe(t)
    for gap in gaps:
        t += gap
        lsth.observe(t)
    assert lsth.window_s(0.05) == pytest.approx(window)


def _feed(policy: InflessPolicy, times: list[float]) -> list[list[object]]:
    """One job of ("app", "f") arriving at each time, dispatched at once."""
    answers = []
    for i, t in enumerate(times):
        j = job(i, start_s=t)
        snap = snapshot(now_s=t, nodes=[node("n0")], jobs=[j], workflows=[WF],
                        profiles=[PROFILE], limits=LIMITS)
        answers.append(list(policy.on_event(Arrival(j), snap)))
    return answers


def _due(policy: InflessPolicy, at_s: float, warm: int) -> list[object]:
    """The answer to the wake-up at `at_s`, with `warm` idle sandboxes and no batch running."""
    snap = snapshot(now_s=at_s, nodes=[node("n0", warm={("f", CPU1): warm})], workflows=[WF],
                    profiles=[PROFILE], limits=LIMITS)
    snap = replace(snap, queues={("app", "f"): ()})
    return list(policy.on_event(Timer(), snap))


@pytest.mark.parametrize(("warm", "prewarmed"), [(0, [Prewarm("f", CPU1, "n0")]), (1, [])])
def test_infless_prewarms_a_sparse_function_with_nothing_live_as_its_window_opens(
    warm: int, prewarmed: list[Prewarm]
) -> None:
    # Gaps of 2 s: the window (2 s) is longer than the 0.25 s cold start, so the pre-warm is
    # due at last arrival + 2 - 0.25 s, asked for as a wake-up (no pre-warm before).
    policy = InflessPolicy()
    answers = _feed(policy, [0.0, 2.0, 4.0, 6.0])
    assert not any(isinstance(a, Prewarm) for answer in answers for a in answer)
    assert min(a.at_s for a in answers[-1] if isinstance(a, WakeUp)) == pytest.approx(7.75)
    # At 7.75 s: pre-warmed if keep-alive let the sandbox go, not while one is warm.
    assert [a for a in _due(policy, 7.75, warm) if isinstance(a, Prewarm)] == prewarmed


def test_infless_does_not_prewarm_a_busy_function_whose_jobs_come_faster_than_a_start() -> None:
    # Gaps of 10 ms against a 250 ms cold start: the window is past at every arrival, and
    # each arrival's batch is running, so the function is live.
    answers = _feed(InflessPolicy(), [0.0, 0.01, 0.02, 0.03, 0.04])
    assert not any(isinstance(a, Prewarm | WakeUp) for answer in answers for a in answer)


def test_infless_places_on_a_warm_node_before_a_better_fit() -> None:
    # CRE prefers the fuller node n1; the warm sandbox on n0 wins first.
    j = job(0)
    nodes = [node("n0", warm={("f", CPU1): 1}), node("n1", free_vcpu=4)]
    snap = snapshot(nodes=nodes, jobs=[j], workflows=[WF], profiles=[PROFILE], limits=LIMITS)
    [dispatch] = [a for a in InflessPolicy(prewarm=False).on_event(Arrival(j), snap)
                  if isinstance(a, Dispatch)]
    assert dispatch.node == "n0"
    cold = snapshot(nodes=[node("n0"), node("n1", free_vcpu=4)], jobs=[j], workflows=[WF],
                    profiles=[PROFILE], limits=LIMITS)
    [dispatch] = [a for a in InflessPolicy(prewarm=False).on_event(Arrival(j), cold)
                  if isinstance(a, Dispatch)]
    assert dispatch.node == "n1"


# ---------------------------------------------------------------- Aquatope


def test_aquatope_predictor_follows_a_trend_a_level_alone_would_miss() -> None:
    steady = RatePredictor(window_s=0.25, history=40)
    ramp = RatePredictor(window_s=0.25, history=40)
    for i in range(8):
        steady.observe(i * 0.25, 10)
        ramp.observe(i * 0.25, 10 * (i + 1))
    # 10 per 0.25 s window: 40 rps, no error, so no margin either.
    assert steady.mean_rps(2.0) == pytest.approx(40.0)
    assert steady.upper_rps(2.0, z=1.64) == pytest.approx(40.0)
    # 10, 20, ..., 80: Holt's trend forecasts ~90 next (360 rps); the last count alone
    # says 320; the error margin lifts the upper bound above the forecast.
    assert ramp.mean_rps(2.0) == pytest.approx(360.0, rel=0.01)
    assert ramp.upper_rps(2.0, z=1.64) > ramp.mean_rps(2.0)


AQ_PROFILE = Profile("f", {CPU1: 20.0, Config(4, 2, 0): 40.0})


def _drive(policy: AquatopePolicy, rps: float, seconds: float, warm: int = 0) -> list[object]:
    """Every action of every answer to `rps` arrivals a second for `seconds`."""
    answer: list[object] = []
    for i in range(int(rps * seconds)):
        t = i / rps
        j = job(i, start_s=t)
        snap = snapshot(now_s=t, nodes=[node("n0", warm={("f", CPU1): warm})], jobs=[j],
                        workflows=[WF], profiles=[AQ_PROFILE], limits=LIMITS)
        answer += policy.on_event(Arrival(j), snap)
    return answer


def test_aquatope_can_retrain_its_search_at_the_rate_the_workload_has() -> None:
    policy = AquatopePolicy(prewarm=False, retrain_drift=0.5)
    _drive(policy, rps=400.0, seconds=2.5)
    # First searched at the nominal 50 rps, then again once the predictor saw ~400.
    assert policy._trained_rps["app"] == pytest.approx(400.0, rel=0.1)
    steady = AquatopePolicy(prewarm=False, nominal_rps=400.0, retrain_drift=0.5)
    _drive(steady, rps=400.0, seconds=2.5)
    assert steady._trained_rps["app"] == 400.0  # within the drift: no retraining
    frozen = AquatopePolicy(prewarm=False)  # the default: searched once, as ESG ran it
    _drive(frozen, rps=400.0, seconds=2.5)
    assert frozen._trained_rps["app"] == 50.0


def test_aquatope_prewarms_the_pool_its_predicted_rate_needs() -> None:
    answer = _drive(AquatopePolicy(), rps=400.0, seconds=1.5)
    prewarms = [a for a in answer if isinstance(a, Prewarm)]
    # Each call sees one sandbox running and none idle (the snapshots do not remember the
    # pre-warms), so the pool is topped up again each time the last ones should be warm.
    assert prewarms and all(p.function == "f" and p.config.batch == 1 for p in prewarms)
    # A pool already larger than any prediction: nothing to pre-warm.
    answer = _drive(AquatopePolicy(), rps=400.0, seconds=1.5, warm=1000)
    assert not any(isinstance(a, Prewarm) for a in answer)


# ---------------------------------------------------------------- Orion


@pytest.mark.parametrize(("a_ms", "lead"), [(300.0, True), (20.0, False)])
def test_orion_prewarms_the_later_stages_a_start_now_can_have_warm_in_time(
    a_ms: float, lead: bool
) -> None:
    chain = Workflow.from_edges("app", ["a", "b"], [("a", "b")], slo_s=1.0)
    profiles = [Profile("a", {CPU1: a_ms}), Profile("b", {CPU1: 30.0})]
    limits = {f: FunctionLimits(cold_start_ms=250.0) for f in "ab"}

    def first_answer(warm: dict[tuple[str, Config], int]) -> list[object]:
        j = job(0, function="a")
        snap = snapshot(nodes=[node("n0", warm=warm)], jobs=[j], workflows=[chain],
                        profiles=profiles, limits=limits)
        return list(OrionPolicy().on_event(Arrival(j), snap))

    answer = first_answer({})
    assert isinstance(answer[0], Dispatch) and answer[0].function == "a"
    # b starts after a's P95, 1.08 x 300 = 324 ms: a 250 ms start now has it warm, so b's
    # sandbox is started while a runs (a, the entry, is not). After 1.08 x 20 ms it could
    # not be, and is not pre-warmed.
    assert answer[1:] == ([Prewarm("b", CPU1, "n0")] if lead else [])
    assert not any(isinstance(a, Prewarm) for a in first_answer({("b", CPU1): 1}))


# ---------------------------------------------------------------- in the simulator


@pytest.mark.parametrize(("prewarm", "warm_tail"), [(True, True), (False, False)])
def test_infless_lsth_turns_sparse_cold_starts_warm_when_keep_alive_is_short(
    prewarm: bool, warm_tail: bool
) -> None:
    # Keep-alive 1 s, arrivals 2 s then 2.5 s apart: every sandbox is gone when the next job
    # comes. The LSTH window (2 s) puts a pre-warm 0.25 s ahead of it, ready at last + 2 s.
    times = [0.0, 2.0, 4.0, 6.0, 8.5, 11.0, 13.5]
    sc = custom_scenario(WF, {"f": {CPU1: 20.0}}, arrivals=times, limits=LIMITS)
    cluster = ClusterSpec(nodes=1, cold_start_cpu_s=0.25, keep_alive_s=1.0)
    settings = EngineSettings(execution=ExecutionModel(noise_sigma=0.0))
    record = Simulation(sc, InflessPolicy(prewarm=prewarm), cluster,
                        timer=lambda: 0.0, settings=settings).run()
    latencies = [r.latency_s for r in record.requests.values()]
    # The first four are cold either way (the LSTH needs three gaps, then one more arrival).
    assert latencies[:4] == pytest.approx([0.27] * 4)
    assert latencies[4:] == pytest.approx([0.02 if warm_tail else 0.27] * 3)
    # One after each of the last four arrivals (the one after 13.5 s waits for nobody).
    assert record.prewarms == (4 if prewarm else 0)


@pytest.mark.parametrize(("prewarm", "latency"), [(True, 0.68), (False, 0.93)])
def test_orion_has_the_next_stage_warm_when_its_predecessor_outlasts_a_cold_start(
    prewarm: bool, latency: float
) -> None:
    # a runs 400 ms after its own 250 ms cold start; b's sandbox, started at 0 s, is warm
    # at 0.25 s, well before b's job comes at 0.65 s: 0.25 + 0.4 + 0.03 s instead of
    # another 0.25 s cold start.
    chain = Workflow.from_edges("app", ["a", "b"], [("a", "b")], slo_s=2.0)
    limits = {f: FunctionLimits(cold_start_ms=250.0) for f in "ab"}
    sc = custom_scenario(chain, {"a": {CPU1: 400.0}, "b": {CPU1: 30.0}}, arrivals=[0.0],
                         limits=limits)
    cluster = ClusterSpec(nodes=1, cold_start_cpu_s=0.25)
    settings = EngineSettings(execution=ExecutionModel(noise_sigma=0.0))
    record = Simulation(sc, OrionPolicy(prewarm=prewarm), cluster, timer=lambda: 0.0,
                        settings=settings).run()
    assert [r.latency_s for r in record.requests.values()] == pytest.approx([latency])
