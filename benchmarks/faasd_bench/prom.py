"""The daemon's own account of where time went, from two scrapes of `/metrics`.

Pure: Prometheus text in, numbers out. Only what the benchmarks read: the `_sum` and `_count`
of a histogram for one function, differenced between two scrapes, as a mean.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Samples = Mapping[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample line of a Prometheus text exposition, keyed by (name, label set)."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        key = (name, frozenset(_LABEL.findall(labels or "")))
        samples[key] = float(value)
    return samples


def _total(samples: Samples, name: str, labels: Mapping[str, str]) -> float:
    """Sum over every series of `name` whose labels include `labels` (e.g. all status codes)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def histogram_mean(before: Samples, after: Samples, name: str,
                   labels: Mapping[str, str]) -> tuple[int, float]:
    """(observations, their mean) of histogram `name` between two scrapes; mean 0 if none."""
    count = _total(after, f"{name}_count", labels) - _total(before, f"{name}_count", labels)
    total = _total(after, f"{name}_sum", labels) - _total(before, f"{name}_sum", labels)
    return int(count), (total / count if count else 0.0)
