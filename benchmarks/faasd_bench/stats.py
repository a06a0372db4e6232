"""Latency summaries: percentiles of samples in seconds, reported in milliseconds.

Percentiles are numpy's default (linear interpolation between the two nearest order
statistics), so p99 of 400 samples lies between the 4th and 5th largest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Percentiles of one series of call latencies, in milliseconds."""

    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


def summarize(samples_s: Sequence[float]) -> Latency:
    """Summary of latencies given in seconds. Raises ValueError on an empty series."""
    if not samples_s:
        raise ValueError("no samples to summarize")
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return Latency(len(ms), float(p50), float(p90), float(p99), float(ms.mean()), float(ms.max()))


@dataclass(frozen=True)
class Overhead:
    """What a served call adds over the in-process baseline, percentile by percentile.

    `p50_ms = p50(served) - p50(baseline)` and likewise for p99: the difference of the two
    series' percentiles, both series taken interleaved in the same loop. `paired_p50_ms` is
    the median of the per-iteration differences, a second view less sensitive to drift.
    """

    p50_ms: float
    p99_ms: float
    paired_p50_ms: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


def overhead(served_s: Sequence[float], baseline_s: Sequence[float]) -> Overhead:
    """Overhead of `served_s` over `baseline_s` (same length, sample i of each from iteration i)."""
    if len(served_s) != len(baseline_s):
        raise ValueError(f"paired series differ in length: {len(served_s)} vs {len(baseline_s)}")
    served, baseline = summarize(served_s), summarize(baseline_s)
    paired = np.median(np.asarray(served_s) - np.asarray(baseline_s)) * 1e3
    return Overhead(
        served.p50_ms - baseline.p50_ms, served.p99_ms - baseline.p99_ms, float(paired)
    )
