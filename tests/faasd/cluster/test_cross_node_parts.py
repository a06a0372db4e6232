"""The parts of cross-node placement without daemons: the wire messages, the worker's
gathering, fencing and deduplication, workflow stages' kept outputs, and the leader's
controller scheduling other nodes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest

from esg.errors import PolicyError
from esg.model import Config
from esg.policies import make_policy
from esg.policy import Action, Dispatch, Event, GpuView, NodeView, Snapshot
from faasd.clock import ManualClock, SystemClock
from faasd.cluster.entry import Entry
from faasd.cluster.errors import NotRun, StaleTerm
from faasd.cluster.leadership import Fence, Leader
from faasd.cluster.members import Member
from faasd.cluster.messages import (
    Assignment,
    BatchSummary,
    Job,
    MessageError,
    RunReply,
    RunRequest,
    Ticket,
    decode_assignment,
    decode_refusals,
    decode_run,
    decode_run_reply,
    decode_tickets,
    encode_assignment,
    encode_refusals,
    encode_run,
    encode_run_reply,
    encode_tickets,
)
from faasd.cluster.outputs import (
    OutputStore,
    decode_pull,
    decode_pulled,
    encode_pull,
    encode_pulled,
)
from faasd.cluster.peers import Peers
from faasd.cluster.worker import Worker
from faasd.controller import BatchOutcome, Controller
from faasd.errors import FaasdError, Overloaded
from faasd.functions.spec import FunctionVersion
from faasd.gateway import NO_ITEM, CallResult, Held, Invocation
from faasd.sandbox.items import BodyItem, TensorItem, TensorResult
from tests.faasd.test_controller import Script, version

CONFIG = Config(batch=4, vcpu=1)


def frame(buffers: Sequence[object]) -> bytes:
    return b"".join(bytes(b) for b in buffers)  # type: ignore[call-overload]


def test_messages_round_trip_and_garbage_is_a_message_error() -> None:
    tickets = [Ticket("a", "r", "wf", "f", 0.25, 1.5, "node-b", 2, input_node="node-c")]
    assert decode_tickets(encode_tickets("node-b", tickets)) == tickets
    assignment = Assignment(7, "n/7/1", "f", CONFIG, None, "node-c", "127.0.0.4:8080",
                            ("a", "b"), ("a",))
    assert decode_assignment(encode_assignment(assignment)) == assignment
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    request = RunRequest(7, "n/7/1", "f", CONFIG, 2, ("a", "b"),
                         (Job("a", TensorItem({"x": x}), True, 0.5),
                          Job("b", BodyItem(b"png", "image/png"), False, float("inf"),
                              held={"h": Held("node-c", "r.pre", "h")}, keep_for=2)),
                         skipped=("c",))
    decoded = decode_run(frame(encode_run(request)))
    assert decoded.jobs[0].item.tensors["x"].tolist() == x.tolist()  # type: ignore[union-attr]
    assert decoded.jobs[1] == request.jobs[1] and decoded.skipped == ("c",)
    result = CallResult(TensorResult({"y": x}), True, 0.01, 0.002, 2, config=CONFIG, node="c",
                        held_at="c")
    reply = decode_run_reply(frame(encode_run_reply(RunReply(
        BatchSummary(0.01, True, True), {"a": result, "b": Overloaded("full")}))))
    got = reply.results["a"]
    assert isinstance(got, CallResult) and got.node == "c" and got.config == CONFIG
    assert got.held_at == "c"
    error = reply.results["b"]
    assert isinstance(error, FaasdError) and error.status == 429 and error.message == "full"
    refused = decode_refusals(encode_refusals({"a": NotRun("later")}))
    assert refused["a"].status == 503
    for decode in (decode_tickets, decode_assignment, decode_run, decode_run_reply):
        with pytest.raises(MessageError):
            decode(b"\x93not a message")


def worker(script: Script, fence: Fence | None = None, gather_s: float = 0.5,
           versions: dict[str, FunctionVersion] | None = None) -> Worker:
    known = versions if versions is not None else {"f": version(batch=4)}
    return Worker(name="w", fence=fence or Fence(), executor=script,
                  versions=known.get,
                  clock=SystemClock(), gather_s=gather_s)


def share(ids: Sequence[str], batch_ids: Sequence[str], term: int = 1, batch: str = "b1",
          skipped: Sequence[str] = ()) -> RunRequest:
    return RunRequest(term, batch, "f", CONFIG, None, tuple(batch_ids),
                      tuple(Job(i, TensorItem({"x": np.zeros((1, 1))}), True, 5.0)
                            for i in ids), tuple(skipped))


async def test_shares_of_two_entries_run_as_one_batch_and_each_gets_its_own_results() -> None:
    script = Script()
    w = worker(script, gather_s=5.0)  # complete at once: the gather timeout is not waited
    first, second = await asyncio.wait_for(asyncio.gather(
        w.run(share(["1", "2"], ["1", "2", "3"])), w.run(share(["3"], ["1", "2", "3"]))), 2)
    assert script.batches == [(CONFIG, ["1", "2", "3"])]
    assert set(first.results) == {"1", "2"} and set(second.results) == {"3"}
    answer = first.results["2"]
    assert isinstance(answer, CallResult) and answer.node == "w"
    assert int(answer.result.tensors["y"][0]) == 2  # type: ignore[union-attr]


async def test_a_share_that_never_comes_holds_the_batch_only_for_the_gather_time() -> None:
    script = Script()
    w = worker(script, gather_s=0.05)
    reply = await asyncio.wait_for(w.run(share(["1"], ["1", "2"])), 2)
    assert script.batches == [(CONFIG, ["1"])]
    assert isinstance(reply.results["1"], CallResult)
    # a share naming the other call as skipped does not wait at all
    w2 = worker(script, gather_s=30.0)
    await asyncio.wait_for(w2.run(share(["3"], ["3", "4"], batch="b2", skipped=["4"])), 2)


async def test_a_stale_term_is_refused_and_a_call_runs_once_however_often_it_is_sent() -> None:
    script = Script(delay_s=0.05)
    fence = Fence()
    fence.see(5)
    w = worker(script, fence=fence)
    with pytest.raises(StaleTerm) as refused:
        await w.run(share(["1"], ["1"], term=4))
    assert refused.value.status == 409
    once, again = await asyncio.gather(w.run(share(["1"], ["1"], term=5)),
                                       w.run(share(["1"], ["1"], term=5, batch="b9")))
    assert [ids for _, ids in script.batches] == [["1"]]
    assert once.results["1"] is again.results["1"]
    later = await w.run(share(["1"], ["1"], term=6, batch="b10"))  # after it ended, too
    assert later.results["1"] is once.results["1"] and len(script.batches) == 1
    with pytest.raises(StaleTerm):  # the term it admitted is the new floor
        await w.run(share(["2"], ["2"], term=5))


async def test_a_function_the_worker_lacks_is_not_run_and_may_be_placed_again() -> None:
    script = Script()
    w = worker(script, versions={})
    reply = await w.run(share(["1"], ["1"]))
    assert isinstance(reply.results["1"], NotRun) and script.batches == []
    assert not reply.summary.ok


class FakeRemote:
    """Another node `n2` with 2 vCPUs; records the batches placed through the cluster."""

    def __init__(self) -> None:
        self.executed: list[tuple[str, list[str]]] = []
        self.dropped: list[tuple[str, list[str]]] = []
        self.configs: list[Config] = []
        self.release = asyncio.Event()

    def views(self) -> tuple[NodeView, ...]:
        return (NodeView("n2", total_vcpu=2, free_vcpu=2),)

    async def execute(self, dispatch: Dispatch, invocations: list[Invocation]) -> BatchOutcome:
        self.executed.append((dispatch.node, [i.id for i in invocations]))
        self.configs.append(dispatch.config)
        await self.release.wait()
        return BatchOutcome([NotRun("answered by its entry node")] * len(invocations), 0.01,
                            False, True)

    def drop(self, entry: str, app: str, function: str, ids: Sequence[str],
             reason: str) -> None:
        self.dropped.append((entry, list(ids)))


def remote_call(n: int, v: FunctionVersion, entry: str = "n2") -> Invocation:
    now = SystemClock().now()
    return Invocation(str(n), v.name, v, NO_ITEM, now, float("inf"), entry=entry)


async def test_the_leaders_controller_fills_its_own_node_then_places_on_the_others() -> None:
    script = Script(delay_s=0.2)
    remote = FakeRemote()
    controller = Controller(policy=make_policy("fcfs"), executor=script, clock=SystemClock(),
                            vcpu_capacity=2, node_name="n1")
    controller.lead_cluster(remote, local=script)
    v = version(batch=1)
    # FCFS: the most free vCPUs, then the name: n1, n2, then n1 again (its own calls and
    # others' alike); the calls of another entry or on another node go through the cluster
    controller.submit(remote_call(1, v, entry=""))
    controller.submit(remote_call(2, v))
    again = controller.submit(remote_call(2, v))  # placed again by its entry: kept, once
    await asyncio.sleep(0.05)
    assert [ids for _, ids in script.batches] == [["1"]]
    assert remote.executed == [("n2", ["2"])]
    controller.submit(remote_call(3, v))  # a remote entry's call on this node: the cluster
    await asyncio.sleep(0.05)
    assert remote.executed == [("n2", ["2"]), ("n1", ["3"])]
    snapshot = controller.snapshot()
    assert [(n.name, n.free_vcpu) for n in snapshot.nodes] == [("n1", 0), ("n2", 1)]
    remote.release.set()
    await asyncio.sleep(0.3)
    assert again.done() and [(n.free_vcpu) for n in controller.snapshot().nodes] == [2, 2]


async def test_losing_the_leadership_gives_up_what_is_queued_not_what_runs() -> None:
    script = Script(delay_s=0.1)
    controller = Controller(policy=make_policy("fcfs"), executor=script, clock=SystemClock(),
                            vcpu_capacity=1, node_name="n1")
    v = version(batch=1)
    running = controller.submit(remote_call(1, v, entry=""))
    queued = controller.submit(remote_call(2, v, entry=""))
    evicted = controller.evict_queued()
    assert [i.id for i in evicted] == ["2"] and queued.cancelled()
    assert isinstance((await running).result, TensorResult)


def test_kept_outputs_go_after_their_last_read_or_their_time() -> None:
    store = OutputStore(ttl_s=10.0)
    y = np.ones((1, 3), dtype=np.float32)
    store.put("c1", {"y": y, "z": y}, reads=2, now=0.0)
    assert store.take("c1", ["y"], now=1.0) is not None
    assert store.take("c1", ["nope"], now=1.0) is None  # a name it does not have: no read
    assert store.take("c1", ["y", "z"], now=1.0, local=False) is not None
    assert store.take("c1", ["y"], now=1.0) is None and len(store) == 0
    assert store.describe() == {"held": 0, "served": 1, "read_here": 1}
    store.put("c2", {"y": y}, reads=1, now=0.0)
    assert store.take("c2", ["y"], now=10.0) is None  # nobody read it in time
    wanted = {"c1": ["y"], "c2": ["y", "z"]}
    assert decode_pull(encode_pull(wanted)) == wanted
    pulled = decode_pulled(encode_pulled({"c1": {"y": y}, "c2": None}))
    assert pulled["c2"] is None and pulled["c1"]["y"].tolist() == y.tolist()  # type: ignore[index]


async def test_a_stage_keeps_its_outputs_and_its_successor_here_reads_them_in() -> None:
    script = Script()
    w = worker(script)
    v = version(batch=4)
    now = SystemClock().now()
    first = Invocation("1", "f", v, TensorItem({"x": np.zeros((1, 1))}), now,
                       float("inf"), keep_for=1)
    outcome = await w.execute(CONFIG, [first], now)
    kept = outcome.results[0]
    assert isinstance(kept, CallResult) and kept.held_at == "w"
    assert kept.result == TensorResult({}) and len(w.outputs) == 1
    second = Invocation("2", "f", v, TensorItem({}), now, float("inf"),
                        held={"x": Held("w", "1", "y")})
    lost = Invocation("3", "f", v, TensorItem({}), now, float("inf"),
                      held={"x": Held("w", "9", "y")})
    outcome = await w.execute(CONFIG, [lost, second], now)
    assert isinstance(outcome.results[1], CallResult)  # in the batch's order
    error = outcome.results[0]
    assert isinstance(error, FaasdError) and error.status == 502
    assert "'y'" in error.message and error.extra["reason"] == "input_lost"
    assert script.batches[-1] == (CONFIG, ["2"]) and len(w.outputs) == 0


class LonelyCluster:
    """A cluster as a node that does not lead sees it (leader `leader`, or none known)."""

    def __init__(self, leader: str | None = None, term: int = 3) -> None:
        self.name = "n1"
        self.fence = Fence()
        self.fence.see(term)
        self._leader = Leader(leader, term)

    def leader(self) -> Leader:
        return self._leader

    def is_leader(self) -> bool:
        return False

    def members(self) -> list[Member]:
        return []


class NoController:
    def submit(self, invocation: Invocation) -> asyncio.Future[CallResult]:
        raise AssertionError("a node that does not lead queues nothing")

    def cancel(self, invocation_id: str) -> None:
        return None

    def evict_queued(self) -> list[Invocation]:
        return []


def entry(cluster: LonelyCluster, script: Script, clock: ManualClock | None = None) -> Entry:
    return Entry(name="n1", cluster=cluster, controller=NoController(),  # type: ignore[arg-type]
                 worker=worker(script), peers=Peers(None), clock=clock or ManualClock(),
                 place_timeout_s=15.0)


async def test_a_call_no_leader_takes_answers_503_no_leader_after_the_place_timeout() -> None:
    clock = ManualClock()
    e = entry(LonelyCluster(leader=None), Script(), clock)
    future = e.submit(remote_call(1, version(batch=4), entry=""))
    e.reconcile()
    clock.advance(14.9)
    e.reconcile()
    assert not future.done()
    clock.advance(0.2)
    e.reconcile()
    error = future.exception()
    assert isinstance(error, FaasdError) and error.status == 503
    assert error.extra["reason"] == "no_leader" and e.pending() == 0


async def test_a_call_past_its_slo_still_waits_out_a_failover() -> None:
    # A 400 ms SLO, no leader for a second: the call is not given up at its deadline (a late
    # answer is still an answer), only when no leader took it for the place timeout.
    clock = ManualClock()
    e = entry(LonelyCluster(leader=None), Script(), clock)
    call = dataclasses.replace(remote_call(1, version(batch=4), entry=""),
                               start_s=clock.now(), deadline_s=clock.now() + 0.4)
    future = e.submit(call)
    e.reconcile()
    clock.advance(1.0)
    e.reconcile()
    assert not future.done() and e.pending() == 1
    clock.advance(14.1)
    e.reconcile()
    error = future.exception()
    assert isinstance(error, FaasdError) and error.extra["reason"] == "no_leader"


async def test_an_assignment_runs_each_call_once_and_a_stale_or_dropping_one_runs_none() -> None:
    script = Script()
    e = entry(LonelyCluster(leader="n2", term=3), script)
    v = version(batch=4)
    futures = [e.submit(remote_call(i, v, entry="")) for i in range(1, 4)]

    def assignment(ids: tuple[str, ...], term: int = 3, batch: str = "n2/3/1",
                   drop: str | None = None) -> Assignment:
        return Assignment(term, batch, "f", CONFIG, None, "n1", "", ids, ids, drop)

    with pytest.raises(StaleTerm):
        await e.assigned(assignment(("1",), term=2))
    summary = await e.assigned(assignment(("1", "2")))
    assert summary.ok and script.batches == [(CONFIG, ["1", "2"])]
    assert futures[0].result().node == "w"  # the worker that ran it
    again = await e.assigned(assignment(("1", "2"), batch="n2/3/2"))  # a second placement
    assert len(script.batches) == 1 and not again.ok  # skipped: nothing ran twice
    await e.assigned(assignment(("3",), batch="n2/3/3", drop="hopeless: past its deadline"))
    dropped = futures[2].exception()
    assert isinstance(dropped, FaasdError) and dropped.status == 503
    assert dropped.message == "hopeless: past its deadline" and e.pending() == 0


class GpuPlacer:
    """Places every queued job alone on n2's GPU 0 at 3 units (and records the snapshots)."""

    name: ClassVar[str] = "gpu-placer"

    def __init__(self) -> None:
        self.seen: list[tuple[GpuView, ...]] = []

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        n2 = next(n for n in snapshot.nodes if n.name == "n2")
        self.seen.append(n2.gpus)
        return [Dispatch(app, function, (job.id,), Config(1, 1, 3), "n2", gpu=0)
                for (app, function), jobs in snapshot.queues.items() for job in jobs[:1]]


class GpuRemote(FakeRemote):
    def views(self) -> tuple[NodeView, ...]:
        return (NodeView("n2", total_vcpu=8, free_vcpu=8,
                         gpus=(GpuView(index=0, free_units=7, total_units=7, mode="mps"),)),)


async def test_the_leader_counts_the_gpu_units_it_places_on_other_nodes() -> None:
    policy = GpuPlacer()
    remote = GpuRemote()
    controller = Controller(policy=policy, executor=Script(), clock=SystemClock(),
                            vcpu_capacity=1, node_name="n1")
    controller.lead_cluster(remote, local=Script())
    v = version(batch=1)
    controller.submit(remote_call(1, v))
    controller.submit(remote_call(2, v))
    await asyncio.sleep(0.05)
    assert [ids for _, ids in remote.executed] == [["1"], ["2"]]
    assert controller.snapshot().nodes[1].gpus[0].free_units == 1  # 7 - 3 - 3
    with pytest.raises(PolicyError):  # a third would over-commit the GPU
        controller.submit(remote_call(3, v))
    remote.release.set()
    await asyncio.sleep(0.05)
    assert controller.snapshot().nodes[1].gpus[0].free_units == 7


async def test_a_leader_without_gpus_places_a_gpu_function_on_a_node_with_one() -> None:
    remote = GpuRemote()
    controller = Controller(policy=make_policy("fcfs"), executor=Script(), clock=SystemClock(),
                            vcpu_capacity=2, node_name="n1")
    controller.lead_cluster(remote, local=Script())
    controller.snapshot()  # the first event's snapshot reads the other nodes
    settings = dataclasses.replace(version().settings, vgpu=2, max_batch_size=1)
    v = dataclasses.replace(version(), settings=settings)
    controller.submit(remote_call(1, v))
    await asyncio.sleep(0.05)
    assert remote.executed == [("n2", ["1"])] and remote.configs[0].vgpu == 2
    remote.release.set()
