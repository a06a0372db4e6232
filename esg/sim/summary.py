"""Mean ± spread over seeds: one row per policy × cell from results.csv's one row per seed.

The spread is the sample standard deviation across seeds (n − 1 in the denominator; 0 with a
single seed). NaN values (a policy that never plans has no configuration miss rate; a cell
without ESG has no normalised cost) are left out of both; a column that is NaN for every seed
stays NaN.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

#: The metrics whose mean and spread the summary keeps.
SUMMARISED = (
    "slo_hit_rate", "cost_norm", "p50_ms", "p99_ms", "overhead_p50_ms", "overhead_p99_ms",
    "config_miss_rate", "drop_rate", "cold_start_rate", "cost_per_request",
)
KEYS = ("policy", "workload", "slo", "profile_error")


def summary_rows(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Rows grouped by policy × cell (in the order they first appear): `seeds` (how many),
    then `<metric>_mean` and `<metric>_sd` for every metric in SUMMARISED."""
    groups: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in KEYS), []).append(row)
    out = []
    for key, members in groups.items():
        summary: dict[str, object] = dict(zip(KEYS, key, strict=True))
        summary["seeds"] = len(members)
        for column in SUMMARISED:
            values = [float(v) for m in members
                      if isinstance(v := m[column], int | float) and not math.isnan(v)]
            summary[f"{column}_mean"] = statistics.fmean(values) if values else math.nan
            summary[f"{column}_sd"] = statistics.stdev(values) if len(values) > 1 else (
                0.0 if values else math.nan
            )
        out.append(summary)
    return out


def write_summary_csv(summary: Sequence[dict[str, object]], path: Path) -> None:
    columns = [*KEYS, "seeds"] + [f"{c}_{s}" for c in SUMMARISED for s in ("mean", "sd")]
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for row in summary:
            writer.writerow({k: _fmt(row[k]) for k in columns})


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def mean_sd(row: dict[str, object], column: str, *, percent: bool = False) -> str:
    """"99.1 ± 0.4" (the spread left out with a single seed), "" when NaN."""
    mean, sd = row[f"{column}_mean"], row[f"{column}_sd"]
    assert isinstance(mean, float) and isinstance(sd, float)
    if math.isnan(mean):
        return ""
    scale, digits = (100.0, 1) if percent else (1.0, 2)
    text = f"{scale * mean:.{digits}f}"
    return text if row["seeds"] == 1 else f"{text} ± {scale * sd:.{digits}f}"


def pivot(
    summary: Sequence[dict[str, object]], column: str, load: str, slos: Sequence[str],
    *, percent: bool = False,
) -> str:
    """One row per policy, one column per SLO setting of `load`: mean ± spread of `column`."""
    lines = ["| policy | " + " | ".join(slos) + " |", "|" + "---|" * (len(slos) + 1)]
    for policy in dict.fromkeys(str(r["policy"]) for r in summary):
        cells = []
        for slo in slos:
            match = [r for r in summary
                     if r["policy"] == policy and r["workload"] == load and r["slo"] == slo]
            cells.append(mean_sd(match[0], column, percent=percent) if match else "")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
