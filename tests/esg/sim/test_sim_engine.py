"""The engine on hand-built scenarios whose latencies and costs are worked out by hand."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import ClassVar

import pytest

from esg.errors import PolicyError
from esg.model import Config, Workflow
from esg.policies.fcfs import FcfsPolicy
from esg.policy import (
    Action,
    Arrival,
    Dispatch,
    Drop,
    Event,
    FunctionLimits,
    Prewarm,
    Snapshot,
    WakeUp,
)
from esg.pricing import Pricing
from esg.sim.cluster import ClusterSpec
from esg.sim.engine import EngineSettings, Simulation
from esg.sim.execution import ExecutionModel
from esg.sim.metrics import summarize
from esg.sim.workloads import custom_scenario as scenario

CPU = Config(1, 2, 0)
GPU = Config(1, 2, 1)
EXACT = EngineSettings(execution=ExecutionModel(noise_sigma=0.0),
                       pricing=Pricing(cpu_per_s=1.0, gpu_per_s=10.0))


class Fixed:
    """Dispatches every queued job alone at `config` on `node` (per function), at once."""

    name: ClassVar[str] = "fixed"

    def __init__(self, config: Config, nodes: dict[str, str] | None = None,
                 gpu: int | None = None) -> None:
        self.config, self.nodes, self.gpu = config, nodes or {}, gpu

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        actions: list[Action] = []
        for (app, function), jobs in snapshot.queues.items():
            for job in jobs:
                node = self.nodes.get(function, "node00")
                gpu = self.gpu if self.config.vgpu else None
                actions.append(Dispatch(app, function, (job.id,), self.config, node, gpu=gpu))
        return actions


def small_cluster(nodes: int = 1, **overrides: float) -> ClusterSpec:
    return ClusterSpec(nodes=nodes, **overrides)  # type: ignore[arg-type]


def fake_timer(step_s: float = 0.0005):  # type: ignore[no-untyped-def]
    ticks = iter(range(10**9))
    return lambda: next(ticks) * step_s


def run(policy, sc, cluster=None, settings=EXACT, timer=None):  # type: ignore[no-untyped-def]
    return Simulation(sc, policy, cluster or small_cluster(), timer=timer or fake_timer(),
                      settings=settings).run()


def test_one_function_cold_then_warm_latencies_and_costs_are_exact() -> None:
    wf = Workflow.single("f", slo_s=0.5)
    sc = scenario(wf, {"f": {CPU: 40.0}}, arrivals=[0.0, 1.0, 2.0])
    record = run(Fixed(CPU), sc, small_cluster(cold_start_cpu_s=0.25))

    latencies = [r.latency_s for r in record.requests.values()]
    # First request: cold start 0.25 s + 40 ms; the others find the sandbox warm: 40 ms.
    assert latencies == pytest.approx([0.29, 0.04, 0.04])
    # Cost: (1 $/vCPU·s × 2 vCPU) × 0.04 s = 0.08 $ per request (billed on execution only).
    assert [r.cost for r in record.requests.values()] == pytest.approx([0.08] * 3)
    metrics = summarize(record)
    assert metrics.slo_hit_rate == 1.0
    assert metrics.cold_start_rate == pytest.approx(1 / 3)
    assert metrics.p50_ms == pytest.approx(40.0)


def test_a_cold_start_the_functions_limits_carry_replaces_the_clusters() -> None:
    # The cluster starts a sandbox in 0.25 s; f's limits say 0.1 s (a daemon measured it), g
    # carries none: f's first request takes 0.1 s + 40 ms, g's 0.25 s + 40 ms.
    wf = Workflow.from_edges("app", ["f", "g"], [("f", "g")], slo_s=1.0)
    limits = {"f": FunctionLimits(cold_start_ms=100.0), "g": FunctionLimits()}
    sc = scenario(wf, {"f": {CPU: 40.0}, "g": {CPU: 40.0}}, arrivals=[0.0], limits=limits)
    record = run(Fixed(CPU), sc, small_cluster(cold_start_cpu_s=0.25))
    (request,) = record.requests.values()
    assert request.latency_s == pytest.approx(0.1 + 0.04 + 0.25 + 0.04)
    assert [b.cold for b in record.batches] == [True, True]


def test_gpu_cost_and_cold_start_include_the_slice() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    sc = scenario(wf, {"f": {GPU: 10.0}}, arrivals=[0.0])
    record = run(Fixed(GPU, gpu=0), sc, small_cluster(cold_start_cpu_s=0.25,
                                                      cold_start_gpu_extra_s=0.75))
    (request,) = record.requests.values()
    assert request.latency_s == pytest.approx(1.0 + 0.01)
    assert request.cost == pytest.approx((2 * 1.0 + 1 * 10.0) * 0.01)  # 0.12 $


def test_a_chain_across_nodes_pays_the_transfer_and_locality_does_not() -> None:
    wf = Workflow.from_edges("app", ["a", "b"], [("a", "b")], slo_s=1.0)
    tables = {"a": {CPU: 10.0}, "b": {CPU: 20.0}}
    cluster = small_cluster(2, cold_start_cpu_s=0.0, net_latency_s=0.001,
                            net_bytes_per_s=1e6)
    sc = scenario(wf, tables, arrivals=[0.0], output_bytes={"a": 5000.0, "b": 0.0})
    apart = run(Fixed(CPU, {"a": "node00", "b": "node01"}), sc, cluster)
    together = run(Fixed(CPU), sc, cluster)
    # 10 ms + (1 ms + 5000 B / 1 MB/s = 6 ms) + 20 ms = 36 ms apart; 30 ms on one node.
    assert next(iter(apart.requests.values())).latency_s == pytest.approx(0.036)
    assert next(iter(together.requests.values())).latency_s == pytest.approx(0.030)


def test_fcfs_batches_two_close_arrivals_and_a_partial_batch_runs_smaller() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    b2, b1 = Config(2, 2, 0), Config(1, 2, 0)
    limits = {"f": FunctionLimits(max_batch=2, max_queue_delay_s=0.005, vcpu=2)}
    sc = scenario(wf, {"f": {b1: 10.0, b2: 15.0}}, arrivals=[0.0, 0.002, 1.0],
                  limits=limits)
    record = run(FcfsPolicy(), sc, small_cluster(cold_start_cpu_s=0.0))
    lat = [r.latency_s for r in record.requests.values()]
    # Requests 0 and 1 leave together at 2 ms as a batch of 2 (15 ms); request 2 waits the
    # 5 ms queue delay alone and runs as a batch of 1 (10 ms).
    assert lat == pytest.approx([0.017, 0.015, 0.015])
    assert [b.jobs for b in record.batches] == [2, 1]


def test_keep_alive_expiry_makes_the_next_start_cold() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    sc = scenario(wf, {"f": {CPU: 10.0}}, arrivals=[0.0, 5.0, 20.0])
    record = run(Fixed(CPU), sc, small_cluster(cold_start_cpu_s=0.5, keep_alive_s=10.0))
    assert [b.cold for b in record.batches] == [True, False, True]


class Overcommit(Fixed):
    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if not isinstance(event, Arrival):
            return []
        job = event.job
        return [Dispatch(job.app, job.function, (job.id,), Config(1, 17, 0), "node00")]


class BadSlice(Fixed):
    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if not isinstance(event, Arrival):
            return []
        job = event.job
        return [Dispatch(job.app, job.function, (job.id,), Config(1, 1, 5), "node00", gpu=0)]


class Twice(Fixed):
    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if not isinstance(event, Arrival):
            return []
        job = event.job
        d = Dispatch(job.app, job.function, (job.id,), CPU, "node00")
        return [d, d]


@pytest.mark.parametrize("policy", [Overcommit(CPU), BadSlice(CPU), Twice(CPU)])
def test_a_policy_bug_raises_policy_error(policy: Fixed) -> None:
    wf = Workflow.single("f", slo_s=1.0)
    table = {CPU: 10.0, Config(1, 17, 0): 1.0, Config(1, 1, 5): 1.0}
    with pytest.raises(PolicyError):
        run(policy, scenario(wf, {"f": table}, arrivals=[0.0]))


class DropAll(Fixed):
    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if isinstance(event, Arrival):
            return [Drop(event.job.app, event.job.function, (event.job.id,), "no")]
        return []


def test_dropped_requests_miss_and_are_counted() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    record = run(DropAll(CPU), scenario(wf, {"f": {CPU: 1.0}}, arrivals=[0.0, 0.1]))
    metrics = summarize(record)
    assert metrics.slo_hit_rate == 0.0
    assert metrics.drop_rate == 1.0
    assert metrics.requests == 2


class Waiter(Fixed):
    """Asks to be woken 0.1 s after each arrival, and dispatches then."""

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if isinstance(event, Arrival):
            return [WakeUp(snapshot.now_s + 0.1)]
        return super().on_event(event, snapshot)


def test_wakeups_are_delivered_at_the_asked_time() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    record = run(Waiter(CPU), scenario(wf, {"f": {CPU: 10.0}}, arrivals=[0.0]),
                 small_cluster(cold_start_cpu_s=0.0))
    assert next(iter(record.requests.values())).latency_s == pytest.approx(0.11)


def test_overhead_is_measured_with_the_injected_timer_and_optionally_charged() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    sc = scenario(wf, {"f": {CPU: 10.0}}, arrivals=[0.0])
    cluster = small_cluster(cold_start_cpu_s=0.0)
    record = run(Fixed(CPU), sc, cluster, timer=fake_timer(0.002))
    # Each policy call reads the timer twice: 2 ms apart.
    assert record.overhead_ms == pytest.approx([2.0, 2.0])
    charged = run(Fixed(CPU), sc, cluster, timer=fake_timer(0.002),
                  settings=replace(EXACT, charge_overhead=True))
    assert next(iter(charged.requests.values())).latency_s == pytest.approx(0.012)


def test_noise_is_seeded() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    sc = scenario(wf, {"f": {CPU: 10.0}}, arrivals=[0.0, 1.0, 2.0])

    def lat(seed: int) -> list[float | None]:
        rec = run(Fixed(CPU), sc, small_cluster(cold_start_cpu_s=0.0),
                  settings=EngineSettings(execution=ExecutionModel(noise_sigma=0.1), seed=seed))
        return [r.latency_s for r in rec.requests.values()]

    assert lat(1) == lat(1)
    assert lat(1) != lat(2)
    assert all(x is not None and 0.005 < x < 0.02 for x in lat(3))


class WarmWatcher(Fixed):
    """Records how many warm sandboxes of its shape the snapshot shows at each arrival."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.seen: list[int] = []

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if isinstance(event, Arrival):
            self.seen.append(snapshot.node("node00").warm.get(("f", self.config), 0))
        return super().on_event(event, snapshot)


def test_the_snapshot_shows_warm_sandboxes_until_their_keep_alive_ends() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    b2 = Config(2, 2, 0)
    sc = scenario(wf, {"f": {CPU: 10.0, b2: 15.0}}, arrivals=[0.0, 5.0, 20.0])
    watcher = WarmWatcher(CPU)
    run(watcher, sc, small_cluster(cold_start_cpu_s=0.5, keep_alive_s=10.0))
    # None at first; one after the first run (parked at 0.51 s); expired by 20 s (15.51 s).
    assert watcher.seen == [0, 1, 0]


def test_cold_starts_are_instant_during_the_warm_up_only() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    sc = scenario(wf, {"f": {CPU: 10.0}}, arrivals=[0.0, 0.0, 2.0, 2.0])
    sc = replace(sc, measure_from_s=1.0)
    record = run(Fixed(CPU), sc, small_cluster(cold_start_cpu_s=0.5))
    latencies = [r.latency_s for r in record.requests.values()]
    # Two concurrent requests during the warm-up start two sandboxes at no cost; two more at
    # 2 s find them warm. Without instant warm-up the first two pay 0.5 s each.
    assert latencies == pytest.approx([0.01] * 4)
    harsh = run(Fixed(CPU), sc, small_cluster(cold_start_cpu_s=0.5),
                settings=replace(EXACT, instant_warmup=False))
    assert [r.latency_s for r in harsh.requests.values()] == pytest.approx(
        [0.51, 0.51, 0.01, 0.01]
    )
    assert [r.measured for r in record.requests.values()] == [False, False, True, True]


class Alternating(Fixed):
    """Dispatches each arrival alone, at `configs[i % len(configs)]` for the i-th arrival."""

    def __init__(self, *configs: Config) -> None:
        super().__init__(configs[0])
        self.configs, self.count = configs, 0

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        if isinstance(event, Arrival):
            self.config = self.configs[self.count % len(self.configs)]
            self.count += 1
        return super().on_event(event, snapshot)


@pytest.mark.parametrize(("cap", "expected"), [(None, [0.51, 0.51, 0.01]), (1, [0.51] * 3)])
def test_a_cold_start_at_the_instance_cap_stops_the_idle_sandbox_of_another_shape(
    cap: int | None, expected: list[float]
) -> None:
    # Shapes 2 vCPUs, then 1, then 2 again, one request each, a second apart. Without a cap the
    # first sandbox is still warm for the third request; with max_instances 1 the second
    # request's cold start stopped it (as the daemon's pool does), so the third starts cold.
    wf = Workflow.single("f", slo_s=1.0)
    one = Config(1, 1, 0)
    limits = {"f": FunctionLimits(max_instances=cap)}
    sc = scenario(wf, {"f": {CPU: 10.0, one: 10.0}}, arrivals=[0.0, 1.0, 2.0], limits=limits)
    record = run(Alternating(CPU, one), sc, small_cluster(cold_start_cpu_s=0.5),
                 settings=replace(EXACT, instant_warmup=False))
    assert [r.latency_s for r in record.requests.values()] == pytest.approx(expected)


def test_the_measured_overhead_of_a_batch_adds_to_its_time_but_not_its_cost() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    limits = {"f": FunctionLimits(overhead_ms=5.0)}
    sc = scenario(wf, {"f": {CPU: 40.0}}, arrivals=[0.0], limits=limits)
    plain = run(Fixed(CPU), scenario(wf, {"f": {CPU: 40.0}}, arrivals=[0.0]))
    record = run(Fixed(CPU), sc)
    [(slow, slow_cost)] = [(r.latency_s, r.cost) for r in record.requests.values()]
    [(bare, bare_cost)] = [(r.latency_s, r.cost) for r in plain.requests.values()]
    assert slow == pytest.approx(bare + 0.005)
    assert slow_cost == pytest.approx(bare_cost)


@pytest.mark.parametrize(("client_ms", "extra_s"), [({}, 0.003), ({"f": 0.7}, 0.0037)])
def test_the_time_outside_stages_adds_to_each_call_and_the_policy_sees_it(
    client_ms: dict[str, float], extra_s: float
) -> None:
    # the client's time beyond the daemon's account adds too, but no policy sees it
    wf = Workflow.single("f", slo_s=1.0)
    sc = replace(scenario(wf, {"f": {CPU: 40.0}}, arrivals=[0.0]), outside_ms={"f": 3.0},
                 client_ms=client_ms)
    seen: list[Mapping[str, float]] = []

    class Watching(Fixed):
        def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
            seen.append(snapshot.outside_ms)
            return super().on_event(event, snapshot)

    plain = run(Fixed(CPU), scenario(wf, {"f": {CPU: 40.0}}, arrivals=[0.0]))
    record = run(Watching(CPU), sc)
    [late] = [r.latency_s for r in record.requests.values()]
    [bare] = [r.latency_s for r in plain.requests.values()]
    assert late == pytest.approx(bare + extra_s)
    assert seen and all(s == {"f": 3.0} for s in seen)


class PrewarmFirst:
    """Answers `first` (pre-warms, wake-ups) on its first call, then holds every job until
    `hold_until_s` and dispatches it alone at `config` on node00; notes (time, free vCPUs)
    at each call."""

    name: ClassVar[str] = "prewarm-first"

    def __init__(self, config: Config, first: list[Action], hold_until_s: float) -> None:
        self.config, self.first, self.hold_until_s = config, first, hold_until_s
        self.seen: list[tuple[float, int]] = []

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        self.seen.append((snapshot.now_s, snapshot.node("node00").free_vcpu))
        actions, self.first = self.first, []
        if snapshot.now_s < self.hold_until_s:
            return [*actions, WakeUp(self.hold_until_s)]
        for (app, function), jobs in snapshot.queues.items():
            for job in jobs:
                actions.append(Dispatch(app, function, (job.id,), self.config, "node00"))
        return actions


def test_a_prewarmed_sandbox_makes_the_next_dispatch_warm() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    sc = scenario(wf, {"f": {CPU: 40.0}}, arrivals=[0.0])
    cluster = small_cluster(cold_start_cpu_s=0.25)
    warmed = PrewarmFirst(CPU, [Prewarm("f", CPU, "node00"), WakeUp(0.1)], hold_until_s=0.5)
    record = run(warmed, sc, cluster)
    # Held until 0.5 s, then warm: 0.5 + 0.04 s. The start held 2 of 16 vCPUs (14 free at
    # 0.1 s) until 0.25 s, when the policy was told (a Timer) and saw them free again.
    [latency] = [r.latency_s for r in record.requests.values()]
    assert latency == pytest.approx(0.54)
    assert record.prewarms == 1 and not record.batches[0].cold
    assert warmed.seen[:3] == [(0.0, 16), (0.1, 14), (0.25, 16)]
    # Without the pre-warm the same dispatch starts cold: 0.5 + 0.25 + 0.04 s.
    cold = run(PrewarmFirst(CPU, [], hold_until_s=0.5), sc, cluster)
    assert [r.latency_s for r in cold.requests.values()] == pytest.approx([0.79])


@pytest.mark.parametrize(
    ("cluster", "limits", "asked", "started"),
    [
        # Each start holds 2 vCPUs: the second does not fit a 3-vCPU node.
        (small_cluster(vcpu_per_node=3), {}, 2, 1),
        # 16 vCPUs hold three starts, but the third would be over max_instances.
        (small_cluster(), {"f": FunctionLimits(max_instances=2)}, 3, 2),
    ],
)
def test_a_prewarm_without_room_is_ignored_and_counted(
    cluster: ClusterSpec, limits: dict[str, FunctionLimits], asked: int, started: int
) -> None:
    wf = Workflow.single("f", slo_s=1.0)
    sc = scenario(wf, {"f": {CPU: 40.0}}, arrivals=[0.0], limits=limits)
    policy = PrewarmFirst(CPU, [Prewarm("f", CPU, "node00")] * asked, hold_until_s=0.5)
    record = run(policy, sc, cluster)
    assert (record.prewarms, record.prewarms_ignored) == (started, asked - started)
    assert not record.batches[0].cold
