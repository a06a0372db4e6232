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


#: Ours: the issue's target is met in a cell where either has the best hit rate at no more
#: cost than the best of the field.
OURS = ("esg", "esg-plus")


def standings(
    rows: Sequence[dict[str, object]], ours: Sequence[str] = OURS,
) -> list[dict[str, object]]:
    """Per cell (in the order cells first appear in `rows`, one row per seed), our policies
    against the leader of the field (the policy not ours with the best mean hit rate; the
    cheaper mean cost breaks a tie):

    `leader`, `leader_hits` and `leader_cost` (means of the hit rate and of `cost_norm`, as
    `summary_rows` takes them); per
    policy of ours present, `<name>_hits`, `<name>_cost`, `<name>_margin` (its hit rate minus
    the leader's, mean of the per-seed differences, and `<name>_margin_sd` their spread over
    the seeds both ran) and `<name>_wins`: the best mean hit rate of the field at no more mean
    cost than the leader's. A NaN cost (a cell without ESG to normalise to) never wins.
    """
    cells: dict[tuple[str, str], dict[str, dict[int, dict[str, object]]]] = {}
    for row in rows:
        cell = cells.setdefault((str(row["workload"]), str(row["slo"])), {})
        cell.setdefault(str(row["policy"]), {})[int(str(row["seed"]))] = row
    means = {(str(r["workload"]), str(r["slo"]), str(r["policy"])): r
             for r in summary_rows(rows)}
    out = []
    for (load, slo), by_policy in cells.items():
        hits = {p: float(str(means[load, slo, p]["slo_hit_rate_mean"])) for p in by_policy}
        cost = {p: float(str(means[load, slo, p]["cost_norm_mean"])) for p in by_policy}
        field = [p for p in by_policy if p not in ours]
        if not field:
            continue
        leader = min(field, key=lambda p: (-hits[p], cost[p]))
        standing: dict[str, object] = {
            "workload": load, "slo": slo, "leader": leader,
            "leader_hits": hits[leader], "leader_cost": cost[leader],
        }
        for name in ours:
            if name not in by_policy:
                continue
            seeds = sorted(by_policy[name].keys() & by_policy[leader].keys())
            margins = [float(str(by_policy[name][s]["slo_hit_rate"]))
                       - float(str(by_policy[leader][s]["slo_hit_rate"])) for s in seeds]
            standing[f"{name}_hits"], standing[f"{name}_cost"] = hits[name], cost[name]
            standing[f"{name}_margin"] = statistics.fmean(margins) if margins else math.nan
            standing[f"{name}_margin_sd"] = (
                statistics.stdev(margins) if len(margins) > 1 else 0.0 if margins else math.nan
            )
            standing[f"{name}_wins"] = hits[name] > hits[leader] and cost[name] <= cost[leader]
        out.append(standing)
    return out


def standings_table(standings_rows: Sequence[dict[str, object]]) -> str:
    """Markdown: one row per cell, the field's leader, then each of ours with its margin over
    the leader (points, mean ± spread over seeds), its cost next to the leader's, and whether
    it wins (best hit rate at no more cost)."""
    ours = [name for name in OURS if any(f"{name}_hits" in r for r in standings_rows)]
    head = ["load", "SLO", "leader of the field (hits %, cost)"]
    for name in ours:
        head += [f"{name} hits %", f"{name} margin (points)", f"{name} cost", f"{name} wins"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in standings_rows:
        cells = [str(r["workload"]), str(r["slo"]),
                 f"{r['leader']} ({100 * float(str(r['leader_hits'])):.1f}, "
                 f"{float(str(r['leader_cost'])):.2f})"]
        for name in ours:
            if f"{name}_hits" not in r:
                cells += ["", "", "", ""]
                continue
            cells += [f"{100 * float(str(r[f'{name}_hits'])):.1f}",
                      f"{100 * float(str(r[f'{name}_margin'])):+.1f} ± "
                      f"{100 * float(str(r[f'{name}_margin_sd'])):.1f}",
                      f"{float(str(r[f'{name}_cost'])):.2f}",
                      "yes" if r[f"{name}_wins"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    wins = {name: sum(1 for r in standings_rows if r.get(f"{name}_wins")) for name in ours}
    either = sum(1 for r in standings_rows if any(r.get(f"{name}_wins") for name in ours))
    lines.append("")
    lines.append(", ".join(f"{name} wins {n} of {len(standings_rows)} cells"
                           for name, n in wins.items())
                 + f"; one of ours wins {either} of {len(standings_rows)}.")
    return "\n".join(lines) + "\n"
