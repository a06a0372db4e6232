"""A node's report of its own state: its encoding, what a malformed one is told, the leader's
book (newest per node), and the report built from the controller's snapshot."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from esg.model import Config, Job
from esg.policy import GpuView, NodeView, Snapshot
from faasd.clock import ManualClock
from faasd.cluster.leadership import Leader
from faasd.cluster.members import Member
from faasd.cluster.node_state import GpuUnits, NodeState, Shape, StateBook
from faasd.cluster.peers import Peers
from faasd.cluster.state_reporter import StateReporter, state_of


def report(seq: int = 1, epoch: str = "e1", node: str = "a", free: int = 3) -> NodeState:
    return NodeState(node=node, epoch=epoch, seq=seq, as_of_wall=100.5, changed_wall=100.25,
                     total_vcpu=4, free_vcpu=free, queued={"net": 2}, running={"net": 1},
                     warm=(Shape("net", 2, 0, 1), Shape("pre", 1, 0, 3)),
                     gpus=(GpuUnits(0, 7, 4),))


def test_a_report_survives_its_encoding() -> None:
    state = report()
    assert NodeState.decode(state.encode()) == state
    shown = state.as_json(0.0125)
    assert shown["age_ms"] == 12.5 and shown["free_vcpu"] == 3
    assert shown["warm"][1] == {"function": "pre", "vcpu": 1, "vgpu": 0, "idle": 3}


def _fields() -> list[object]:
    body: list[object] = msgpack.unpackb(report().encode())
    return body


@pytest.mark.parametrize(("index", "value", "message"), [
    (0, 99, "format 99 is not 2"),
    (1, "", "node must be a non-empty string"),
    (3, -1, "seq must be a whole number >= 0"),
    (5, "soon", "changed_wall must be a number"),
    (7, 2.5, "free_vcpu must be a whole number"),
    (8, 1, "healthy must be true or false"),
    (9, {"net": "two"}, r"queued\['net'\] must be a whole number"),
    (11, [["net", 1, 0]], "warm must be a list of 4-field rows"),
])
def test_a_malformed_report_is_told_what_is_wrong(index: int, value: object,
                                                  message: str) -> None:
    body = _fields()
    body[index] = value
    with pytest.raises(ValueError, match=message):
        NodeState.decode(msgpack.packb(body))


def test_what_is_not_a_report_at_all() -> None:
    with pytest.raises(ValueError, match="must be msgpack"):
        NodeState.decode(b"\xc1")  # a byte msgpack never uses
    with pytest.raises(ValueError, match="array of 13 fields"):
        NodeState.decode(msgpack.packb({"node": "a"}))
    with pytest.raises(ValueError, match="at most"):
        NodeState.decode(b"\x00" * (1 << 21))


def test_the_book_keeps_the_newest_report_of_each_node() -> None:
    book = StateBook()
    assert book.offer(report(seq=2, free=1))
    assert not book.offer(report(seq=1, free=4))  # crossed on the wire: older, dropped
    assert not book.offer(report(seq=2, free=4))  # the same one again
    got = book.get("a")
    assert got is not None and got.free_vcpu == 1
    # a restarted node starts counting again under a new epoch: taken
    assert book.offer(report(seq=1, epoch="e2", free=4))
    assert book.offer(report(node="b"))
    assert sorted(s.node for s in book) == ["a", "b"]
    book.forget("a")
    assert book.get("a") is None


def job(app: str, function: str, n: int) -> Job:
    return Job(f"{app}-{function}-{n}", f"r{n}", app, function, 0.0, 0.0, 1.0)


def test_the_report_folds_queues_by_function_and_sandboxes_by_shape() -> None:
    warm = {("net", Config(b, 2)): 1 for b in (1, 2, 4)}  # one sandbox, listed per batch size
    warm |= {("pre", Config(1, 1)): 2, ("gone", Config(1, 1)): 0}
    view = NodeView("a", total_vcpu=4, free_vcpu=1, gpus=(GpuView(0, 3),), warm=warm)
    snapshot = Snapshot(
        now_s=5.0, nodes=(view,), workflows={}, running={"net": 1},
        queues={("w1", "net"): (job("w1", "net", 1),),
                ("w2", "net"): (job("w2", "net", 2), job("w2", "net", 3)),
                ("w1", "pre"): ()},
    )
    state = state_of(snapshot, node="a", epoch="e", seq=7, as_of_wall=9.0, changed_wall=8.5)
    assert state.queued == {"net": 3}
    assert state.warm == (Shape("net", 2, 0, 1), Shape("pre", 1, 0, 2))
    assert state.gpus == (GpuUnits(0, 7, 3),)
    assert (state.free_vcpu, state.running, state.seq) == (1, {"net": 1}, 7)


class Stub:
    """A cluster of which this node is the leader, or a member that knows no leader."""

    def __init__(self) -> None:
        self.leads = True

    def is_leader(self) -> bool:
        return self.leads

    def leader(self) -> Leader:
        return Leader(None, 0)

    def members(self) -> list[Member]:
        return []


async def test_a_burst_of_changes_goes_out_as_one_report_dated_from_its_first_change() -> None:
    view = NodeView("a", total_vcpu=2, free_vcpu=2)
    clock = ManualClock(10.0)
    cluster = Stub()
    cluster.leads = False  # no leader known yet: the report fails and waits for the next
    book, arrivals = StateBook(), []
    reporter = StateReporter(
        name="a", snapshot=lambda: Snapshot(0.0, (view,), {}, {}), cluster=cluster,  # type: ignore[arg-type]
        book=book, clock=clock, peers=Peers(None),
        arrived=lambda s, t: arrivals.append((s, t)),
        coalesce_s=0.02, heartbeat_s=60.0)
    reporter.start()
    try:
        reporter.changed()
        while reporter.failures == 0:
            await asyncio.sleep(0.01)
        clock.advance(5.0)
        cluster.leads = True
        for _ in range(20):
            reporter.changed()
        while not arrivals:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # a report per change would be here by now
    finally:
        await reporter.stop()
    assert len(arrivals) == 1
    state, received = arrivals[0]
    # the change no report carried (at 10 s) dates it, not the burst (at 15 s)
    wall = clock.wall() - 15.0
    assert (state.changed_wall, state.as_of_wall, received) == (wall + 10, wall + 15, wall + 15)
    assert book.get("a") == state and state.seq == 2
