"""The seam's own bookkeeping: what `Snapshot.reserve` and the action constructors promise."""

from __future__ import annotations

import pytest

from esg.model import Config, Job, Workflow
from esg.policy import Dispatch, GpuView, NodeView, Prewarm, Snapshot


def _job(i: int) -> Job:
    return Job(
        id=f"j{i}", request_id=f"r{i}", app="app", function="f",
        request_start_s=0.0, enqueued_s=float(i), deadline_s=10.0,
    )


def _snapshot() -> Snapshot:
    config = Config(batch=2, vcpu=2, vgpu=3)
    node = NodeView(
        name="n0", total_vcpu=8, free_vcpu=8,
        gpus=(GpuView(index=0, free_units=7), GpuView(index=1, free_units=4)),
        warm={("f", config): 1},
    )
    return Snapshot(
        now_s=1.0,
        nodes=(node, NodeView(name="n1", total_vcpu=4, free_vcpu=4)),
        queues={("app", "f"): (_job(0), _job(1), _job(2))},
        workflows={"app": Workflow.single("f")},
    )


def test_reserve_dequeues_and_holds_resources_on_the_named_node_only() -> None:
    before = _snapshot()
    config = Config(batch=2, vcpu=2, vgpu=3)
    after = before.reserve(Dispatch("app", "f", ("j0", "j2"), config, "n0", gpu=1))

    assert [j.id for j in after.queues[("app", "f")]] == ["j1"]
    n0 = after.node("n0")
    assert n0.free_vcpu == 6  # 8 - 2
    assert [g.free_units for g in n0.gpus] == [7, 1]  # GPU 1: 4 - 3; GPU 0 untouched
    assert n0.warm[("f", config)] == 0  # the one warm sandbox is now taken
    assert after.node("n1") == before.node("n1")
    assert after.running == {"f": 1}
    # The original snapshot is unchanged: reserve returns a new one.
    assert len(before.queues[("app", "f")]) == 3
    assert before.node("n0").free_vcpu == 8


@pytest.mark.parametrize(
    ("job_ids", "config", "gpu", "message"),
    [
        ((), Config(1, 1), None, "at least one job"),
        (("a", "b", "c"), Config(2, 1), None, "do not fit a batch of 2"),
        (("a",), Config(1, 1, 2), None, "must name the GPU"),
    ],
)
def test_dispatch_rejects_what_no_driver_could_run(
    job_ids: tuple[str, ...], config: Config, gpu: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Dispatch("app", "f", job_ids, config, "n0", gpu=gpu)


def test_workflow_rejects_cycles_and_unknown_functions() -> None:
    from esg.errors import WorkflowError

    with pytest.raises(WorkflowError, match="cycle"):
        Workflow.from_edges("w", ["a", "b"], [("a", "b"), ("b", "a")], slo_s=1.0)
    with pytest.raises(WorkflowError, match="unknown function 'c'"):
        Workflow.from_edges("w", ["a", "b"], [("a", "c")], slo_s=1.0)
    chain = Workflow.from_edges("w", ["a", "b", "c"], [("a", "b"), ("b", "c")], slo_s=1.0)
    assert chain.entries() == ("a",) and chain.exits() == ("c",)
    assert chain.topological_order() == ("a", "b", "c")


def test_reserving_a_prewarm_holds_its_shape_and_leaves_queues_and_warm_alone() -> None:
    before = _snapshot()
    config = Config(batch=1, vcpu=2, vgpu=3)
    after = before.reserve(Prewarm("f", config, "n0", gpu=0))
    n0 = after.node("n0")
    assert n0.free_vcpu == 6 and [g.free_units for g in n0.gpus] == [4, 4]  # 8-2; 7-3
    assert n0.warm == before.node("n0").warm  # not warm until it has started
    assert after.queues == before.queues and after.running == before.running
