"""`python -m esg.sim report [--quick] [--out DIR] [--seed N] [--jobs N] [--policies a,b]`.

The I/O shell of the simulator: runs the grid (in `--jobs` worker processes), shows a progress
bar on stderr, measures each policy call with `time.perf_counter`, and writes `results.csv`,
`results.md` and the PNG figures into `--out`.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from esg.policies import POLICIES
from esg.sim.metrics import RunMetrics
from esg.sim.report import (
    ReportSettings,
    available_policies,
    cells,
    results_markdown,
    run_cell,
    table_rows,
    write_csv,
)


def _run(task: tuple[str, str, str, ReportSettings]) -> RunMetrics:
    policy, load, slo, settings = task
    return run_cell(policy, load, slo, settings, time.perf_counter)


def _progress(done: int, total: int, label: str, started: float) -> None:
    width = 30
    filled = width * done // max(1, total)
    elapsed = time.perf_counter() - started
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                     f"{elapsed:5.0f}s {label:<40}")
    sys.stderr.flush()


def report(settings: ReportSettings, out: Path, jobs: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    policies, missing = available_policies(settings.policies)
    for name, why in missing.items():
        print(f"skipping {name}: {why}", file=sys.stderr)
    tasks = [(p, load, slo, settings) for load, slo in cells() for p in policies]
    # The slowest policies first, so that the pool does not end on one long run.
    tasks.sort(key=lambda t: (t[0] not in ("esg", "orion"), t[1] != "heavy"))
    results: list[RunMetrics] = []
    started = time.perf_counter()
    _progress(0, len(tasks), "", started)
    if jobs <= 1:
        for task in tasks:
            results.append(_run(task))
            _progress(len(results), len(tasks), f"{task[0]} {task[1]}/{task[2]}", started)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_run, task): task for task in tasks}
            for future in as_completed(futures):
                task = futures[future]
                results.append(future.result())
                _progress(len(results), len(tasks), f"{task[0]} {task[1]}/{task[2]}", started)
    sys.stderr.write("\n")
    order = {name: i for i, name in enumerate(POLICIES)}
    results.sort(key=lambda m: (m.scenario, order.get(m.policy, len(order)), m.policy))
    rows = table_rows(results)
    write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(results_markdown(rows))
    from esg.sim.figures import write_figures

    for path in write_figures(results, out):
        print(path)
    print(out / "results.csv")
    print(out / "results.md")
    print(f"{len(results)} runs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esg.sim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="run every policy on the 3 × 3 grid and write results")
    rep.add_argument("--quick", action="store_true", help="tiny cells (a test run, < 60 s)")
    rep.add_argument("--out", type=Path, default=Path("sim-report"), help="output directory")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    rep.add_argument("--policies", default=",".join(POLICIES),
                     help="comma-separated policy names (default: all)")
    args = parser.parse_args(argv)
    settings = ReportSettings.quick(args.seed) if args.quick else ReportSettings(seed=args.seed)
    names = tuple(n.strip() for n in args.policies.split(",") if n.strip())
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    settings = ReportSettings(settings.nodes, settings.duration_s, settings.warmup_s,
                              settings.seed, names)
    return report(settings, args.out, args.jobs)
