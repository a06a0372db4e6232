"""Small pieces the field's schedulers share: placement, static SLO shares, rates, lookups.

Pure functions over `esg.policy` values. Placement always checks the node's free vCPUs and the
GPU's free slice units against the snapshot, so a policy built on `place` cannot over-commit a
node; slice sizes are the MIG sizes (1, 2, 3, 4, 7). It also keeps the seam's cap on a
function's concurrent batches (`FunctionLimits.max_instances`), as FCFS and ESG do [ours]: the
papers of the baselines have no such cap, and a batch past it waited in the daemon's sandbox
pool for a busy instance while holding its vCPUs (so the node's other functions waited too),
where the simulator ran it at once on a new one.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from esg.dispatch import fits
from esg.model import Config, Profile, Workflow
from esg.policy import NodeView, Prewarm, Snapshot

#: Ranks candidate (node, gpu) pairs; smaller is better.
NodeKey = Callable[[NodeView, int | None], tuple[float | int | str, ...]]


def warm_then_fullest(function: str, config: Config) -> NodeKey:
    """Prefer a warm sandbox, then the node with the least room left (best fit), then name."""
    return lambda node, gpu: (-min(node.warm.get((function, config), 0), 1),
                              node.free_vcpu, node.name)


def place(
    snapshot: Snapshot, function: str, config: Config, key: NodeKey | None = None
) -> tuple[str, int | None] | None:
    """The best (node, gpu) where `config` fits now, by `key` (default: warm, then best fit);
    None while the function runs its `max_instances` batches."""
    limits = snapshot.limits.get(function)
    cap = None if limits is None else limits.max_instances
    if cap is not None and snapshot.running.get(function, 0) >= cap:
        return None
    rank = key or warm_then_fullest(function, config)
    best: tuple[tuple[float | int | str, ...], str, int | None] | None = None
    for node in snapshot.nodes:
        ok, gpu = fits(node, config)
        if ok:
            score = rank(node, gpu)
            if best is None or score < best[0]:
                best = (score, node.name, gpu)
    return None if best is None else (best[1], best[2])


def home_order(app: str, function: str, names: Iterable[str]) -> list[str]:
    """OpenWhisk's home-invoker progression: home = hash % n, then steps of a coprime size."""
    ordered = sorted(names)
    n = len(ordered)
    if n == 0:
        return []
    digest = zlib.crc32(f"{app}/{function}".encode())
    coprimes = [s for s in range(1, n + 1) if math.gcd(s, n) == 1]
    step = coprimes[digest % len(coprimes)]
    home = digest % n
    return [ordered[(home + i * step) % n] for i in range(n)]


def critical_path_s(workflow: Workflow, seconds: Mapping[str, float]) -> dict[str, float]:
    """Longest path through each function (from any entry to any exit), in seconds."""
    order = workflow.topological_order()
    down: dict[str, float] = {}
    for f in reversed(order):
        down[f] = seconds[f] + max((down[s] for s in workflow.successors(f)), default=0.0)
    up: dict[str, float] = {}
    for f in order:
        up[f] = max((up[p] + seconds[p] for p in workflow.predecessors(f)), default=0.0)
    return {f: up[f] + down[f] for f in order}


def static_slo_shares(
    workflow: Workflow, reference_ms: Mapping[str, float]
) -> dict[str, float]:
    """Per-function SLO (s) proportional to its reference latency, stage-agnostic (ESG §6).

    SLO_f = SLO × t_f / (longest path through f), so every path's shares sum to at most the SLO.
    """
    seconds = {f: reference_ms[f] / 1000 for f in workflow.functions}
    through = critical_path_s(workflow, seconds)
    return {f: workflow.slo_s * seconds[f] / through[f] for f in workflow.functions}


class SloShares:
    """Each application's static per-function SLO shares, computed once from batch-1 profiles.

    The stage-agnostic split that INFless, FaST-GShare and HarmonyBatch use (`static_slo_shares`).
    """

    def __init__(self) -> None:
        self._shares: dict[str, dict[str, float]] = {}

    def share_s(self, app: str, function: str, snapshot: Snapshot) -> float:
        if app not in self._shares:
            wf = snapshot.workflows[app]
            ref = {f: batch1_reference_ms(snapshot.profiles[f]) for f in wf.functions}
            self._shares[app] = static_slo_shares(wf, ref)
        return self._shares[app][function]


def downstream_s(workflow: Workflow, function: str, seconds: Mapping[str, float]) -> float:
    """Longest path strictly after `function` to an exit, with `seconds` per function."""
    memo: dict[str, float] = {}

    def after(f: str) -> float:
        if f not in memo:
            memo[f] = max((seconds[s] + after(s) for s in workflow.successors(f)), default=0.0)
        return memo[f]

    return after(function)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def fastest_ms(profile: Profile) -> float:
    return min(profile.latency_ms.values())


def batch1_reference_ms(profile: Profile) -> float:
    """The latency a stage-agnostic splitter uses: batch 1, median over the other knobs."""
    values = sorted(ms for c, ms in profile.latency_ms.items() if c.batch == 1)
    return values[len(values) // 2] if values else fastest_ms(profile)


@dataclass
class RateMeter:
    """Arrival rate (1/s) as an exponentially weighted average over windows of `window_s`."""

    window_s: float = 1.0
    alpha: float = 0.5
    rate: float = 0.0
    _window_start: float | None = None
    _count: int = 0

    def observe(self, now_s: float, n: int = 1) -> None:
        if self._window_start is None:
            self._window_start = now_s
        self._roll(now_s)
        self._count += n

    def current(self, now_s: float) -> float:
        self._roll(now_s)
        if self._window_start is None:
            return 0.0
        elapsed = now_s - self._window_start
        # Until the first window closes, the running count is the best estimate there is.
        if self.rate == 0.0 and elapsed > 0:
            return self._count / max(elapsed, self.window_s / 10)
        return self.rate

    def _roll(self, now_s: float) -> None:
        if self._window_start is None:
            return
        while now_s - self._window_start >= self.window_s:
            sample = self._count / self.window_s
            self.rate = sample if self.rate == 0.0 else (
                self.alpha * sample + (1 - self.alpha) * self.rate
            )
            self._count = 0
            self._window_start += self.window_s


def closest_fitting(
    snapshot: Snapshot, function: str, planned: Config, cost: Callable[[Config, float], float]
) -> tuple[Config, str, int | None] | None:
    """A pre-planned policy's fallback when its planned configuration fits nowhere now.

    Among the profiled configurations that fit some node, the one whose latency is closest to
    the planned one, not slower if possible; ties to the cheaper. None when nothing fits.
    """
    table = snapshot.profiles[function].latency_ms
    most_free = max((n.free_vcpu for n in snapshot.nodes if n.healthy), default=0)
    if most_free < min(c.vcpu for c in table):
        return None  # nothing of this function fits anywhere: skip the scan
    target = table.get(planned, min(table.values()))
    best: tuple[tuple[int, float, float, Config], Config, str, int | None] | None = None
    for config, ms in table.items():
        if config.batch != planned.batch:
            continue
        where = place(snapshot, function, config)
        if where is None:
            continue
        key = (int(ms > target), abs(ms - target), cost(config, ms), config)
        if best is None or key < best[0]:
            best = (key, config, where[0], where[1])
    return None if best is None else best[1:]


def pareto_steps(table: Mapping[Config, float], cost: Callable[[Config, float], float]) -> list[
    tuple[Config, float, float]
]:
    """Configurations cheapest first, keeping only those faster than every cheaper one:
    the lattice a best-first sizing search steps along. Items are (config, latency_ms, cost)."""
    ordered = sorted(table.items(), key=lambda item: (cost(*item), item[1], item[0]))
    steps: list[tuple[Config, float, float]] = []
    for config, ms in ordered:
        if not steps or ms < steps[-1][1]:
            steps.append((config, ms, cost(config, ms)))
    return steps


def cold_start_s(snapshot: Snapshot, function: str, config: Config,
                 default_ms: float = 0.0) -> float:
    """The driver's cold-start estimate for a sandbox of `config` (`FunctionLimits`), seconds;
    `default_ms` where the driver gave none."""
    limits = snapshot.limits.get(function)
    cpu_ms = default_ms if limits is None or limits.cold_start_ms is None else limits.cold_start_ms
    gpu_ms = 0.0
    if config.vgpu and limits is not None and limits.cold_start_gpu_ms is not None:
        gpu_ms = limits.cold_start_gpu_ms
    return (cpu_ms + gpu_ms) / 1000.0


def idle_warm(snapshot: Snapshot, function: str, config: Config) -> int:
    """Idle warm sandboxes of `config`'s shape across the healthy nodes."""
    return sum(n.warm.get((function, config), 0) for n in snapshot.nodes if n.healthy)


def sandbox_shape(table: Mapping[Config, float], planned: Config) -> Config:
    """How the warm view lists a sandbox of `planned`'s vCPUs and slice: at the smallest batch
    profiled with them (a sandbox serves every batch size)."""
    batch = min(c.batch for c in table if (c.vcpu, c.vgpu) == (planned.vcpu, planned.vgpu))
    return Config(batch, planned.vcpu, planned.vgpu)


class PrewarmLedger:
    """The pre-warms a policy has asked for and that cannot be warm yet, by (function, vCPUs,
    slice): the snapshot shows a sandbox only once it is warm, so without this a policy would
    ask again on every event while one starts. An entry lasts the cold-start estimate."""

    def __init__(self) -> None:
        self._ready: dict[tuple[str, int, int], list[float]] = {}

    def add(self, function: str, config: Config, ready_s: float) -> None:
        self._ready.setdefault((function, config.vcpu, config.vgpu), []).append(ready_s)

    def starting(self, function: str, config: Config, now_s: float) -> int:
        key = (function, config.vcpu, config.vgpu)
        alive = [t for t in self._ready.get(key, ()) if t >= now_s]
        self._ready[key] = alive
        return len(alive)

    def top_up(self, snapshot: Snapshot, function: str, shape: Config, wanted: int,
               limit: int) -> tuple[list[Prewarm], Snapshot]:
        """At most `limit` pre-warms, placed where they fit, so that `wanted` sandboxes of
        `shape` are idle, running or starting; and the snapshot with them reserved."""
        have = (idle_warm(snapshot, function, shape) + snapshot.running.get(function, 0)
                + self.starting(function, shape, snapshot.now_s))
        made: list[Prewarm] = []
        for _ in range(min(wanted - have, limit)):
            where = place(snapshot, function, shape)
            if where is None:
                break
            prewarm = Prewarm(function, shape, where[0], gpu=where[1])
            made.append(prewarm)
            snapshot = snapshot.reserve(prewarm)
            self.add(function, shape, snapshot.now_s + cold_start_s(snapshot, function, shape))
        return made, snapshot
