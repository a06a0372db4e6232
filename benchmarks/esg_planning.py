"""ESG planning core: ESG_1Q time on groups of 3 × 256 configurations, brute force for the
ratio, and a 20-function workflow planned stage by stage.

Run from the repository root:

    .venv/bin/python benchmarks/esg_planning.py            # about a minute on one core
    .venv/bin/python benchmarks/esg_planning.py --json out.json
    .venv/bin/python benchmarks/esg_planning.py --parts wide   # only issue 12's wide surfaces

Instances: each function has 256 configurations, 4 batch sizes (1, 2, 4, 8) × 8 vCPU levels
(1, 2, 3, 4, 6, 8, 12, 16) × 8 GPU levels (0..7 units), latencies from a synthetic surface
(`esg.testing.synthetic_latency_ms`: sub-linear batch growth, Amdahl vCPU scaling with 10%
serial work, GPU speed-up up to 4–12× at 7 units) with ±5% seeded noise, costs from the default
prices (`configs/pricing.yaml`). Budgets are multiples of each group's fastest plan latency
(×0.9 is infeasible: ESG then returns the fastest plans). K = 8. Times are wall-clock
`time.perf_counter()` in one CPython process (one core).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from esg.model import Workflow
from esg.pricing import DEFAULT_PRICING
from esg.search import (
    Option,
    PreparedOptions,
    compile_group,
    prepare_options,
    search,
)
from esg.slo import split_slo
from esg.testing import options_of, synthetic_profile

K = 8
FACTORS = (0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, float("inf"))
CHAIN3 = (("f0", "f1"), ("f1", "f2"))


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(wall-clock milliseconds, value) of one call."""
    start = time.perf_counter()
    value = fn(*args)
    return (time.perf_counter() - start) * 1000.0, value


def _cpu_timed(fn: Callable[..., Any], *args: Any) -> tuple[float, float, Any]:
    """(wall-clock ms, this thread's CPU ms, value): on a shared machine the CPU time leaves
    out the time the process waited for a core."""
    start, cpu = time.perf_counter(), time.thread_time()
    value = fn(*args)
    return (time.perf_counter() - start) * 1000.0, (time.thread_time() - cpu) * 1000.0, value


def _plan(names: Sequence[str], edges: Any, tables: Any, budget: float) -> Any:
    """One planning call: assemble the group from its tables, then search it."""
    return search(compile_group(names, edges, tables, K), budget)


def _group_options(rng: random.Random, names: Sequence[str]) -> dict[str, list[Option]]:
    return {
        name: options_of(
            synthetic_profile(
                name,
                rng.uniform(10.0, 200.0),
                rng=rng,
                noise=0.05,
                gpu_speedup=rng.uniform(4.0, 12.0),
            ),
            DEFAULT_PRICING,
        )
        for name in names
    }


def bench_groups(instances: int, repeats: int, seed: int) -> dict[str, Any]:
    """ESG_1Q on chains of 3 × 256: per budget factor, median/p99 of prepared-table planning."""
    rng = random.Random(seed)
    names = ("f0", "f1", "f2")
    prepare_ms: list[float] = []
    per_factor: dict[float, dict[str, list[float]]] = {
        f: {"plan": [], "plan_cpu": [], "search": [], "cold": [], "expanded": []} for f in FACTORS
    }
    for _ in range(instances):
        options = _group_options(rng, names)
        prepared: dict[str, PreparedOptions] = {}
        for name in names:
            ms, prepared[name] = _timed(prepare_options, options[name], K, name)
            prepare_ms.append(ms)
        group = compile_group(names, CHAIN3, prepared, K)
        fastest_ms = group.fastest / group.lat_scale
        for factor in FACTORS:
            budget = fastest_ms * factor
            stats = per_factor[factor]
            for _ in range(repeats):
                # Planning = assembling the group from the per-profile tables + the search.
                ms, cpu_ms, result = _cpu_timed(_plan, names, CHAIN3, prepared, budget)
                stats["plan"].append(ms)
                stats["plan_cpu"].append(cpu_ms)
                ms, _ = _timed(search, group, budget)
                stats["search"].append(ms)
            ms, _ = _timed(_plan, names, CHAIN3, options, budget)
            stats["cold"].append(ms)
            stats["expanded"].append(result.expanded)
    rows = []
    all_plan: list[float] = []
    all_cpu: list[float] = []
    all_cold: list[float] = []
    for factor, stats in per_factor.items():
        all_plan += stats["plan"]
        all_cpu += stats["plan_cpu"]
        all_cold += stats["cold"]
        rows.append(
            {
                "budget": "infeasible (x0.9)" if factor == 0.9 else f"x{factor:g} fastest",
                "plan_median_ms": statistics.median(stats["plan"]),
                "plan_p99_ms": _percentile(stats["plan"], 0.99),
                "plan_cpu_median_ms": statistics.median(stats["plan_cpu"]),
                "plan_cpu_p99_ms": _percentile(stats["plan_cpu"], 0.99),
                "search_median_ms": statistics.median(stats["search"]),
                "cold_median_ms": statistics.median(stats["cold"]),
                "expanded_mean": statistics.fmean(stats["expanded"]),
            }
        )
    return {
        "instances": instances,
        "repeats": repeats,
        "prepare_median_ms": statistics.median(prepare_ms),
        "rows": rows,
        "plan_median_ms": statistics.median(all_plan),
        "plan_p99_ms": _percentile(all_plan, 0.99),
        "plan_cpu_median_ms": statistics.median(all_cpu),
        "plan_cpu_p99_ms": _percentile(all_cpu, 0.99),
        "cold_median_ms": statistics.median(all_cold),
        "cold_p99_ms": _percentile(all_cold, 0.99),
    }


SHAPES = {
    "chain": CHAIN3,
    "fork": (("f0", "f1"), ("f0", "f2")),
    "join": (("f0", "f2"), ("f1", "f2")),
    "independent": (),
}


def bench_infeasible(instances: int, repeats: int, seed: int) -> dict[str, Any]:
    """The K fastest plans at 0.9 x the fastest critical path (no plan meets the budget), on
    the four shapes of 3 x 256: the planning call (group assembled from prepared tables, then
    searched), its CPU time, and the nodes expanded."""
    rng = random.Random(seed + 3)
    names = ("f0", "f1", "f2")
    out: dict[str, Any] = {}
    for shape, edges in SHAPES.items():
        wall: list[float] = []
        cpu: list[float] = []
        expanded: list[int] = []
        for _ in range(instances):
            options = _group_options(rng, names)
            prepared = {n: prepare_options(options[n], K, n) for n in names}
            group = compile_group(names, edges, prepared, K)
            budget = group.fastest / group.lat_scale * 0.9
            for _ in range(repeats):
                ms, cpu_ms, result = _cpu_timed(_plan, names, edges, prepared, budget)
                wall.append(ms)
                cpu.append(cpu_ms)
            assert not result.feasible and len(result.plans) == K
            expanded.append(result.expanded)
        out[shape] = {
            "plan_median_ms": statistics.median(wall),
            "plan_max_ms": max(wall),
            "plan_cpu_median_ms": statistics.median(cpu),
            "plan_cpu_max_ms": max(cpu),
            "expanded_mean": statistics.fmean(expanded),
            "expanded_max": max(expanded),
        }
    return out


#: A wide surface: 8 batch sizes x 8 vCPU levels x 4 GPU levels = 256 configurations, 5%
#: serial work and 40% of a batch of one per extra item, so that most vCPU and batch steps
#: trade latency for cost per request: about 40 configurations per function are
#: Pareto-optimal in (latency, cost per request), where the default surface has about 20.
WIDE_GRID = {"batches": tuple(range(1, 9)), "vcpus": tuple(range(1, 9)), "vgpus": (0, 1, 2, 3)}


def _wide_options(rng: random.Random, names: Sequence[str]) -> dict[str, list[Option]]:
    return {
        name: options_of(
            synthetic_profile(
                name,
                rng.uniform(10.0, 200.0),
                rng=rng,
                noise=0.02,
                gpu_speedup=6.0,
                serial=0.05,
                per_item=0.4,
                **WIDE_GRID,  # type: ignore[arg-type]
            ),
            DEFAULT_PRICING,
        )
        for name in names
    }


def pareto_size(options: Sequence[Option]) -> int:
    """How many options no other option beats on both latency and cost per request."""
    count, best = 0, float("inf")
    for _, cost in sorted((o.latency_ms, o.cost) for o in options):
        if cost < best:
            count, best = count + 1, cost
    return count


def _replan(
    names: Sequence[str],
    prepared: dict[str, PreparedOptions],
    options: dict[str, list[Option]],
    changed: str,
    budget: float,
) -> Any:
    """The planning call after `changed`'s profile changed: its options prepared again, then
    the group assembled and searched."""
    tables = dict(prepared)
    tables[changed] = prepare_options(options[changed], K, changed)
    return _plan(names, CHAIN3, tables, budget)


def bench_wide(instances: int, repeats: int, seed: int) -> dict[str, Any]:
    """Issue 12's wide surfaces: the 3 x 256, K = 8 chain planning call on surfaces with 30+
    Pareto-optimal configurations per function, per budget factor, with prepared tables
    (`plan`) and after one function's profile changed (`changed`: that function's options
    prepared again, then the group assembled and searched); wall-clock and CPU time."""
    rng = random.Random(seed + 4)
    names = ("f0", "f1", "f2")
    factors = (0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, float("inf"))
    series = ("plan", "plan_cpu", "changed", "changed_cpu")
    times: dict[str, dict[float, list[float]]] = {s: {f: [] for f in factors} for s in series}
    expanded: dict[float, list[int]] = {f: [] for f in factors}
    fronts: list[int] = []
    for _ in range(instances):
        options = _wide_options(rng, names)
        fronts += [pareto_size(options[n]) for n in names]
        prepared = {n: prepare_options(options[n], K, n) for n in names}
        group = compile_group(names, CHAIN3, prepared, K)
        fastest_ms = group.fastest / group.lat_scale
        for factor in factors:
            budget = fastest_ms * factor
            for r in range(repeats):
                ms, cpu_ms, result = _cpu_timed(_plan, names, CHAIN3, prepared, budget)
                times["plan"][factor].append(ms)
                times["plan_cpu"][factor].append(cpu_ms)
                ms, cpu_ms, _ = _cpu_timed(_replan, names, prepared, options, names[r % 3], budget)
                times["changed"][factor].append(ms)
                times["changed_cpu"][factor].append(cpu_ms)
            expanded[factor].append(result.expanded)
    rows = []
    for f in factors:
        row: dict[str, Any] = {"budget": "infeasible (x0.9)" if f == 0.9 else f"x{f:g} fastest"}
        for s in series:
            row[f"{s}_median_ms"] = statistics.median(times[s][f])
            row[f"{s}_p99_ms"] = _percentile(times[s][f], 0.99)
        row["expanded_mean"] = statistics.fmean(expanded[f])
        rows.append(row)
    out: dict[str, Any] = {
        "instances": instances,
        "pareto_per_function_min": min(fronts),
        "pareto_per_function_median": statistics.median(fronts),
        "rows": rows,
    }
    for s in series:
        every = [ms for f in factors for ms in times[s][f]]
        out[f"{s}_median_ms"] = statistics.median(every)
        out[f"{s}_p99_ms"] = _percentile(every, 0.99)
    return out


def _numpy_brute_force(options: dict[str, list[Option]], budget_ms: float) -> list[float]:
    """All 256^3 chain plans, vectorised: the costs of the K cheapest feasible ones."""
    names = ("f0", "f1", "f2")
    cost = [np.array([o.cost for o in options[n]]) for n in names]
    lat = [np.array([o.latency_ms for o in options[n]]) for n in names]
    total_cost = (cost[0][:, None, None] + cost[1][None, :, None]) + cost[2][None, None, :]
    total_lat = (lat[0][:, None, None] + lat[1][None, :, None]) + lat[2][None, None, :]
    masked = np.where(total_lat <= budget_ms, total_cost, np.inf).ravel()
    top = np.argpartition(masked, K + 8)[: K + 8]
    top = top[np.lexsort((total_lat.ravel()[top], masked[top]))][:K]
    return [float(masked[i]) for i in top if np.isfinite(masked[i])]


def bench_brute_force(instances: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed + 1)
    names = ("f0", "f1", "f2")
    numpy_ms, esg_ms, agree = [], [], 0
    checked = 0
    for _ in range(instances):
        options = _group_options(rng, names)
        group = compile_group(names, CHAIN3, options, K)
        fastest_ms = group.fastest / group.lat_scale
        for factor in (1.1, 2.0, 10.0):
            budget = fastest_ms * factor
            ms, expected = _timed(_numpy_brute_force, options, budget)
            numpy_ms.append(ms)
            ms, result = _timed(_plan, names, CHAIN3, options, budget)
            esg_ms.append(ms)
            got = [p.cost for p in result.plans]
            checked += 1
            # numpy adds in floating point, ESG exactly: equal up to rounding.
            agree += len(got) == len(expected) and all(
                abs(a - b) <= 1e-12 * max(abs(b), 1e-30) for a, b in zip(got, expected, strict=True)
            )
    # Pure Python for reference: time a sample of the loop and extrapolate to 256^3.
    options = _group_options(rng, names)
    rows = [[(o.cost, o.latency_ms) for o in options[n]] for n in names]
    sample = 200_000
    start = time.perf_counter()
    best: list[float] = []
    for (c0, l0), (c1, l1), (c2, l2) in itertools.islice(itertools.product(*rows), sample):
        if l0 + l1 + l2 <= 500.0:
            best.append(c0 + c1 + c2)
    python_ms = (time.perf_counter() - start) * 1000.0 * (256**3 / sample)
    return {
        "instances": checked,
        "numpy_median_ms": statistics.median(numpy_ms),
        "esg_cold_median_ms": statistics.median(esg_ms),
        "ratio_numpy_over_esg": statistics.median(numpy_ms) / statistics.median(esg_ms),
        "python_extrapolated_ms": python_ms,
        "top_k_agree": f"{agree}/{checked}",
    }


def _workflow20() -> tuple[Workflow, list[tuple[str, str]]]:
    """20 functions: a chain with two fork/join diamonds and a 3-way fan-out."""
    edges = [(f"s{i}", f"s{i + 1}") for i in range(4)]  # s0..s4
    edges += [("s4", "a1"), ("s4", "a2"), ("a1", "j1"), ("a2", "j1")]  # diamond
    edges += [("j1", "m0"), ("m0", "m1"), ("m1", "m2")]
    edges += [("m2", "b1"), ("m2", "b2"), ("m2", "b3"), ("b1", "j2"), ("b2", "j2"), ("b3", "j2")]
    edges += [(f"t{i}", f"t{i + 1}") for i in range(4)]
    edges += [("j2", "t0")]
    names = sorted({f for e in edges for f in e})
    assert len(names) == 20, len(names)
    return Workflow.from_edges("w20", names, edges, slo_s=1.0), edges


def bench_workflow(repeats: int, seed: int) -> dict[str, Any]:
    """Plan a 20-function workflow stage by stage, as the policy does, with the time left."""
    rng = random.Random(seed + 2)
    workflow, _ = _workflow20()
    options = _group_options(rng, workflow.functions)
    t_prepare, prepared = _timed(
        lambda: {f: prepare_options(options[f], K, f) for f in workflow.functions}
    )
    fastest = {f: min(o.latency_ms for o in options[f]) for f in workflow.functions}
    latency = {f: {o.config: o.latency_ms for o in options[f]} for f in workflow.functions}
    # SLO = 1.5 × the fastest critical path: a moderate budget.
    slo_ms = 1.5 * max(split_slo(workflow, fastest).earliest_finish_ms.values())
    totals, totals_cpu, stage_ms = [], [], []
    finish: dict[str, float] = {}
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        split = split_slo(workflow, fastest, slo_ms=slo_ms, group_size=3)
        finish = {}
        for f in workflow.topological_order():
            stage_start = time.perf_counter()
            # Each stage starts when its inputs are there; it ran as planned (no noise).
            ready_ms = max((finish[p] for p in workflow.predecessors(f)), default=0.0)
            members, edges = split.remaining(f)
            budget = split.budget_ms(f, elapsed_ms=ready_ms)
            group = compile_group(members, edges, {m: prepared[m] for m in members}, K)
            result = search(group, budget)
            finish[f] = ready_ms + latency[f][result.plans[0].configs[f]]
            stage_ms.append((time.perf_counter() - stage_start) * 1000.0)
        totals.append((time.perf_counter() - start) * 1000.0)
        totals_cpu.append((time.thread_time() - start_cpu) * 1000.0)
    return {
        "functions": len(workflow.functions),
        "slo_ms": slo_ms,
        "groups": [list(g.functions) for g in split.groups],
        "end_to_end_ms": max(finish.values()),
        "slo_met": max(finish.values()) <= slo_ms,
        "total_median_ms": statistics.median(totals),
        "total_max_ms": max(totals),
        "total_cpu_median_ms": statistics.median(totals_cpu),
        "total_cpu_max_ms": max(totals_cpu),
        "stage_median_ms": statistics.median(stage_ms),
        "prepare_all_profiles_ms": t_prepare,
    }


def machine() -> dict[str, str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "os": platform.platform(),
    }


PARTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "groups": lambda a: bench_groups(a.instances, a.repeats, a.seed),
    "infeasible": lambda a: bench_infeasible(max(4, a.instances // 2), a.repeats, a.seed),
    "wide": lambda a: bench_wide(max(4, a.instances // 2), a.repeats, a.seed),
    "brute_force": lambda a: bench_brute_force(max(2, a.instances // 8), a.seed),
    "workflow20": lambda a: bench_workflow(max(5, a.repeats * 4), a.seed),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default: all of {','.join(PARTS)})",
    )
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    results: dict[str, Any] = {"machine": machine()}
    for part in PARTS:
        if part in parts:
            results[part] = PARTS[part](args)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
