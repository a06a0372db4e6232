"""The runner's account of where a workflow call's time went (pure), and a call run again
when a node took a stage's input with it (a gateway that plays the cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faasd.clock import ManualClock
from faasd.cluster.errors import InputLost
from faasd.functions.spec import FunctionSettings, FunctionVersion, TensorSpec
from faasd.gateway import CallResult, Invocation
from faasd.sandbox.items import Item, TensorItem, TensorResult
from faasd.workflows.runner import DeployedWorkflow, StageFailed, WorkflowResult, WorkflowRunner
from faasd.workflows.spec import Edge, WorkflowSpec
from faasd.workflows.wiring import Feed


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


def test_the_time_before_the_source_runs_from_the_handler_to_its_submission() -> None:
    result = WorkflowResult(timeline={"pre": (0.0125, 0.020), "a": (0.021, 0.030)})
    assert result.before_s(diamond(), 0.010) == pytest.approx(0.0025)
    # no source stage (the call failed before it): nothing to report
    assert WorkflowResult().before_s(diamond(), 0.010) == 0.0


class LosingGateway:
    """Stage `a` runs on node n2, which keeps its output; the first `lost` times `b` runs, n2
    has died and `b`'s input cannot be read (as a worker answers then)."""

    def __init__(self, lost: int) -> None:
        self.lost = lost
        self.calls: list[str] = []

    def stage_invocation(self, version: FunctionVersion, item: Item, **kw: Any) -> Invocation:
        return Invocation(f"{kw['request_id']}.{version.name}", version.name, version, item,
                          kw["start_s"], kw["deadline_s"], held=kw["held"] or {})

    async def call(self, invocation: Invocation) -> CallResult:
        self.calls.append(invocation.id)
        if invocation.function == "a":
            return CallResult(TensorResult({}), False, 0.01, 0.0, 1, held_at="n2")
        assert invocation.held["x"].call_id == invocation.id.replace(".b", ".a")
        if self.lost > 0:
            self.lost -= 1
            raise InputLost("the input 'y' of b, kept on n2, could not be read: gone",
                            reason="input_lost")
        return CallResult(TensorResult({"z": np.zeros((1, 1), np.float32)}), False, 0.01,
                          0.0, 1)


def chain(idempotent: bool = True) -> tuple[DeployedWorkflow, dict[str, FunctionVersion]]:
    spec = WorkflowSpec("w", 1000.0, ("a", "b"), (Edge("a", "b"),), {})
    wiring = {"a": (), "b": (Feed("x", "a", "y"),)}
    out = (TensorSpec("y", "FP32", (-1, 1)),)
    versions = {
        name: FunctionVersion(name, 1, Path("/nonexistent"), Path("/nonexistent/m.onnx"),
                              FunctionSettings(idempotent=idempotent), outputs=out)
        for name in ("a", "b")
    }
    return DeployedWorkflow(spec, wiring, 1, 0.0), versions


async def run(gateway: LosingGateway, idempotent: bool = True) -> WorkflowResult:
    workflow, versions = chain(idempotent)
    runner = WorkflowRunner(gateway, versions.__getitem__, ManualClock())  # type: ignore[arg-type]
    return await runner.run(workflow, versions["a"], TensorItem({}), call_id="c",
                            start_s=0.0, postprocess=False)


async def test_a_stage_input_lost_with_its_node_runs_the_call_again_from_its_source() -> None:
    gateway = LosingGateway(lost=1)
    result = await run(gateway)
    assert list(result.sinks) == ["b"]
    assert gateway.calls == ["c.a", "c.b", "c~2.a", "c~2.b"]  # new ids: nothing deduped away


async def test_a_call_loses_its_input_twice_or_is_not_idempotent_answers_input_lost() -> None:
    twice = LosingGateway(lost=2)
    with pytest.raises(StageFailed) as failed:
        await run(twice)
    assert failed.value.extra["reason"] == "input_lost" and failed.value.status == 502
    assert twice.calls == ["c.a", "c.b", "c~2.a", "c~2.b"]
    once = LosingGateway(lost=1)
    with pytest.raises(StageFailed):
        await run(once, idempotent=False)
    assert once.calls == ["c.a", "c.b"]  # `idempotent: false`: not run again
