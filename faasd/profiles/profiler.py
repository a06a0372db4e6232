"""The profiler: measures a function in real sandboxes through the pool, then fills the rest.

For each configuration the plan measures (`faasd.profiles.plan`), in Config order: the sample
request repeated `batch` times is run `warmup` times unmeasured (the first run of a new
configuration is a cold start: a sandbox of that vCPU count is started for it, and the start is
recorded as a measured cold start), then `repetitions` times measured. A point's latency is the
mean of the sandbox's own execution times (`Execution.exec_s`: preprocess + model + postprocess,
without the trip over the socket), the same figure every real execution refines it with.

Once every point is measured, the configurations of the plan's grid that were not are filled
by `faasd.profiles.fitting.fill` and stored marked as fitted. A profile that is cancelled or
fails records nothing (its cold starts excepted). A sandbox the profiler started is stopped as
soon as its configuration is measured, so a profile holds at most one sandbox at a time and
leaves none behind; a warm one it found (a serving sandbox) is left as it was.

`gate` is awaited before every run: the background profile after a deploy passes one that
waits until no call is queued or running on the node, so it runs only in idle moments and
delays a call by at most one batch of the sample.
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from esg.model import Config
from esg.refine import Point
from faasd.functions.spec import FunctionVersion
from faasd.profiles.fitting import fill
from faasd.profiles.plan import Plan
from faasd.profiles.sample import NoSample
from faasd.profiles.store import ProfileStore
from faasd.sandbox.items import Execution, Item, ItemFailure

Event = dict[str, Any]


class Runner(Protocol):
    async def run(
        self,
        version: FunctionVersion,
        config: Config,
        items: Sequence[Item],
        postprocess: bool = True,
    ) -> Execution: ...

    async def stop_idle(self, version: FunctionVersion, config: Config) -> int: ...


@dataclass(frozen=True)
class Settings:
    """Runs per configuration: `warmup` unmeasured, then `repetitions` measured (>= 1)."""

    repetitions: int = 3
    warmup: int = 1

    def __post_init__(self) -> None:
        if self.repetitions < 1 or self.warmup < 0:
            raise ValueError("repetitions must be >= 1 and warmup >= 0")


async def _always() -> None:
    return None


class Profiler:
    """Measures one function version along one plan and records the result in the store."""

    def __init__(
        self,
        store: ProfileStore,
        pool: Runner,
        version: FunctionVersion,
        item: Item,
        plan: Plan,
        settings: Settings = Settings(),
        gate: Callable[[], Awaitable[None]] = _always,
    ) -> None:
        self._store = store
        self._pool = pool
        self._version = version
        self._item = item
        self._plan = plan
        self._settings = settings
        self._gate = gate

    async def run(self) -> AsyncIterator[Event]:
        """Progress as JSON-able events: "start", one "point" per measured configuration,
        then "done" with the new profile version (see the module docstring)."""
        version, plan = self._version, self._plan
        total = len(plan.measure)
        yield {"event": "start", "function": version.name, "version": version.version,
               "kind": str(plan.kind), "measure": total, "grid": len(plan.grid),
               "repetitions": self._settings.repetitions}
        measured: dict[Config, Point] = {}
        for done, config in enumerate(plan.measure, start=1):
            point, cold_ms = await self._measure(config)
            measured[config] = point
            event: Event = {"event": "point", "done": done, "total": total,
                            **config_json(config), "latency_ms": round(point.mean_ms, 4),
                            "std_ms": round(point.std_ms, 4)}
            if cold_ms is not None:
                event["cold_start_ms"] = round(cold_ms, 1)
            yield event
        latencies = {c: p.mean_ms for c, p in measured.items()}
        fitted = fill(version.name, latencies, plan.grid)
        profile_version = self._store.record(version.name, version.version, measured, fitted)
        yield {"event": "done", "function": version.name, "version": version.version,
               "profile_version": profile_version, "measured": len(measured),
               "fitted": len(fitted)}

    async def _measure(self, config: Config) -> tuple[Point, float | None]:
        items = [self._item] * config.batch
        cold_ms: float | None = None
        ours = False
        samples: list[float] = []
        for i in range(self._settings.warmup + self._settings.repetitions):
            await self._gate()
            execution = await self._pool.run(self._version, config, items)
            _check(self._version, execution)
            ours = ours or execution.cold_start
            if execution.cold_start and execution.start_s > 0:
                cold_ms = execution.start_s * 1e3
                self._store.observe_cold_start(self._version.name, self._version.version,
                                               cold_ms)
            if i >= self._settings.warmup:
                samples.append(max(execution.exec_s * 1e3, 1e-6))
        if ours:  # the sandbox is ours: leave no idle one of a config nobody uses
            await self._pool.stop_idle(self._version, config)
        std = statistics.pstdev(samples) if len(samples) > 1 else 0.0
        return Point.measured(statistics.fmean(samples), std, len(samples)), cold_ms


def _check(version: FunctionVersion, execution: Execution) -> None:
    for result in execution.results:
        if isinstance(result, ItemFailure):
            raise NoSample(f"{version.name}'s sample request fails when run: {result.message}; "
                           "fix the sample (or the handler) and redeploy")


def config_json(config: Config) -> dict[str, int]:
    return {"batch": config.batch, "vcpu": config.vcpu, "vgpu": config.vgpu}
