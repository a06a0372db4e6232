"""The controller drives the real FCFS policy with the real clock and a scripted executor."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from esg.errors import PolicyError
from esg.model import Config
from esg.policies import make_policy
from esg.policy import Action, Dispatch, Drop, Event, Prewarm, Snapshot, Timer, WakeUp
from faasd.clock import SystemClock
from faasd.controller import BatchOutcome, Controller
from faasd.errors import FaasdError, Overloaded, SandboxCrashed, Unavailable
from faasd.functions.spec import FunctionSettings, FunctionVersion
from faasd.gateway import CallResult, Invocation
from faasd.sandbox.items import TensorItem, TensorResult


def version(name: str = "f", batch: int = 1, delay_ms: float = 0.0, vcpu: int = 1,
            max_instances: int = 4, number: int = 1) -> FunctionVersion:
    settings = FunctionSettings(max_batch_size=batch, max_queue_delay_ms=delay_ms, vcpu=vcpu,
                                max_instances=max_instances)
    return FunctionVersion(name, number, Path("/nonexistent"), Path("/nonexistent/model.onnx"),
                           settings, batched=True)


class Script:
    """An executor that records batches and answers after `delay_s` (or fails them)."""

    def __init__(self, delay_s: float = 0.0, fail: FaasdError | None = None) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.batches: list[tuple[Config, list[str]]] = []
        self.running = 0
        self.max_running = 0

    async def execute(self, config: Config, invocations: list[Invocation],
                      now_s: float) -> BatchOutcome:
        self.batches.append((config, [i.id for i in invocations]))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.running -= 1
        if self.fail is not None:
            return BatchOutcome([self.fail] * len(invocations), self.delay_s, False, False)
        results: list[CallResult | FaasdError] = [
            CallResult(TensorResult({"y": np.array([int(i.id)])}), False, self.delay_s, 0.0,
                       len(invocations))
            for i in invocations
        ]
        return BatchOutcome(results, self.delay_s, False, True)


def make(script: Script, capacity: int = 2, max_queue: int = 100) -> Controller:
    return Controller(policy=make_policy("fcfs"), executor=script, clock=SystemClock(),
                      vcpu_capacity=capacity, max_queue=max_queue)


def call(n: int, v: FunctionVersion) -> Invocation:
    now = SystemClock().now()
    return Invocation(str(n), v.name, v, TensorItem({"x": np.zeros((1, 1))}), now, float("inf"))


async def test_full_batch_leaves_at_once_and_each_call_gets_its_own_result() -> None:
    script = Script()
    controller = make(script)
    v = version(batch=4, delay_ms=10_000)
    futures = [controller.submit(call(i, v)) for i in range(4)]
    results = await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert [int(r.result.tensors["y"][0]) for r in results] == [0, 1, 2, 3]  # type: ignore[union-attr]
    assert len(script.batches) == 1
    assert script.batches[0][0] == Config(batch=4, vcpu=1)


async def test_partial_batch_leaves_after_the_queue_delay() -> None:
    script = Script()
    controller = make(script)
    v = version(batch=8, delay_ms=300)
    clock = SystemClock()
    started = clock.now()
    futures = [controller.submit(call(i, v)) for i in range(3)]
    await asyncio.sleep(0)
    assert script.batches == []  # still waiting for the batch to fill
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert clock.now() - started >= 0.29
    assert [ids for _, ids in script.batches] == [["0", "1", "2"]]


async def test_vcpu_capacity_bounds_concurrent_batches() -> None:
    script = Script(delay_s=0.05)
    controller = make(script, capacity=2)
    v = version(batch=1, vcpu=1)
    await asyncio.wait_for(
        asyncio.gather(*(controller.submit(call(i, v)) for i in range(6))), 5)
    assert script.max_running == 2
    assert len(script.batches) == 6


async def test_max_instances_bounds_concurrent_batches_of_one_function() -> None:
    script = Script(delay_s=0.03)
    controller = make(script, capacity=4)
    v = version(max_instances=1)
    await asyncio.wait_for(
        asyncio.gather(*(controller.submit(call(i, v)) for i in range(3))), 5)
    assert script.max_running == 1


async def test_failed_batch_fails_its_calls_and_the_controller_goes_on() -> None:
    script = Script(fail=SandboxCrashed("sandbox died"))
    controller = make(script)
    v = version()
    with pytest.raises(SandboxCrashed):
        await asyncio.wait_for(controller.submit(call(1, v)), 5)
    script.fail = None
    result = await asyncio.wait_for(controller.submit(call(2, v)), 5)
    assert int(result.result.tensors["y"][0]) == 2  # type: ignore[union-attr]


async def test_full_queue_is_overloaded_and_shutdown_is_unavailable() -> None:
    script = Script(delay_s=0.2)
    controller = make(script, capacity=1, max_queue=2)
    v = version()
    first = controller.submit(call(0, v))  # dispatched at once
    queued = [controller.submit(call(i, v)) for i in (1, 2)]
    with pytest.raises(Overloaded) as info:
        controller.submit(call(3, v))
    assert info.value.status == 429
    controller.stop_accepting()
    with pytest.raises(Unavailable):
        controller.submit(call(4, v))
    assert await controller.drain(timeout_s=5)  # what was admitted still finishes
    assert all(f.done() and not f.exception() for f in [first, *queued])


async def test_cancel_forgets_a_queued_call() -> None:
    script = Script(delay_s=0.1)
    controller = make(script, capacity=1)
    v = version()
    running = controller.submit(call(0, v))
    queued = controller.submit(call(1, v))
    assert controller.queue_lengths() == {"f": 1}
    controller.cancel("1")
    assert controller.queue_lengths() == {"f": 0}
    assert queued.cancelled()
    await asyncio.wait_for(running, 5)
    assert [ids for _, ids in script.batches] == [["0"]]


async def test_calls_stay_pinned_to_the_version_they_were_admitted_under() -> None:
    script = Script(delay_s=0.05)
    controller = make(script, capacity=1)
    old, new = version(number=1), version(number=2)
    f_old = controller.submit(call(0, old))
    f_queued_old = controller.submit(call(1, old))
    f_new = controller.submit(call(2, new))
    assert controller.in_flight("f", 1) == 2 and controller.in_flight("f", 2) == 1
    await asyncio.wait_for(asyncio.gather(f_old, f_queued_old, f_new), 5)
    assert controller.in_flight("f") == 0


class _Rogue:
    """A policy that dispatches a job that was never queued (a bug the driver must catch)."""

    name: ClassVar[str] = "rogue"

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        return [Dispatch("f", "f", ("ghost",), Config(1, 1), "local")]


async def test_a_policy_bug_raises_policy_error() -> None:
    controller = Controller(policy=_Rogue(), executor=Script(), clock=SystemClock(),
                            vcpu_capacity=1)
    with pytest.raises(PolicyError, match="not queued"):
        controller.submit(call(0, version()))


class _Newest:
    """Dispatches the newest queued job once two are waiting: not the queue's head."""

    name: ClassVar[str] = "newest"

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        jobs = snapshot.queues.get(("f", "f"), ())
        if len(jobs) < 2 or snapshot.running:
            return []
        return [Dispatch("f", "f", (jobs[-1].id,), Config(1, 1), "local")]


async def test_a_dispatch_may_take_jobs_from_the_middle_of_a_queue() -> None:
    script = Script()
    controller = Controller(policy=_Newest(), executor=script, clock=SystemClock(),
                            vcpu_capacity=1)
    first = controller.submit(call(0, version()))
    second = controller.submit(call(1, version()))
    await asyncio.wait_for(second, 5)
    assert script.batches[0][1] == ["1"]
    assert controller.queue_lengths() == {"f": 1}  # the older call still waits its turn
    assert not first.done()
    controller.close()


class _Dropper:
    """Refuses every arrival (admission control), asking to be woken later."""

    name: ClassVar[str] = "dropper"

    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        self.events.append(event)
        ids = tuple(j.id for q in snapshot.queues.values() for j in q)
        if not ids:
            return []
        return [Drop("f", "f", ids, "the SLO cannot be met"), WakeUp(snapshot.now_s + 0.02)]


async def test_dropped_jobs_fail_with_503_and_wake_ups_are_delivered() -> None:
    policy = _Dropper()
    controller = Controller(policy=policy, executor=Script(), clock=SystemClock(),
                            vcpu_capacity=1)
    with pytest.raises(Unavailable, match="SLO cannot be met") as caught:
        await asyncio.wait_for(controller.submit(call(0, version())), 5)
    assert caught.value.status == 503
    assert controller.queue_lengths() == {"f": 0}
    await asyncio.sleep(0.1)
    assert any(isinstance(e, Timer) for e in policy.events)


class _Recorder:
    """FCFS that writes down every event it is told, in order, with the snapshot's free vCPUs."""

    name: ClassVar[str] = "recorder"

    def __init__(self) -> None:
        self.fcfs = make_policy("fcfs")
        self.seen: list[tuple[str, int]] = []

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        self.seen.append((type(event).__name__, snapshot.nodes[0].free_vcpu))
        return self.fcfs.on_event(event, snapshot)


async def test_a_completion_reaches_the_policy_after_the_answer_and_before_later_events() -> None:
    policy = _Recorder()
    controller = Controller(policy=policy, executor=Script(), clock=SystemClock(),
                            vcpu_capacity=1)
    v = version()
    await controller.submit(call(0, v))  # awaited directly: resumed on the loop's next turn
    # The caller is answered first: the policy has not heard of the completion yet ...
    assert [name for name, _ in policy.seen] == ["Arrival"]
    # ... but it does before the next event, with the freed vCPU in its snapshot.
    second = controller.submit(call(1, v))
    assert policy.seen == [("Arrival", 1), ("Completion", 1), ("Arrival", 1)]
    await second
    await asyncio.sleep(0)  # the loop's next turn delivers the second completion on its own
    assert [name for name, _ in policy.seen][-1] == "Completion"
    assert controller.pending_total() == 0


class _FailsOnCompletion(_Recorder):
    """FCFS that raises whenever it is told of a completion (a policy bug)."""

    name: ClassVar[str] = "fails-on-completion"

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        actions = super().on_event(event, snapshot)
        if type(event).__name__ == "Completion":
            raise RuntimeError("bug")
        return actions


async def test_a_policy_failing_on_a_completion_fails_no_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = _FailsOnCompletion()
    controller = Controller(policy=policy, executor=Script(), clock=SystemClock(),
                            vcpu_capacity=1)
    v = version()
    await controller.submit(call(0, v))
    second = await asyncio.wait_for(controller.submit(call(1, v)), 5)  # told the completion first
    assert int(second.result.tensors["y"][0]) == 1  # type: ignore[union-attr]
    assert [name for name, _ in policy.seen][:3] == ["Arrival", "Completion", "Arrival"]
    assert "failed on a completion" in caplog.text


class Slow(Script):
    """Answers after `delay_s` but reports an execution of `exec_s`; the first batch is cold."""

    def __init__(self, delay_s: float, exec_s: float) -> None:
        super().__init__(delay_s)
        self.exec_s = exec_s

    async def execute(self, config: Config, invocations: list[Invocation],
                      now_s: float) -> BatchOutcome:
        outcome = await super().execute(config, invocations, now_s)
        return BatchOutcome(outcome.results, self.exec_s, len(self.batches) == 1, True)


async def test_warm_batches_measure_the_time_outside_execution_for_the_planner() -> None:
    # Each batch takes 40 ms but reports 10 ms of execution: about 30 ms of overhead, which the
    # policy then sees in the function's limits. The first batch is cold: its time is the
    # sandbox's start, not overhead, and leaves no estimate behind.
    script = Slow(delay_s=0.04, exec_s=0.01)
    controller = make(script)
    v = version()
    await asyncio.wait_for(controller.submit(call(0, v)), 5)
    assert controller.overhead_ms("f") == 0.0
    assert controller.snapshot().limits["f"].overhead_ms == 0.0
    for i in range(1, 4):
        await asyncio.wait_for(controller.submit(call(i, v)), 5)
    assert 25.0 < controller.overhead_ms("f") < 60.0
    assert controller.snapshot().limits["f"].overhead_ms == pytest.approx(
        controller.overhead_ms("f"), abs=0.15)


def test_the_policies_are_told_that_the_daemon_refines_the_profiles() -> None:
    # The daemon refines each configuration's point from every batch (ProfileService.on_batch):
    # a policy must not correct the same table again (ESG+'s correction stays off).
    assert make(Slow(delay_s=0.0, exec_s=0.0)).snapshot().profiles_refined is True


def test_the_time_calls_spend_outside_their_stages_reaches_the_policies_in_steps() -> None:
    controller = make(Slow(delay_s=0.0, exec_s=0.0))
    assert controller.snapshot().outside_ms == {}
    controller.observe_outside("classify", 0.002)
    assert controller.outside_ms("classify") == pytest.approx(2.0)
    assert controller.snapshot().outside_ms == {"classify": 2.0}
    controller.observe_outside("classify", 0.0025)  # smoothed: 2.05 ms, shown still as 2.0
    assert controller.outside_ms("classify") == pytest.approx(2.05)
    assert controller.snapshot().outside_ms == {"classify": 2.0}
    controller.observe_outside("classify", 0.004)  # 2.245 ms: moved by 0.1 ms or more
    assert controller.snapshot().outside_ms == {"classify": 2.2}
    controller.remove_workflow("classify")
    assert controller.snapshot().outside_ms == {}


def test_the_time_before_a_calls_source_is_reported_smoothed_and_forgotten_with_it() -> None:
    controller = make(Slow(delay_s=0.0, exec_s=0.0))
    assert controller.before_ms("classify") == 0.0
    controller.observe_before("classify", 0.002)
    controller.observe_before("classify", 0.004)  # smoothed like the others: 2.2 ms
    assert controller.before_ms("classify") == pytest.approx(2.2)
    controller.remove_workflow("classify")
    assert controller.before_ms("classify") == 0.0


class _Prewarming:
    """FCFS that asks for a pre-warm of its own shape before every answer."""

    name: ClassVar[str] = "prewarming"

    def __init__(self) -> None:
        self.fcfs = make_policy("fcfs")
        self.free_vcpu: list[int] = []

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        self.free_vcpu.append(snapshot.nodes[0].free_vcpu)
        return [Prewarm("f", Config(1, 1), "local"), *self.fcfs.on_event(event, snapshot)]


async def test_a_prewarm_is_ignored_and_the_dispatches_beside_it_run() -> None:
    policy = _Prewarming()
    script = Script()
    controller = Controller(policy=policy, executor=script, clock=SystemClock(),
                            vcpu_capacity=1)
    result = await asyncio.wait_for(controller.submit(call(0, version())), 5)
    assert int(result.result.tensors["y"][0]) == 0  # type: ignore[union-attr]
    assert len(script.batches) == 1  # the pre-warm started nothing through the executor
    assert policy.free_vcpu[0] == 1  # and held no vCPU
    controller.close()
