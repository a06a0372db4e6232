"""Prometheus metrics, all named `faasd_*` (reference: ecosystem notes §5.3).

One `CollectorRegistry` per daemon (not the process-global one), so several daemons in one
process — the tests — never share counters. Labels are `function_name` and `code`; never a
call id. Queue lengths and warm sandboxes are read live at scrape time from the controller
and the pool through `watch()`.

The per-call figures are plain Python numbers kept by `Metrics` and turned into metric
families only when `/metrics` is scraped: a call updates half a dozen of them, and
prometheus_client's labelled children cost a lock and several calls per update (about 10 µs a
call in all, measured). Every update and every scrape runs on the daemon's event loop, so no
lock is needed.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

#: 0.5 ms … 60 s: inference on CPU is often faster than the client library's 5 ms floor.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
#: 10 µs … 100 ms: one policy decision (a snapshot and the policy's call).
DECISION_BUCKETS_S = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.1,
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class _Histogram:
    """Counts per bucket (the last one is +Inf), not cumulative, and the sum."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # `le` is inclusive
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((_le(bound), running))
        return out


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it: "+Inf", "0.0005", "1.0"."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


@dataclass
class _FunctionStats:
    """Everything counted for one function."""

    started: int = 0
    inflight: int = 0
    inferences: int = 0
    cold_starts: int = 0
    failed_batches: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    duration: dict[str, _Histogram] = field(default_factory=dict)
    queue: _Histogram = field(default_factory=lambda: _Histogram(LATENCY_BUCKETS_S))
    compute: _Histogram = field(default_factory=lambda: _Histogram(LATENCY_BUCKETS_S))
    batch_size: _Histogram = field(default_factory=lambda: _Histogram(BATCH_BUCKETS))


@dataclass
class _WorkflowStats:
    """Everything counted for one workflow: calls by SLO outcome, latency, per-stage times."""

    calls: dict[str, int] = field(default_factory=dict)
    duration: _Histogram = field(default_factory=lambda: _Histogram(LATENCY_BUCKETS_S))
    stage_queue: dict[str, _Histogram] = field(default_factory=dict)
    stage_exec: dict[str, _Histogram] = field(default_factory=dict)


class Metrics:
    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._version = version
        self._functions: dict[str, _FunctionStats] = {}
        self._workflows: dict[str, _WorkflowStats] = {}
        #: at the leader: how stale each node's state report was when it arrived, per node
        self._state_staleness: dict[str, _Histogram] = {}
        self._decisions = _Histogram(DECISION_BUCKETS_S)
        self.registry.register(_CallMetrics(self))

    def watch(
        self,
        queue_lengths: Callable[[], Mapping[str, int]],
        idle: Callable[[], Mapping[str, int]],
    ) -> None:
        """Expose live gauges read at scrape time: queue lengths and idle warm sandboxes, per
        function."""
        self.registry.register(_LiveGauges(queue_lengths, idle))

    def _of(self, function: str) -> _FunctionStats:
        stats = self._functions.get(function)
        if stats is None:
            stats = self._functions[function] = _FunctionStats()
        return stats

    def call_started(self, function: str) -> None:
        stats = self._of(function)
        stats.started += 1
        stats.inflight += 1

    def call_finished(self, function: str, code: int, duration_s: float) -> None:
        self._of(function).inflight -= 1
        self.call_rejected(function, code, duration_s)

    def call_rejected(self, function: str, code: int, duration_s: float) -> None:
        """A call that never reached a queue (bad input, overload)."""
        stats = self._of(function)
        status = str(code)
        stats.calls[status] = stats.calls.get(status, 0) + 1
        histogram = stats.duration.get(status)
        if histogram is None:
            histogram = stats.duration[status] = _Histogram(LATENCY_BUCKETS_S)
        histogram.observe(duration_s)

    def queued(self, function: str, queue_s: float) -> None:
        self._of(function).queue.observe(queue_s)

    def batch_ran(self, function: str, size: int, exec_s: float, cold_start: bool) -> None:
        stats = self._of(function)
        stats.compute.observe(exec_s)
        stats.batch_size.observe(size)
        stats.inferences += size
        if cold_start:
            stats.cold_starts += 1

    def batch_failed(self, function: str) -> None:
        self._of(function).failed_batches += 1

    def workflow_finished(self, workflow: str, slo_met: bool, duration_s: float) -> None:
        """A workflow call answered (`slo_met` False for a failed one too)."""
        stats = self._workflows.setdefault(workflow, _WorkflowStats())
        key = "true" if slo_met else "false"
        stats.calls[key] = stats.calls.get(key, 0) + 1
        stats.duration.observe(duration_s)

    def stage_finished(self, workflow: str, function: str, queue_s: float, exec_s: float) -> None:
        stats = self._workflows.setdefault(workflow, _WorkflowStats())
        for table, value in ((stats.stage_queue, queue_s), (stats.stage_exec, exec_s)):
            histogram = table.get(function)
            if histogram is None:
                histogram = table[function] = _Histogram(LATENCY_BUCKETS_S)
            histogram.observe(value)

    def state_arrived(self, node: str, staleness_s: float) -> None:
        """At the leader: a node's state report arrived `staleness_s` after the oldest change
        it carries (`faasd.cluster.node_state`)."""
        histogram = self._state_staleness.get(node)
        if histogram is None:
            histogram = self._state_staleness[node] = _Histogram(LATENCY_BUCKETS_S)
        histogram.observe(max(0.0, staleness_s))

    def decided(self, seconds: float) -> None:
        """The controller asked its policy once (snapshot and decision) in `seconds`."""
        self._decisions.observe(seconds)

    def _cluster_families(self) -> Iterator[Metric]:
        decisions = HistogramMetricFamily(
            "faasd_scheduler_decision_seconds",
            "One scheduling decision: the snapshot of the nodes and the policy's call.")
        decisions.add_metric([], self._decisions.buckets(), self._decisions.total)
        yield decisions
        family = HistogramMetricFamily(
            "faasd_cluster_state_staleness_seconds",
            "At the leader: time from a change on a node to its state report's arrival.",
            labels=["node"],
        )
        for node, histogram in sorted(self._state_staleness.items()):
            family.add_metric([node], histogram.buckets(), histogram.total)
        yield family

    def _workflow_families(self) -> Iterator[Metric]:
        stats = sorted(self._workflows.items())
        calls = CounterMetricFamily(
            "faasd_workflow_invocations", "Workflow calls answered, by whether the SLO was met.",
            labels=["workflow", "slo_met"],
        )
        duration = HistogramMetricFamily(
            "faasd_workflow_duration_seconds", "End-to-end latency of a workflow call.",
            labels=["workflow"],
        )
        for name, s in stats:
            for met, count in sorted(s.calls.items()):
                calls.add_metric([name, met], count)
            duration.add_metric([name], s.duration.buckets(), s.duration.total)
        yield calls
        yield duration
        for metric, doc, attribute in (
            ("faasd_workflow_stage_queue_seconds",
             "Time a workflow stage waited in its queue, from its submission to its dispatch.",
             "stage_queue"),
            ("faasd_workflow_stage_exec_seconds", "Sandbox execution time of a stage's batch.",
             "stage_exec"),
        ):
            family = HistogramMetricFamily(metric, doc, labels=["workflow", "function_name"])
            for name, s in stats:
                for function, histogram in sorted(getattr(s, attribute).items()):
                    family.add_metric([name, function], histogram.buckets(), histogram.total)
            yield family

    def families(self) -> Iterator[Metric]:
        """The call metrics as Prometheus metric families (what a scrape reads)."""
        fn = ["function_name"]
        stats = sorted(self._functions.items())
        calls = CounterMetricFamily(
            "faasd_function_invocations", "Calls finished, by function and HTTP status.",
            labels=["function_name", "code"],
        )
        duration = HistogramMetricFamily(
            "faasd_function_duration_seconds", "End-to-end latency of a call, by status.",
            labels=["function_name", "code"],
        )
        for name, s in stats:
            for code, count in sorted(s.calls.items()):
                calls.add_metric([name, code], count)
                histogram = s.duration[code]
                duration.add_metric([name, code], histogram.buckets(), histogram.total)
        yield calls
        yield duration
        counters = (
            ("faasd_function_invocations_started", "Calls admitted to a queue.", "started"),
            ("faasd_function_inferences", "Calls executed (a batch of n counts n).",
             "inferences"),
            ("faasd_function_cold_starts", "Batches that had to start a new sandbox.",
             "cold_starts"),
            ("faasd_function_failed_batches", "Batches whose sandbox crashed or timed out.",
             "failed_batches"),
        )
        for metric, doc, attribute in counters:
            family = CounterMetricFamily(metric, doc, labels=fn)
            for name, s in stats:
                family.add_metric([name], getattr(s, attribute))
            yield family
        histograms = (
            ("faasd_function_queue_duration_seconds", "Time a call waited for its batch.",
             "queue"),
            ("faasd_function_batch_size", "Calls per executed batch.", "batch_size"),
        )
        for metric, doc, attribute in histograms:
            hist_family = HistogramMetricFamily(metric, doc, labels=fn)
            for name, s in stats:
                histogram = getattr(s, attribute)
                hist_family.add_metric([name], histogram.buckets(), histogram.total)
            yield hist_family
        compute = HistogramMetricFamily(
            "faasd_function_compute_duration_seconds", "Sandbox execution time of one batch.",
            labels=["function_name", "device"],
        )
        for name, s in stats:
            compute.add_metric([name, "cpu"], s.compute.buckets(), s.compute.total)
        yield compute
        inflight = GaugeMetricFamily(
            "faasd_function_inflight_requests", "Calls admitted and not yet answered.",
            labels=fn,
        )
        for name, s in stats:
            inflight.add_metric([name], s.inflight)
        yield inflight
        yield from self._workflow_families()
        yield from self._cluster_families()
        build = GaugeMetricFamily("faasd_build_info", "faasd version.", labels=["version"])
        build.add_metric([self._version], 1)
        yield build

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CallMetrics(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _LiveGauges(Collector):
    def __init__(
        self,
        queue_lengths: Callable[[], Mapping[str, int]],
        idle: Callable[[], Mapping[str, int]],
    ) -> None:
        self._queue_lengths = queue_lengths
        self._idle = idle

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queues = GaugeMetricFamily(
            "faasd_function_queue_length", "Calls waiting in the function's AFW queue.",
            labels=["function_name"],
        )
        for function, length in sorted(self._queue_lengths().items()):
            queues.add_metric([function], length)
        yield queues
        warm = GaugeMetricFamily(
            "faasd_function_warm_sandboxes", "Idle warm sandboxes of the function.",
            labels=["function_name"],
        )
        for function, count in sorted(self._idle().items()):
            warm.add_metric([function], count)
        yield warm

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
