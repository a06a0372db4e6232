"""Every daemon benchmark in one run, against one daemon and one peer: what `make bench` runs.

Order matters: memory first (the daemon must still be idle), then the warm overhead, the cold
starts and the tiny model under load. A phase that fails is recorded and the others still
run; the exit status is 1 if any failed. Results go to `benchmarks/results/daemon-<UTC>.json`
(git-ignored) and a Markdown summary against the targets is printed. Then the ESG planning
benchmark (`esg_planning.py`, its own script) runs unless `--no-esg`. About 2–3 minutes on
2 cores (plus a minute once to create the peer's virtual environment).

    .venv/bin/python benchmarks/run_all.py [--quick] [--no-peer] [--no-esg]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cold_start
import memory
import tiny_throughput
import warm_overhead
from faasd_bench import machine, report, wrk
from faasd_bench.session import Bench, Options, open_bench

RESULTS = Path(__file__).resolve().parent / "results"


def _phases(quick: bool) -> list[tuple[str, Callable[[Bench], dict[str, Any]]]]:
    calls, seconds, samples = (100, 4.0, 2) if quick else (400, 10.0, 5)
    return [
        ("memory", memory.measure),
        ("warm_overhead", lambda b: warm_overhead.measure(b, calls=calls)),
        ("cold_start", lambda b: cold_start.measure(b, samples=samples)),
        ("tiny_throughput", lambda b: tiny_throughput.measure(b, duration_s=seconds)),
    ]


def _run_phases(bench: Bench, quick: bool, results: dict[str, Any], began: float) -> None:
    results["machine"] = machine.describe()  # the peer's venv may be new now
    if bench.peer_error:
        results["errors"]["peer"] = bench.peer_error
    for name, phase in _phases(quick):
        print(f"[{time.monotonic() - began:5.0f} s] {name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = phase(bench)
        except Exception as exc:  # one phase's failure must not hide the others' figures
            traceback.print_exc()
            results["errors"][name] = f"{type(exc).__name__}: {exc}"


def _esg_planning(stamp: str) -> str | None:
    """Run the ESG planning benchmark (its own script, one core, about a minute) after the
    daemon's, so `make bench` covers both sections of docs/benchmarks.md. None if it passed."""
    script = Path(__file__).resolve().parent / "esg_planning.py"
    if not script.is_file():
        return None
    out = RESULTS / f"esg-{stamp}.json"
    print(f"esg planning ... (results: {out})", file=sys.stderr, flush=True)
    argv = [sys.executable, str(script), "--json", str(out)]
    try:
        done = subprocess.run(argv, timeout=300, check=False, stdout=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "esg_planning.py ran past 300 s"
    return None if done.returncode == 0 else f"esg_planning.py exited {done.returncode}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, to check the harness")
    parser.add_argument("--no-esg", action="store_true",
                        help="skip the ESG planning benchmark (esg_planning.py)")
    Options.add_arguments(parser)
    args = parser.parse_args()
    options = Options.from_args(args)
    try:
        wrk.ensure_installed()  # before any server starts; the load phase says so if it failed
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"wrk is missing and could not be installed: {exc}", file=sys.stderr)
    results: dict[str, Any] = {"machine": machine.describe(), "options": vars(options),
                               "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "errors": {}}
    results["load_average"] = {"start": round(os.getloadavg()[0], 2)}
    began = time.monotonic()
    try:
        with open_bench(options) as bench:
            _run_phases(bench, args.quick, results, began)
    except (RuntimeError, OSError) as exc:  # the daemon did not start: say so in the results
        traceback.print_exc()
        results["errors"]["daemon"] = f"{type(exc).__name__}: {exc}"
    results["wall_s"] = round(time.monotonic() - began, 1)
    results["load_average"]["end"] = round(os.getloadavg()[0], 2)
    stamp = results["started_utc"].replace(":", "")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"daemon-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(report.render(results))
    print(f"\nfull results: {path} ({results['wall_s']} s)", flush=True)
    esg_error = None if args.no_esg else _esg_planning(stamp)
    if esg_error:
        print(f"esg planning: {esg_error}", file=sys.stderr)
    return 1 if results["errors"] or esg_error else 0


if __name__ == "__main__":
    sys.exit(main())
