"""Prometheus metrics, all named `faasd_*` (reference: ecosystem notes §5.3).

One `CollectorRegistry` per daemon (not the process-global one), so several daemons in one
process — the tests — never share counters. Labels are `function_name` and `code`; never a
call id. Queue lengths and warm sandboxes are read live at scrape time from the controller
and the pool through `watch()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from esg.model import Config

#: 0.5 ms … 60 s: inference on CPU is often faster than the client library's 5 ms floor.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.invocations = Counter(
            "faasd_function_invocations", "Calls finished, by function and HTTP status.",
            ["function_name", "code"], registry=r,
        )
        self.started = Counter(
            "faasd_function_invocations_started", "Calls admitted to a queue.",
            ["function_name"], registry=r,
        )
        self.duration = Histogram(
            "faasd_function_duration_seconds", "End-to-end latency of a call, by status.",
            ["function_name", "code"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.queue_duration = Histogram(
            "faasd_function_queue_duration_seconds", "Time a call waited for its batch.",
            ["function_name"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.compute = Histogram(
            "faasd_function_compute_duration_seconds", "Sandbox execution time of one batch.",
            ["function_name", "device"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.batch_size = Histogram(
            "faasd_function_batch_size", "Calls per executed batch.",
            ["function_name"], buckets=BATCH_BUCKETS, registry=r,
        )
        self.inferences = Counter(
            "faasd_function_inferences", "Calls executed (a batch of n counts n).",
            ["function_name"], registry=r,
        )
        self.cold_starts = Counter(
            "faasd_function_cold_starts", "Batches that had to start a new sandbox.",
            ["function_name"], registry=r,
        )
        self.failed_batches = Counter(
            "faasd_function_failed_batches", "Batches whose sandbox crashed or timed out.",
            ["function_name"], registry=r,
        )
        self.inflight = Gauge(
            "faasd_function_inflight_requests", "Calls admitted and not yet answered.",
            ["function_name"], registry=r,
        )
        build = Gauge("faasd_build_info", "faasd version.", ["version"], registry=r)
        build.labels(version=version).set(1)

    def watch(
        self,
        queue_lengths: Callable[[], Mapping[str, int]],
        warm: Callable[[], Mapping[tuple[str, Config], int]],
    ) -> None:
        """Expose live gauges read at scrape time."""
        self.registry.register(_LiveGauges(queue_lengths, warm))

    def _of(self, metric: Any, *labels: str) -> Any:
        """The labelled child of `metric`, cached: `labels()` costs more than the update."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def call_started(self, function: str) -> None:
        self._of(self.started, function).inc()
        self._of(self.inflight, function).inc()

    def call_finished(self, function: str, code: int, duration_s: float) -> None:
        self._of(self.inflight, function).dec()
        self.call_rejected(function, code, duration_s)

    def call_rejected(self, function: str, code: int, duration_s: float) -> None:
        """A call that never reached a queue (bad input, overload)."""
        status = str(code)
        self._of(self.invocations, function, status).inc()
        self._of(self.duration, function, status).observe(duration_s)

    def queued(self, function: str, queue_s: float) -> None:
        self._of(self.queue_duration, function).observe(queue_s)

    def batch_ran(self, function: str, size: int, exec_s: float, cold_start: bool) -> None:
        self._of(self.compute, function, "cpu").observe(exec_s)
        self._of(self.batch_size, function).observe(size)
        self._of(self.inferences, function).inc(size)
        if cold_start:
            self._of(self.cold_starts, function).inc()

    def batch_failed(self, function: str) -> None:
        self._of(self.failed_batches, function).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveGauges(Collector):
    def __init__(
        self,
        queue_lengths: Callable[[], Mapping[str, int]],
        warm: Callable[[], Mapping[tuple[str, Config], int]],
    ) -> None:
        self._queue_lengths = queue_lengths
        self._warm = warm

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
        totals: dict[str, int] = {}
        for (function, _config), count in self._warm().items():
            totals[function] = totals.get(function, 0) + count
        for function, count in sorted(totals.items()):
            warm.add_metric([function], count)
        yield warm

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
