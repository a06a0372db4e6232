"""The daemon's metrics: the text a scrape reads, checked against prometheus_client's own."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from faasd.metrics import LATENCY_BUCKETS_S, Metrics


def samples(text: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name in {name + s for s in ("_total", "_bucket", "_count", "_sum")}:
                out[(("sample", sample.name), *sorted(sample.labels.items()))] = sample.value
    return out


def test_call_metrics_read_as_prometheus_client_would_write_them() -> None:
    rng = random.Random(7)
    ours = Metrics("1.2.3")
    reference = CollectorRegistry()
    calls = Counter("faasd_function_invocations", "", ["function_name", "code"],
                    registry=reference)
    duration = Histogram("faasd_function_duration_seconds", "", ["function_name", "code"],
                         buckets=LATENCY_BUCKETS_S, registry=reference)
    for _ in range(500):
        function = rng.choice(["a", "b"])
        code = rng.choice([200, 200, 400, 503])
        seconds = rng.choice([rng.expovariate(200), 0.001, 0.0005, 61.0])  # bounds included
        ours.call_started(function)
        ours.call_finished(function, code, seconds)
        calls.labels(function, str(code)).inc()
        duration.labels(function, str(code)).observe(seconds)
    text = ours.render()
    for name in ("faasd_function_invocations", "faasd_function_duration_seconds"):
        expected = samples(generate_latest(reference), name)
        got = samples(text, name)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key
    assert 'faasd_function_inflight_requests{function_name="a"} 0.0' in text.decode()
    assert 'faasd_build_info{version="1.2.3"} 1.0' in text.decode()


def test_batches_and_live_gauges() -> None:
    metrics = Metrics("0")
    metrics.call_started("f")
    metrics.queued("f", 0.002)
    metrics.batch_ran("f", 5, 0.004, cold_start=True)
    metrics.batch_ran("f", 3, 0.001, cold_start=False)
    metrics.batch_failed("f")
    metrics.watch(lambda: {"f": 4}, lambda: {"f": 2, "g": 1})
    text = metrics.render().decode()
    for line in (
        'faasd_function_invocations_started_total{function_name="f"} 1.0',
        'faasd_function_inflight_requests{function_name="f"} 1.0',
        'faasd_function_inferences_total{function_name="f"} 8.0',
        'faasd_function_cold_starts_total{function_name="f"} 1.0',
        'faasd_function_failed_batches_total{function_name="f"} 1.0',
        'faasd_function_batch_size_bucket{function_name="f",le="4.0"} 1.0',
        'faasd_function_batch_size_bucket{function_name="f",le="8.0"} 2.0',
        'faasd_function_batch_size_count{function_name="f"} 2.0',
        'faasd_function_batch_size_sum{function_name="f"} 8.0',
        'faasd_function_compute_duration_seconds_count{device="cpu",function_name="f"} 2.0',
        'faasd_function_queue_duration_seconds_bucket{function_name="f",le="0.0025"} 1.0',
        'faasd_function_queue_length{function_name="f"} 4.0',
        'faasd_function_warm_sandboxes{function_name="f"} 2.0',
        'faasd_function_warm_sandboxes{function_name="g"} 1.0',
    ):
        assert line in text, line
