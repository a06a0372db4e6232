"""The runner's account of where a workflow call's time went (pure)."""

from __future__ import annotations

import pytest

from faasd.workflows.runner import WorkflowResult
from faasd.workflows.spec import Edge, WorkflowSpec


def diamond() -> WorkflowSpec:
    edges = (Edge("pre", "a"), Edge("pre", "b"), Edge("a", "vote"), Edge("b", "vote"))
    return WorkflowSpec("d", 100.0, ("pre", "a", "b", "vote"), edges, {})


def test_the_time_outside_stages_follows_the_path_that_decided_the_end() -> None:
    # pre 0-10; a submitted at 11 (hop 1), done 30; b submitted at 10.5, done 50 (the later
    # side); vote submitted at 52 (hop 2 after b), done 60; answer rendered at 61 (tail 1).
    # Along vote <- b <- pre: 1 + 2 + 0.5 = 3.5 ms; a's hop is on no deciding path.
    result = WorkflowResult(timeline={
        "pre": (0.000, 0.010), "a": (0.011, 0.030), "b": (0.0105, 0.050),
        "vote": (0.052, 0.060)})
    assert result.outside_s(diamond(), 0.061) == pytest.approx(0.0035)


def test_a_call_without_stages_spent_nothing_outside_them() -> None:
    assert WorkflowResult().outside_s(diamond(), 1.0) == 0.0
