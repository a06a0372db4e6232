"""The example workflows on a real daemon under open-loop, bursty load, for every policy, and the
same settings in the simulator with the profiles the daemon measured.

    .venv/bin/python benchmarks/workflow_slo.py --quick          # esg and fcfs, 3 settings, minutes
    .venv/bin/python benchmarks/workflow_slo.py                  # every policy, 3 loads x 3 SLOs
    .venv/bin/python benchmarks/workflow_slo.py --policies esg,fcfs,infless --seed 3

What it does, in order:

1. Copies `functions/` and `workflows/` to a scratch directory, starts `faasd up` on them and
   profiles every function of the example workflows (`POST /system/profile/{name}`: the full
   grid, or the small one with `--quick`). The capacity run below refines these tables online
   with executions under load; the state directory with the refined profiles is copied for
   every policy's daemon, so each starts from the same profiles (and refines its own copy),
   and the simulator gets the same tables.
2. L of a workflow (as in docs/evaluation.md) is its critical path with every function at the
   reference configuration, batch 4 (or its largest) on 2 vCPUs (or the node's all), from the
   measured profiles; strict / moderate / relaxed SLOs are 0.8 / 1.0 / 1.2 x L. The machine's
   capacity is measured: workflow calls per second completed by 4 closed-loop callers (the
   workflows in turn) on the FCFS daemon; light / normal / heavy load offer 20 / 40 / 60 % of
   it (`esg.sim.workloads` levels).
3. Arrivals: `esg.sim.workloads.ArrivalModel` (diurnal swing and bursts), seeded by `--seed`,
   the workflows sharing the rate equally; a warm-up (bursts at the peak rate) is not measured.
   Each arrival is one `POST /workflow/{name}` of the workflow's sample picture, sent at its
   time whatever the daemon is doing (open loop).
4. Setting by setting, every policy in turn (the first one moving on with each setting), each
   on a daemon started for the setting from its own copy of the state (so its refined profiles
   carry over from setting to setting): drift of the shared machine over the grid falls on
   every policy alike. An unmeasured run of the first setting goes first (`warm_up`).
   Per policy and setting: SLO hit rate (answered 200 within the SLO, measured at the
   client), cost per request (the daemon's `X-Faasd-Cost`: each stage's share of its batch's
   vCPU-seconds, priced by configs/pricing.yaml; failed calls cost what they ran) normalised
   to ESG's in the same setting, p50 and p99 latency, requests. Written to
   `docs/evaluation/real.csv` (or `--out`).
5. The same settings in `esg.sim` (one node of the daemon's vCPUs, no GPU, the measured
   profiles, cold starts, per-batch overheads and time outside the stages, the client's time
   beyond the daemon's account (read while warming up), the same arrivals,
   executions as long as under load (`under_load`) and as noisy as the daemon measured them
   (`measured_noise_sigma`), the policies' profiles refined by every batch as the
   daemon's are (`esg.sim.refining`), and each dispatch delayed by the wall time of the
   policy call that made it (`charge_overhead`)):
   `real_vs_sim.csv` beside it, and a Markdown table with the Spearman correlation of the
   policies' hit rates per setting. On stderr, per policy and setting: each stage's mean
   queue and execution time on both sides, and the configurations their warm batches ran at;
   per workflow, what its last calls spent before the source stage and outside the stages.

The load generator shares the 2 cores with the daemon and its sandboxes; the figures are this
machine's (see docs/benchmarks.md for how to read them).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from faasd_bench.procs import Server, free_port

from esg.model import Config, Profile, Workflow
from esg.policies import POLICIES, make_policy
from esg.policy import FunctionLimits
from esg.refine import Point
from esg.sim.cluster import ClusterSpec
from esg.sim.engine import EngineSettings, Simulation
from esg.sim.execution import ExecutionModel
from esg.sim.metrics import summarize
from esg.sim.workloads import LOAD_LEVELS, SLO_FACTORS, ArrivalModel, Scenario

ROOT = Path(__file__).resolve().parent.parent
FAASD = Path(sys.executable).with_name("faasd")
WORKFLOWS = ("classify", "ensemble", "cutout")
COLUMNS = ["policy", "workload", "slo", "slo_hit_rate", "cost_norm", "p50_ms", "p99_ms",
           "requests"]


@dataclass(frozen=True)
class Plan:
    policies: tuple[str, ...]
    settings: tuple[tuple[str, str], ...]
    warmup_s: float
    duration_s: float
    profile_kind: str
    seed: int
    capacity_s: float


@dataclass(frozen=True)
class Measured:
    """What the first daemon measured, for the simulator: profiles (what the daemons start
    from, the points behind them, and what each configuration takes under load), limits (with
    cold starts and per-batch overheads), the node's vCPUs, the mean cold start, the
    executions' noise, what a call of each workflow spends outside its stages, and what its
    client waits beyond the daemon's account."""

    profiles: Mapping[str, Profile]
    points: Mapping[str, Mapping[Config, Point]]
    loaded: Mapping[str, Profile]
    limits: Mapping[str, FunctionLimits]
    vcpu: int
    cold_start_s: float
    noise_sigma: float
    outside_ms: Mapping[str, float]
    client_ms: Mapping[str, float]


@dataclass(frozen=True)
class Outcome:
    """One measured call: when it was sent (s after the run's start), what came back."""

    workflow: str
    sent_s: float
    status: int
    latency_ms: float
    cost: float
    slo_ms: float
    #: the daemon's own account (`X-Duration-Seconds`, from its handler's start to the answer)
    server_ms: float = math.nan

    @property
    def hit(self) -> bool:
        return self.status == 200 and self.latency_ms <= self.slo_ms


# ---------------------------------------------------------------- the daemon


class Daemon:
    def __init__(self, scratch: Path, state: Path, policy: str, label: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [str(FAASD), "up", "--host", "127.0.0.1", "--port", str(self.port),
                "--functions", str(scratch / "functions"), "--workflows",
                str(scratch / "workflows"), "--state-dir", str(state), "--scheduler", policy]
        name = f"faasd-{policy}{label}"
        self.server = Server(name, argv, scratch / f"{name}.log")
        try:
            self.server.wait_http(f"{self.url}/v2/health/ready", 600)
        except BaseException:
            self.server.stop()
            raise

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=600) as answer:
            return json.loads(answer.read())

    def send(self, method: str, path: str, doc: Any) -> Any:
        request = urllib.request.Request(self.url + path, json.dumps(doc).encode(), method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as answer:
            return json.loads(answer.read())

    def profile(self, name: str, kind: str) -> None:
        request = urllib.request.Request(f"{self.url}/system/profile/{name}?kind={kind}",
                                         b"", method="POST")
        with urllib.request.urlopen(request, timeout=3600) as answer:
            for line in answer:
                event = json.loads(line)
                if event.get("event") == "error":
                    raise RuntimeError(f"profiling {name} failed: {event['error']}")

    def _metrics(self) -> list[str]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=60) as answer:
            text: str = answer.read().decode()
            return text.splitlines()

    def decision_totals(self) -> list[float]:
        """The policy's decisions since start: [seconds, count]."""
        totals = [0.0, 0.0]
        for line in self._metrics():
            metric, _, value = line.partition(" ")
            if metric in ("faasd_scheduler_decision_seconds_sum",
                          "faasd_scheduler_decision_seconds_count"):
                totals[metric.endswith("_count")] = float(value)
        return totals

    def stage_totals(self) -> dict[str, list[float]]:
        """Per stage: [queue seconds, stage count, execution seconds], summed since start."""
        totals: dict[str, list[float]] = {}
        fields = {"faasd_workflow_stage_queue_seconds_sum": 0,
                  "faasd_workflow_stage_queue_seconds_count": 1,
                  "faasd_workflow_stage_exec_seconds_sum": 2}
        for line in self._metrics():
            metric, _, rest = line.partition("{")
            if metric in fields:
                function = rest.split('function_name="', 1)[1].split('"', 1)[0]
                totals.setdefault(function, [0.0, 0.0, 0.0])[fields[metric]] += float(
                    line.rsplit(" ", 1)[1])
        return totals

    def runs(self, names: Sequence[str]) -> dict[str, dict[Config, int]]:
        """Per function: the warm batches its profile store has refined each configuration
        with (a batch counts at the number of calls it held, as the store keys it)."""
        return {name: {c: int(r.get("executions", 0)) for c, r in rows_of(doc).items()}
                for name, doc in measured_profiles(self, names).items()}

    def edges(self, names: Iterable[str]) -> dict[str, tuple[float, float]]:
        """Per workflow, what its calls spent (ms, smoothed over the last calls) before the
        source stage's submission and outside the stages after it: the first the simulator
        does not model yet, the second it adds to every call (`Scenario.outside_ms`)."""
        docs = {n: self.get(f"/system/workflow/{n}") for n in names}
        return {n: (float(d.get("before_ms", 0.0)), float(d.get("outside_ms", 0.0)))
                for n, d in docs.items()}

    def stop(self) -> None:
        self.server.stop()


def functions_of(daemon: Daemon) -> dict[str, Workflow]:
    flows = {}
    for doc in daemon.get("/system/workflows"):
        edges = [(e["from"], e["to"]) for e in doc["edges"]]
        flows[doc["name"]] = Workflow.from_edges(doc["name"], doc["functions"], edges,
                                                 doc["slo_ms"] / 1000)
    return flows


def measured_profiles(daemon: Daemon, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {name: daemon.get(f"/system/profile/{name}") for name in names}


def measured_noise_sigma(docs: Mapping[str, Mapping[str, Any]]) -> float:
    """The lognormal sigma of the simulator's executions: from the median coefficient of
    variation of the configurations the daemon measured at least twice (sigma^2 = ln(1 +
    CV^2)). On this machine's two shared cores it is about 0.2, where the simulator's default
    is 0.05; the drop rule of Clockwork and InferFair turns the difference into dropped calls."""
    cvs = [r["std_ms"] / r["latency_ms"] for d in docs.values() for r in d["configurations"]
           if r.get("count", 0) >= 2 and r.get("std_ms") is not None and r["latency_ms"] > 0]
    if not cvs:
        return ExecutionModel().noise_sigma
    return min(1.0, math.sqrt(math.log(1 + statistics.median(cvs) ** 2)))


def rows_of(doc: Mapping[str, Any]) -> dict[Config, Mapping[str, Any]]:
    """A profile document's rows (`GET /system/profile/{name}`) by configuration."""
    return {Config(r["batch"], r["vcpu"], r["vgpu"]): r for r in doc["configurations"]}


def profile_of(doc: Mapping[str, Any]) -> Profile:
    table = {c: float(r["latency_ms"]) for c, r in rows_of(doc).items()}
    return Profile(doc["function"], table, version=int(doc["profile_version"]))


def points_of(doc: Mapping[str, Any]) -> dict[Config, Point]:
    """The points behind a profile, as the daemon's store holds them: the simulator refines
    them with the same rule, so a point resting on three quiet executions moves as fast there
    as on the daemon."""
    return {c: Point(float(r["mean_ms"]), float(r["std_ms"]) ** 2, int(r["count"]),
                     r["source"] == "fitted", float(r["published_ms"]), int(r["executions"]),
                     float(r["profiled_ms"] or 0.0))
            for c, r in rows_of(doc).items()}


def under_load(alone: Mapping[str, Any], loaded: Mapping[str, Any]) -> Profile:
    """What each configuration of a function takes beside the load, for the simulator to
    execute. A configuration the capacity run refined (more executions than after profiling)
    is its refined mean. One it never ran takes its profiled time times the function's median
    slowdown over those it did run (1 where it ran none): the profiler times a configuration
    alone on the machine, while in a run the load generator, the daemon and the other sandboxes
    share its cores. Without this, the simulator executed `vote` at 2 vCPUs in its quiet
    0.11 ms where the daemon took 0.2, and its planners never learned otherwise."""
    before, after = rows_of(alone), rows_of(loaded)
    ran = {c for c, r in after.items() if c not in before or r["count"] > before[c]["count"]}
    slowdown = statistics.median([after[c]["mean_ms"] / before[c]["mean_ms"] for c in ran
                                  if c in before and before[c]["source"] == "measured"] or [1.0])
    table = {c: float(r["mean_ms"]) * (1.0 if c in ran else slowdown) for c, r in after.items()}
    return Profile(loaded["function"], table, version=int(loaded["profile_version"]))


# ---------------------------------------------------------------- the settings


def reference_ms(workflow: Workflow, profiles: Mapping[str, Profile], vcpu: int) -> float:
    """L: the critical path at batch 4 (or the largest profiled below it) on `vcpu` vCPUs."""
    finish: dict[str, float] = {}
    for name in workflow.topological_order():
        table = profiles[name].latency_ms
        batch = max(c.batch for c in table if c.batch <= 4)
        start = max((finish[p] for p in workflow.predecessors(name)), default=0.0)
        finish[name] = start + table[Config(batch, vcpu)]
    return max(finish.values())


async def capacity_rps(url: str, bodies: Mapping[str, bytes], clients: int, seconds: float,
                       beyond: dict[str, list[float]] | None = None) -> float:
    """Workflow calls per second the daemon completes with `clients` callers that each send the
    next call (the workflows in turn) as soon as the last one answered: what this machine
    sustains, every overhead included (HTTP, stage hops, the load generator itself). Each
    answered call's time beyond the daemon's own account (`X-Duration-Seconds`) goes to
    `beyond`, per workflow (ms)."""
    names = sorted(bodies)
    done = 0
    async with aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds

        async def caller(offset: int) -> None:
            nonlocal done
            i = offset
            while loop.time() < end:
                name = names[i % len(names)]
                sent = loop.time()
                async with session.post(f"{url}/workflow/{name}", data=bodies[name],
                                        headers={"Content-Type": "image/jpeg"}) as resp:
                    await resp.read()
                    done += resp.status == 200
                    if beyond is not None and resp.status == 200:
                        beyond.setdefault(name, []).append(
                            (loop.time() - sent) * 1000 - server_ms_of(resp))
                i += 1

        started = loop.time()
        await asyncio.gather(*(caller(k) for k in range(clients)))
        return done / (loop.time() - started)


def server_ms_of(resp: aiohttp.ClientResponse) -> float:
    """The daemon's own account of a call (`X-Duration-Seconds`, ms; nan without one)."""
    return 1000 * float(resp.headers.get("X-Duration-Seconds", "nan"))


def arrivals(names: Sequence[str], rate: float, plan: Plan, load: str) -> list[tuple[float, str]]:
    model = ArrivalModel()
    out: list[tuple[float, str]] = []
    share = rate / len(names)
    for name in names:
        rng = random.Random(f"{plan.seed}:{name}:{load}")
        peak = share * (1 + model.diurnal_amplitude)
        out += [(t, name) for t in model.times(peak, plan.warmup_s, rng, diurnal=False)]
        out += [(plan.warmup_s + t, name) for t in model.times(share, plan.duration_s, rng)]
    return sorted(out)


def set_slos(daemon: Daemon, scratch: Path, slo_ms: Mapping[str, float]) -> None:
    for name, slo in slo_ms.items():
        directory = scratch / "workflows" / name
        doc = yaml.safe_load((directory / "workflow.yaml").read_text())
        doc["slo_ms"] = round(slo, 3)
        (directory / "workflow.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        daemon.send("PUT", "/system/workflows", {"path": str(directory)})


# ---------------------------------------------------------------- the load


async def drive(url: str, schedule: list[tuple[float, str]], bodies: Mapping[str, bytes],
                slo_ms: Mapping[str, float], measure_from_s: float) -> list[Outcome]:
    """Send every call at its time (open loop); the outcomes of those after the warm-up."""
    outcomes: list[Outcome] = []
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = loop.time() + 0.2

        async def call(at_s: float, name: str) -> None:
            await asyncio.sleep(max(0.0, start + at_s - loop.time()))
            sent = loop.time()
            try:
                async with session.post(f"{url}/workflow/{name}", data=bodies[name],
                                        headers={"Content-Type": "image/jpeg"}) as resp:
                    await resp.read()
                    status, cost = resp.status, float(resp.headers.get("X-Faasd-Cost", 0.0))
                    server_ms = server_ms_of(resp)
            except (aiohttp.ClientError, TimeoutError):
                status, cost, server_ms = 599, 0.0, math.nan
            if at_s >= measure_from_s:
                outcomes.append(Outcome(name, at_s, status, (loop.time() - sent) * 1000, cost,
                                        slo_ms[name], server_ms))

        await asyncio.gather(*(call(t, name) for t, name in schedule))
    return outcomes


def row(policy: str, load: str, slo: str, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    latencies = sorted(o.latency_ms if o.status == 200 else math.inf for o in outcomes)
    finite = [x for x in latencies if math.isfinite(x)] or [math.nan]
    return {
        "policy": policy, "workload": load, "slo": slo,
        "slo_hit_rate": sum(o.hit for o in outcomes) / max(1, len(outcomes)),
        "cost": statistics.fmean(o.cost for o in outcomes) if outcomes else math.nan,
        "p50_ms": statistics.median(finite),
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies else math.nan,
        "requests": len(outcomes),
    }


# ---------------------------------------------------------------- the simulator


def simulate(policy: str, load: str, slo: str, workflows: Mapping[str, Workflow],
             measured: Measured, schedule: list[tuple[float, str]], plan: Plan) -> dict[str, Any]:
    cluster = ClusterSpec(nodes=1, vcpu_per_node=measured.vcpu, gpus_per_node=0,
                          cold_start_cpu_s=measured.cold_start_s)
    functions = {f for w in workflows.values() for f in w.functions}
    scenario = Scenario(
        name=f"{load}/{slo}", workflows=workflows, profiles=measured.profiles,
        limits=measured.limits, output_bytes=dict.fromkeys(functions, 0.0),
        arrivals=tuple(schedule), measure_from_s=plan.warmup_s, outside_ms=measured.outside_ms,
        client_ms=measured.client_ms,
        true_profiles=measured.loaded, profile_points=measured.points,
    )
    execution = ExecutionModel(noise_sigma=measured.noise_sigma)
    # Each dispatch waits for the policy call that made it, as on the daemon's event loop (and
    # as in the simulator's own report): ESG's decisions take several times the others'.
    settings = EngineSettings(seed=plan.seed, execution=execution, refine_profiles=True,
                              charge_overhead=True)
    record = Simulation(scenario, make_policy(policy), cluster, timer=time.perf_counter,
                        settings=settings).run()
    metrics = summarize(record)
    stages: dict[str, list[float]] = {}
    runs: dict[str, Counter[Config]] = {}
    for batch in record.batches:
        if not batch.cold:  # counted as the daemon's store counts them (`Daemon.runs`)
            shape = Config(batch.jobs, batch.config.vcpu, batch.config.vgpu)
            runs.setdefault(batch.function, Counter())[shape] += 1
        wall_s = batch.finish_s - batch.start_s
        total = stages.setdefault(batch.function, [0.0, 0.0, 0.0])
        total[0] += sum(t - wall_s for t in batch.job_times_s)
        total[1] += batch.jobs
        total[2] += batch.jobs * batch.exec_s
    return {"policy": policy, "workload": load, "slo": slo,
            "slo_hit_rate": metrics.slo_hit_rate, "cost": metrics.cost_per_request,
            "p50_ms": metrics.p50_ms, "p99_ms": metrics.p99_ms, "requests": metrics.requests,
            "stages": stages, "runs": runs}


def decision_line(decisions: Sequence[float], calls: int) -> str:
    """The policy's time on the daemon's event loop: a decision's mean, and per workflow call."""
    seconds, count = decisions[0], decisions[1]
    return (f"{'decisions':>16}  {count:.0f}, mean {1e6 * seconds / max(1.0, count):.0f} us, "
            f"{1000 * seconds / max(1, calls):.2f} ms per call")


def workflow_line(outcomes: Sequence[Outcome]) -> str:
    """SLO hits and p50 per workflow on the daemon: which workflow a policy loses calls on."""
    parts = []
    for name in sorted({o.workflow for o in outcomes}):
        mine = [o for o in outcomes if o.workflow == name]
        median = statistics.median(o.latency_ms for o in mine)
        # the client's time beyond the daemon's own account: the request before the handler
        # ran and the answer after it, on the cores the load generator shares
        beyond = [o.latency_ms - o.server_ms for o in mine if math.isfinite(o.server_ms)]
        extra = f", +{statistics.median(beyond):.1f} beyond the daemon's" if beyond else ""
        parts.append(f"{name} {sum(o.hit for o in mine) / len(mine):.0%} "
                     f"(p50 {median:.1f} of {mine[0].slo_ms:.1f} ms{extra})")
    return f"{'per workflow':>16}  " + ", ".join(parts)


def stage_lines(real: Mapping[str, Sequence[float]], sim: Mapping[str, Sequence[float]],
                real_runs: Mapping[str, Mapping[Config, int]] | None = None,
                sim_runs: Mapping[str, Mapping[Config, int]] | None = None) -> str:
    """Mean queue and execution time per stage, daemon against simulator (ms), and the
    configurations each side's warm batches ran at: where the two part ways, and whether the
    planners chose differently or the same choice ran differently."""
    def mean_ms(total: Sequence[float] | None, index: int) -> str:
        if not total or not total[1]:
            return "    -"
        return f"{1000 * total[index] / total[1]:5.1f}"

    lines = [f"{'stage':>16}  queue real/sim ms   exec real/sim ms   ran at real | sim"]
    for function in sorted(set(real) | set(sim)):
        r, m = real.get(function), sim.get(function)
        lines.append(f"{function:>16}  {mean_ms(r, 0)} / {mean_ms(m, 0)}      "
                     f"{mean_ms(r, 2)} / {mean_ms(m, 2)}      "
                     f"{shares((real_runs or {}).get(function, {}))} | "
                     f"{shares((sim_runs or {}).get(function, {}))}")
    return "\n".join(lines)


def shares(runs: Mapping[Config, int], shown: int = 3) -> str:
    """The most-run configurations and their shares of the batches, e.g. `b1v1 80%, b2v1 20%`
    (b = calls in the batch, v = vCPUs, g = GPU slice units where there is one)."""
    total = sum(runs.values())
    if not total:
        return "-"
    ran = [(c, n) for c, n in runs.items() if n > 0]
    top = sorted(ran, key=lambda item: (-item[1], item[0].batch, item[0].vcpu))[:shown]
    return ", ".join(f"b{c.batch}v{c.vcpu}{f'g{c.vgpu}' if c.vgpu else ''} {n / total:.0%}"
                     for c, n in top)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho with average ranks for ties (nan when either side is constant)."""
    def ranks(xs: Sequence[float]) -> list[float]:
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        out = [0.0] * len(xs)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    ra, rb = ranks(a), ranks(b)
    if len(set(ra)) < 2 or len(set(rb)) < 2:
        return math.nan
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var


def rotated(items: Sequence[str], turn: int) -> tuple[str, ...]:
    """`items` starting at position `turn` (mod their number), wrapping around."""
    k = turn % len(items)
    return (*items[k:], *items[:k])


def normalise(rows: list[dict[str, Any]]) -> None:
    """cost_norm = cost per request / ESG's in the same setting (nan without an ESG row)."""
    base = {(r["workload"], r["slo"]): r["cost"] for r in rows if r["policy"] == "esg"}
    for r in rows:
        b = base.get((r["workload"], r["slo"]))
        r["cost_norm"] = r["cost"] / b if b else math.nan


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(columns)
        for r in rows:
            out.writerow([f"{r[c]:.4g}" if isinstance(r[c], float) else r[c] for c in columns])


def comparison(real: list[dict[str, Any]], sim: list[dict[str, Any]]) -> str:
    lines = ["| load | SLO | ESG hit real | ESG hit sim | Spearman (hit rates) | best real | "
             "best sim |", "|---|---|---|---|---|---|---|"]
    for load, slo in sorted({(r["workload"], r["slo"]) for r in real}):
        here = sorted((r for r in real if (r["workload"], r["slo"]) == (load, slo)),
                      key=lambda r: r["policy"])
        there = {r["policy"]: r for r in sim if (r["workload"], r["slo"]) == (load, slo)}
        names = [r["policy"] for r in here if r["policy"] in there]
        rho = spearman([r["slo_hit_rate"] for r in here if r["policy"] in there],
                       [there[n]["slo_hit_rate"] for n in names])
        esg_real = next((r["slo_hit_rate"] for r in here if r["policy"] == "esg"), math.nan)
        esg_sim = there["esg"]["slo_hit_rate"] if "esg" in there else math.nan
        best_real = max(here, key=lambda r: (r["slo_hit_rate"], -r["cost"]))["policy"]
        best_sim = max(there.values(), key=lambda r: (r["slo_hit_rate"], -r["cost"]))["policy"]
        lines.append(f"| {load} | {slo} | {esg_real:.1%} | {esg_sim:.1%} | {rho:.2f} | "
                     f"{best_real} | {best_sim} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


@dataclass(frozen=True)
class Setup:
    """Steps 1-2: the scratch copy with the profiled state every daemon starts from, what the
    simulator gets, the workflows with their sample bodies, and the machine's capacity."""

    scratch: Path
    measured: Measured
    workflows: Mapping[str, Workflow]
    bodies: Mapping[str, bytes]
    capacity: float


def measure(plan: Plan) -> Setup:
    scratch = Path(tempfile.mkdtemp(prefix="workflow-slo-"))
    shutil.copytree(ROOT / "functions", scratch / "functions")
    shutil.copytree(ROOT / "workflows", scratch / "workflows")
    print(f"scratch: {scratch}", file=sys.stderr)
    first = Daemon(scratch, scratch / "state0", "fcfs")
    try:
        workflows = {n: w for n, w in functions_of(first).items() if n in WORKFLOWS}
        names = sorted({f for w in workflows.values() for f in w.functions})
        for name in names:
            started = time.monotonic()
            first.profile(name, plan.profile_kind)
            print(f"profiled {name} in {time.monotonic() - started:.0f} s", file=sys.stderr)
        alone = measured_profiles(first, names)
        bodies = {n: (scratch / "workflows" / n / "sample.jpg").read_bytes() for n in workflows}
        # warm every stage first; with two callers, below the capacity run's four, the
        # client's time beyond the daemon's account is read as at the grid's loads
        beyond: dict[str, list[float]] = {}
        asyncio.run(capacity_rps(first.url, bodies, 2, 3.0, beyond))
        capacity = asyncio.run(capacity_rps(first.url, bodies, 4, plan.capacity_s))
        # Read after the capacity run: its executions refined the tables online, so both the
        # daemons (which start from this state) and the simulator plan with what a batch takes
        # with the node busy, not alone in a profiling run (on the profiling tables, the
        # simulated FCFS ran squeezenet in 6 ms a batch where the daemon took 12-14 ms).
        docs = measured_profiles(first, names)
        described = {n: first.get(f"/system/function/{n}") for n in names}
        settings = {n: d["settings"] for n, d in described.items()}
        overheads = {n: float(d.get("overhead_ms", 0.0)) for n, d in described.items()}
        vcpu = int(first.get("/healthz").get("vcpu_capacity", os.cpu_count() or 1))
        outside = {n: float(first.get(f"/system/workflow/{n}").get("outside_ms", 0.0))
                   for n in workflows}
    finally:
        first.stop()
    profiles = {n: profile_of(d) for n, d in docs.items()}
    colds = {n: d["cold_start_ms"]["mean"] for n, d in docs.items() if d.get("cold_start_ms")}
    cold_s = statistics.fmean(colds.values()) / 1000 if colds else 0.25
    # each function's own measured cold start (resnet50 ~300 ms, a pre-processing graph ~40):
    # the simulator starts its sandboxes in that time, and the policies see it as the daemon's do
    limits = {
        n: FunctionLimits(max_batch=max(1, s["max_batch_size"]),
                          max_queue_delay_s=s["max_queue_delay_ms"] / 1000,
                          vcpu=min(vcpu, s["vcpu"]), max_instances=s["max_instances"],
                          cold_start_ms=colds.get(n, cold_s * 1000), overhead_ms=overheads[n])
        for n, s in settings.items()
    }
    print(f"per-batch overhead (ms): { {n: round(v, 2) for n, v in overheads.items()} }",
          file=sys.stderr)
    print(f"slowdown under load (what the daemons' planners scale unrun configurations by): "
          f"{ {n: d['slowdown_under_load']['cpu'] for n, d in docs.items()} }", file=sys.stderr)
    sigma = measured_noise_sigma(docs)
    print(f"execution noise (lognormal sigma) for the simulator: {sigma:.2f}", file=sys.stderr)
    print(f"time outside the stages per call (ms): "
          f"{ {n: round(v, 2) for n, v in outside.items()} }", file=sys.stderr)
    loaded = {n: under_load(alone[n], d) for n, d in docs.items()}
    points = {n: points_of(d) for n, d in docs.items()}
    client = {n: statistics.median(v) for n, v in beyond.items()}
    print(f"client's time beyond the daemon's account per call (ms): "
          f"{ {n: round(v, 2) for n, v in client.items()} }", file=sys.stderr)
    measured = Measured(profiles, points, loaded, limits, vcpu, cold_s, sigma, outside, client)
    return Setup(scratch, measured, workflows, bodies, capacity)


def run(plan: Plan, out: Path) -> int:
    setup = measure(plan)
    scratch, measured, workflows = setup.scratch, setup.measured, setup.workflows
    vcpu, capacity = measured.vcpu, setup.capacity
    # L from the published latencies (profiled, or refined by the capacity run), as before the
    # planners' slowdown factor existed: scaling the configurations not yet run would loosen
    # every SLO with the factor of the day
    published = {n: Profile(n, {c: p.published_ms for c, p in points.items()})
                 for n, points in measured.points.items()}
    reference = {n: reference_ms(w, published, min(2, vcpu)) for n, w in workflows.items()}
    print(f"L (ms): { {n: round(v, 1) for n, v in reference.items()} }; capacity "
          f"{capacity:.1f} requests/s measured on {vcpu} vCPUs", file=sys.stderr)
    functions = sorted(measured.profiles)  # every function of the example workflows
    warm_up(plan, setup, reference)
    real: list[dict[str, Any]] = []
    sim: list[dict[str, Any]] = []
    # Setting by setting, every policy in turn (the first one moving on each time), each on a
    # daemon of its own started for the setting from its policy's state: the shared machine
    # drifts over the hour a grid takes, and run policy by policy a policy's whole row would
    # take the drift of its own quarter of an hour, and one policy always the first setting
    # after the measuring daemon.
    for turn, (load, slo) in enumerate(plan.settings):
        slo_ms, schedule = setting(plan, setup, reference, load, slo)
        flows = {n: Workflow.from_edges(n, w.functions, w.edges, slo_ms[n] / 1000)
                 for n, w in workflows.items()}
        for policy in rotated(plan.policies, turn):
            state = scratch / f"state-{policy}"
            if not state.exists():
                shutil.copytree(scratch / "state0", state)
            daemon = Daemon(scratch, state, policy, f"-{load}-{slo}")
            try:
                set_slos(daemon, scratch, slo_ms)
                before, decided = daemon.stage_totals(), daemon.decision_totals()
                ran_before = daemon.runs(functions)
                outcomes = asyncio.run(drive(daemon.url, schedule, setup.bodies, slo_ms,
                                             plan.warmup_s))
                stages = {f: [a - b for a, b in zip(t, before.get(f, [0.0] * 3), strict=True)]
                          for f, t in daemon.stage_totals().items()}
                decisions = [a - b for a, b in zip(daemon.decision_totals(), decided, strict=True)]
                ran = {f: {c: n - ran_before[f].get(c, 0) for c, n in runs.items()}
                       for f, runs in daemon.runs(functions).items()}
                edges = daemon.edges(workflows)
            finally:
                daemon.stop()
            real.append(row(policy, load, slo, outcomes))
            sim.append(simulate(policy, load, slo, flows, measured, schedule, plan))
            r, s = real[-1], sim[-1]
            print(f"{policy:>12} {load:>6}/{slo:<8} real {r['slo_hit_rate']:6.1%} "
                  f"p50 {r['p50_ms']:7.1f} ms  sim {s['slo_hit_rate']:6.1%} "
                  f"({r['requests']} calls)", file=sys.stderr)
            print(workflow_line(outcomes), file=sys.stderr)
            print(decision_line(decisions, len(schedule)), file=sys.stderr)
            print(f"{'edges ms':>16}  " + ", ".join(
                f"{n} before {b:.2f} outside {o:.2f}" for n, (b, o) in sorted(edges.items())),
                file=sys.stderr)
            print(stage_lines(stages, s.pop("stages"), ran, s.pop("runs")), file=sys.stderr)
    order = {p: i for i, p in enumerate(plan.policies)}  # the CSVs keep a policy's rows together
    real.sort(key=lambda r: order[r["policy"]])
    sim.sort(key=lambda r: order[r["policy"]])
    normalise(real)
    normalise(sim)
    write_csv(real, out, COLUMNS)
    write_csv(sim, out.with_name("real_vs_sim.csv"), COLUMNS)
    print(comparison(real, sim))
    return 0


def setting(plan: Plan, setup: Setup, reference: Mapping[str, float], load: str,
            slo: str) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """One setting's SLO per workflow (ms) and its arrivals."""
    slo_ms = {n: SLO_FACTORS[slo] * reference[n] for n in setup.workflows}
    rate = LOAD_LEVELS[load] * setup.capacity
    return slo_ms, arrivals(sorted(setup.workflows), rate, plan, load)


def warm_up(plan: Plan, setup: Setup, reference: Mapping[str, float]) -> None:
    """The first setting, with the first policy, on a throwaway copy of the state, not
    measured. The first daemon after the measuring one read a few points below the same
    policy's next daemon in the same setting (ESG at light-strict: 87.2 % then 90.8 %, with
    HarmonyBatch-like at 91.4 % and 91.7 % between them), and without this run that cell
    went to whichever policy came first."""
    load, slo = plan.settings[0]
    slo_ms, schedule = setting(plan, setup, reference, load, slo)
    state = setup.scratch / "state-warm-up"
    shutil.copytree(setup.scratch / "state0", state)
    daemon = Daemon(setup.scratch, state, plan.policies[0], "-warm-up")
    try:
        set_slos(daemon, setup.scratch, slo_ms)
        asyncio.run(drive(daemon.url, schedule, setup.bodies, slo_ms, plan.warmup_s))
    finally:
        daemon.stop()
    print(f"warmed up: {plan.policies[0]} {load}/{slo}, not measured", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="esg and fcfs, normal load at the three SLOs, short runs")
    parser.add_argument("--seed", type=int, default=0, help="picks the arrivals")
    parser.add_argument("--policies", help="comma-separated (default: every policy)")
    parser.add_argument("--duration-s", type=float, help="measured seconds per setting")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "evaluation" / "real.csv",
                        help="the daemon's CSV (a directory: real.csv in it); the "
                             "simulator's, real_vs_sim.csv, goes beside it")
    args = parser.parse_args(argv)
    if args.out.is_dir():
        args.out = args.out / "real.csv"
    policies = tuple(args.policies.split(",")) if args.policies else (
        ("esg", "fcfs") if args.quick else tuple(POLICIES))
    settings = tuple(("normal", s) for s in SLO_FACTORS) if args.quick else tuple(
        (load, slo) for load in LOAD_LEVELS for slo in SLO_FACTORS)
    plan = Plan(policies, settings, warmup_s=3.0 if args.quick else 5.0,
                duration_s=args.duration_s or (10.0 if args.quick else 20.0),
                profile_kind="small" if args.quick else "full", seed=args.seed,
                capacity_s=5.0 if args.quick else 15.0)
    return run(plan, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
