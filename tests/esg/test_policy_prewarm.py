"""The baselines' own pre-warming and warm-aware placement, on hand-built snapshots."""

from __future__ import annotations

import pytest

from esg.model import Config, Profile, Workflow
from esg.policies.infless import InflessPolicy, Lsth
from esg.policy import Arrival, Dispatch, FunctionLimits, Prewarm, WakeUp
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


def _feed(policy: InflessPolicy, times: list[float], warm: int = 0) -> list[list[object]]:
    answers = []
    for i, t in enumerate(times):
        j = job(i, start_s=t)
        snap = snapshot(now_s=t, nodes=[node("n0", warm={("f", CPU1): warm})], jobs=[j],
                        workflows=[WF], profiles=[PROFILE], limits=LIMITS)
        answers.append(list(policy.on_event(Arrival(j), snap)))
    return answers


def test_infless_prewarms_a_spare_when_jobs_come_faster_than_a_cold_start() -> None:
    # Gaps of 10 ms against a 250 ms cold start; every call's job takes the only sandbox.
    answers = _feed(InflessPolicy(), [0.0, 0.01, 0.02, 0.03, 0.04])
    prewarms = [[a for a in answer if isinstance(a, Prewarm)] for answer in answers]
    # Three gaps make a histogram; the fifth call finds that pre-warm still starting.
    assert [len(p) for p in prewarms] == [0, 0, 0, 1, 0]
    assert prewarms[3][0] == Prewarm("f", CPU1, "n0")


def test_infless_does_not_prewarm_while_an_idle_sandbox_is_left() -> None:
    answers = _feed(InflessPolicy(), [0.0, 0.01, 0.02, 0.03, 0.04], warm=2)
    assert not any(isinstance(a, Prewarm) for answer in answers for a in answer)


def test_infless_prewarms_a_sparse_queue_just_before_its_window_opens() -> None:
    # Gaps of 2 s: the window (2 s) is longer than the cold start, so the pre-warm is due at
    # last arrival + 2 - 0.25 s, asked for as a wake-up.
    answers = _feed(InflessPolicy(), [0.0, 2.0, 4.0, 6.0])
    assert not any(isinstance(a, Prewarm) for answer in answers for a in answer)
    assert min(a.at_s for a in answers[-1] if isinstance(a, WakeUp)) == pytest.approx(7.75)


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
