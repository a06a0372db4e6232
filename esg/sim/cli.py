"""`python -m esg.sim report|run|workflow`: the simulator's command line.

* `report [--quick] [--out DIR] [--seeds 100-104 | --seed N] [--jobs N] [--policies a,b]
  [--loads a,b] [--slos a,b] [--nodes N] [--duration S] [--warmup S] [execution options]`:
  every policy on the 5 x 4 grid of the four applications, once per seed (default the
  held-out seeds 100-104), profiles wrong and scheduling time charged unless told otherwise.
* `run --workflow FILE --policy NAME [--nodes N] [--interval-ms MS | --rate R] [--requests N]
  [--warmup S] [--cold-start-ms MS] [--seed N] [--policy-option KEY=VALUE ...]`: one policy
  serving one workflow file (`esg.sim.workflow_file`), one JSON object on stdout: `policy`,
  `requests`, `slo_hit_rate` (0..1), `p50_ms`, `p99_ms`, `cost_per_request` and more. A
  malformed file (or option) is one line on stderr naming the field, exit status 2.
* `workflow NAME [--slo-x X] [--hop-ms MS]`: a built-in application as a workflow file.

The I/O shell of the simulator: runs the grid (in `--jobs` worker processes), shows a progress
bar on stderr, measures each policy call with `time.perf_counter`, and writes `results.csv`,
`summary.csv` (mean ± spread per cell), `results.md` and the PNG figures into `--out`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

from esg.errors import InstanceError
from esg.model import Workflow
from esg.policies import POLICIES, make_policy, policy_class
from esg.policy import Policy
from esg.pricing import DEFAULT_PRICING, Pricing, parse_pricing
from esg.sim.execution import ExecutionModel
from esg.sim.metrics import RunMetrics
from esg.sim.report import (
    ReportSettings,
    available_policies,
    results_markdown,
    run_cell,
    table_rows,
    write_csv,
)
from esg.sim.run import RunSettings, run_workflow
from esg.sim.summary import summary_rows, write_summary_csv
from esg.sim.workflow_file import WorkflowFile, parse_workflow_file, workflow_json
from esg.sim.workloads import (
    GRID_LOAD_LEVELS,
    GRID_SLO_FACTORS,
    app_tables,
    default_apps,
    large_apps,
)


def _run(task: tuple[str, str, str, int, ReportSettings]) -> RunMetrics:
    policy, load, slo, seed, settings = task
    return run_cell(policy, load, slo, settings, time.perf_counter, seed)


def _label(task: tuple[str, str, str, int, ReportSettings]) -> str:
    return f"{task[0]} {task[1]}/{task[2]} seed {task[3]}"


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
    tasks = [(p, load, slo, seed, settings) for load, slo in settings.cells()
             for p in policies for seed in settings.seeds]
    # The slowest policies and loads first, so that the pool does not end on one long run.
    tasks.sort(key=lambda t: (t[0] not in ("esg", "esg-plus", "orion"), -GRID_LOAD_LEVELS[t[1]]))
    results: list[RunMetrics] = []
    started = time.perf_counter()
    _progress(0, len(tasks), "", started)
    if jobs <= 1:
        for task in tasks:
            results.append(_run(task))
            _progress(len(results), len(tasks), _label(task), started)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_run, task): task for task in tasks}
            for future in as_completed(futures):
                task = futures[future]
                results.append(future.result())
                _progress(len(results), len(tasks), _label(task), started)
    sys.stderr.write("\n")
    order = {name: i for i, name in enumerate(POLICIES)}
    results.sort(key=lambda m: (m.scenario, order.get(m.policy, len(order)), m.policy, m.seed))
    rows = table_rows(results)
    write_csv(rows, out / "results.csv")
    write_summary_csv(summary_rows(rows), out / "summary.csv")
    (out / "results.md").write_text(results_markdown(rows))
    from esg.sim.figures import write_figures

    for path in write_figures(results, out):
        print(path)
    for name in ("results.csv", "summary.csv", "results.md"):
        print(out / name)
    print(f"{len(results)} runs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


EXIT_USAGE = 2


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`run`: one policy on a workflow file; one JSON object on stdout."""
    prog = f"{parser.prog} run"
    try:
        spec = parse_workflow_file(_load_json(args.workflow))
        pricing = _pricing(args.pricing)
        options = _policy_options(args.policy_option)
        settings = RunSettings(
            nodes=args.nodes,
            interval_ms=args.interval_ms if args.rate is None else None,
            rate_rps=args.rate,
            requests=args.requests,
            warmup_s=args.warmup,
            cold_start_ms=args.cold_start_ms,
            seed=args.seed,
            execution=execution_model(args),
            charge_overhead=args.charge_overhead,
            refine_profiles=args.refine_profiles,
        )
        policy = build_policy(args.policy, options, pricing)
    except InstanceError as exc:
        print(f"{prog}: {args.workflow}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = run_workflow(spec, policy, settings, time.perf_counter, pricing)
    json.dump(result, sys.stdout, indent=args.indent)
    sys.stdout.write("\n")
    return 0


def workflow(args: argparse.Namespace) -> int:
    """`workflow`: a built-in application as a workflow file, its SLO x times its fastest
    critical path plus `--hop-ms` per edge on that path."""
    app = {a.name: a for a in (*default_apps(), *large_apps())}[args.name]
    tables = {
        f: {c: round(ms, 3) for c, ms in t.items()} for f, t in app_tables(app).items()
    }
    dag = Workflow.from_edges(app.name, [f.name for f in app.functions], app.edges, 1.0)
    critical_ms, hops = WorkflowFile(dag, tables).critical_path(args.hop_ms)
    slo_ms = round(args.slo_x * (critical_ms - hops * args.hop_ms) + hops * args.hop_ms, 3)
    json.dump(workflow_json(dag, tables, slo_ms), sys.stdout, indent=args.indent)
    sys.stdout.write("\n")
    return 0


def add_execution_options(
    parser: argparse.ArgumentParser, default: ExecutionModel, charged: bool
) -> None:
    """`--profile-error`, `--noise-sigma`, `--interference`, `--[no-]charge-overhead`,
    `--[no-]refine-profiles`."""
    error = _pair(default.factor_low, default.factor_high, 1.0)
    interference = _pair(default.cpu_interference, default.gpu_interference, 0.0)
    parser.add_argument(
        "--profile-error", default=error, metavar="LOW,HIGH|off",
        help="each function's executed latency is its profile x a seeded factor drawn in "
             f"[LOW, HIGH] (default {error})")
    parser.add_argument("--noise-sigma", type=float, default=default.noise_sigma,
                        help=f"lognormal noise per batch (default {default.noise_sigma:g})")
    parser.add_argument(
        "--interference", default=interference, metavar="CPU,GPU|off",
        help="slowdown per share of the node's vCPUs (and the GPU's units) other batches hold "
             f"(default {interference})")
    parser.add_argument(
        "--charge-overhead", action=argparse.BooleanOptionalAction, default=charged,
        help="delay each dispatch by the wall time of the policy call that made it "
             f"(default {'on' if charged else 'off'}; off keeps results a function of the seed)")
    parser.add_argument(
        "--refine-profiles", action=argparse.BooleanOptionalAction, default=False,
        help="refine the profiles every policy sees with each warm batch, by the daemon's rule "
             "(default off: the policies plan with the profile they are given)")


def _pair(a: float, b: float, off: float) -> str:
    return "off" if a == b == off else f"{a:g},{b:g}"


def execution_model(args: argparse.Namespace) -> ExecutionModel:
    """The `ExecutionModel` of the options `add_execution_options` added."""
    low, high = _parse_pair("--profile-error", args.profile_error, off=1.0)
    cpu, gpu = _parse_pair("--interference", args.interference, off=0.0)
    return ExecutionModel(factor_low=low, factor_high=high, noise_sigma=args.noise_sigma,
                          cpu_interference=cpu, gpu_interference=gpu)


def _parse_pair(option: str, text: str, off: float) -> tuple[float, float]:
    if text.strip().lower() in ("off", "0", "none"):
        return off, off
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 2:
        raise ValueError(f"{option} {text!r}: expected two numbers A,B (e.g. 0.8,1.3) or off")
    return values[0], values[1]


def build_policy(name: str, options: dict[str, Any], pricing: Pricing) -> Policy:
    """`make_policy` with `pricing` passed to the policies that take it (unless given)."""
    if "pricing" not in options and "pricing" in inspect.signature(policy_class(name)).parameters:
        options = {**options, "pricing": pricing}
    try:
        return make_policy(name, options)
    except TypeError as exc:
        raise ValueError(f"--policy-option: {name} does not take it ({exc})") from None


def _policy_options(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that parses as JSON (16, 0.5, true, "x") is taken as such."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--policy-option {item!r}: expected KEY=VALUE, e.g. group_size=16")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def _pricing(path: Path | None) -> Pricing:
    """The prices of `path`, else of configs/pricing.yaml (here or beside the package), else
    the defaults (the same numbers)."""
    candidates = [path] if path is not None else [
        Path("configs/pricing.yaml"), Path(__file__).resolve().parents[2] / "configs/pricing.yaml"
    ]
    for candidate in candidates:
        try:
            text = candidate.read_text(encoding="utf-8")
        except OSError as exc:
            if path is not None:
                raise InstanceError("pricing", exc.strerror or str(exc)) from None
            continue
        return parse_pricing(text)
    return DEFAULT_PRICING


def _load_json(path: str) -> Any:
    try:
        if path == "-":
            return json.load(sys.stdin)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise InstanceError("file", exc.strerror or str(exc)) from None
    except json.JSONDecodeError as exc:
        raise InstanceError("file", f"not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except UnicodeDecodeError:
        raise InstanceError("file", "not UTF-8 text") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esg.sim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="simulate one policy serving a workflow file")
    one.add_argument("--workflow", required=True, help="workflow JSON file (- for stdin)")
    one.add_argument("--policy", required=True, choices=list(POLICIES))
    one.add_argument("--nodes", type=int, default=16, help="nodes of 16 vCPUs + 1 GPU (16)")
    pace = one.add_mutually_exclusive_group()
    pace.add_argument("--interval-ms", type=float, default=500.0,
                      help="requests this far apart (default 500)")
    pace.add_argument("--rate", type=float, default=None, help="Poisson arrivals, requests/s")
    one.add_argument("--requests", type=int, default=200, help="measured requests (200)")
    one.add_argument("--warmup", type=float, default=0.0,
                     help="seconds of unmeasured warm-up requests first (0)")
    one.add_argument("--cold-start-ms", type=float, default=None,
                     help="cold start of every sandbox (default 250, +750 with a GPU slice)")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--policy-option", action="append", default=[], metavar="KEY=VALUE",
                     help="a constructor argument of the policy, e.g. group_size=16")
    one.add_argument("--pricing", type=Path, default=None,
                     help="prices (default configs/pricing.yaml)")
    one.add_argument("--indent", type=int, default=None, help="pretty-print the JSON")
    add_execution_options(one, ExecutionModel(), charged=False)
    flow = sub.add_parser("workflow", help="print a built-in application as a workflow file")
    flow.add_argument("name", choices=[a.name for a in (*default_apps(), *large_apps())])
    flow.add_argument("--slo-x", type=float, default=1.5,
                      help="SLO = X x the fastest critical path + hop-ms per hop (1.5)")
    flow.add_argument("--hop-ms", type=float, default=0.2, help="per edge on that path (0.2)")
    flow.add_argument("--indent", type=int, default=None, help="pretty-print the JSON")
    rep = sub.add_parser("report", help="run every policy on the grid and write results")
    rep.add_argument("--quick", action="store_true", help="tiny cells (a test run)")
    rep.add_argument("--out", type=Path, default=Path("sim-report"), help="output directory")
    seeds = rep.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", default=None, metavar="A-B|A,B,...",
                       help="seeds to run (default the held-out 100-104; 0 with --quick)")
    seeds.add_argument("--seed", type=int, default=None, help="one seed")
    rep.add_argument("--loads", default=None, help=f"of {','.join(GRID_LOAD_LEVELS)} (all)")
    rep.add_argument("--slos", default=None, help=f"of {','.join(GRID_SLO_FACTORS)} (all)")
    rep.add_argument("--nodes", type=int, default=None, help="nodes (default 2; 1 with --quick)")
    rep.add_argument("--duration", type=float, default=None,
                     help="measured seconds per cell (default 6; 0.6 with --quick)")
    rep.add_argument("--warmup", type=float, default=None,
                     help="warm-up seconds per cell (default 4; 1 with --quick)")
    rep.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    rep.add_argument("--policies", default=",".join(POLICIES),
                     help="comma-separated policy names (default: all)")
    add_execution_options(rep, ExecutionModel.realistic(), charged=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args, parser)
    if args.command == "workflow":
        return workflow(args)
    try:
        settings = _report_settings(args)
    except ValueError as exc:
        parser.error(str(exc))
    return report(settings, args.out, args.jobs)


def _report_settings(args: argparse.Namespace) -> ReportSettings:
    """The report's settings from its options (ValueError names the bad one)."""
    base = ReportSettings.quick(args.seed or 0) if args.quick else ReportSettings()
    names = _names(args.policies) or base.policies
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    seeds = base.seeds if args.seed is None else (args.seed,)
    if args.seeds is not None:
        seeds = _seeds(args.seeds)
    return replace(
        base,
        policies=names,
        seeds=seeds,
        execution=execution_model(args),
        charge_overhead=args.charge_overhead,
        refine_profiles=args.refine_profiles,
        loads=_names(args.loads) or base.loads,
        slos=_names(args.slos) or base.slos,
        nodes=base.nodes if args.nodes is None else args.nodes,
        duration_s=base.duration_s if args.duration is None else args.duration,
        warmup_s=base.warmup_s if args.warmup is None else args.warmup,
    )


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (text or "").split(",") if n.strip())


def _seeds(text: str) -> tuple[int, ...]:
    """"100-104" or "0,23"."""
    try:
        if "-" in text.strip()[1:]:
            first, _, last = text.partition("-")
            return tuple(range(int(first), int(last) + 1))
        return tuple(int(n) for n in _names(text))
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected A-B or A,B,...") from None
