"""The invoker: carries out one dispatch on this node's sandbox pool.

A batch normally holds calls of one version. During a redeploy it may hold calls pinned to the
old version and calls of the new one; each version's group runs as its own `pool.run`, so every
call is answered by the version it was admitted under. Likewise tensor and body items, and calls
that want the handler's `postprocess` and calls that want the model's tensors (the V2 path), run
as separate, homogeneous `pool.run`s. A sandbox that times out fails the calls of its own run
with the pool's 504.

A sandbox that dies mid-batch (a crash, out of memory) may have been killed by one call's
input; its batch-mates are not to blame. Unless the function says `idempotent: false`, the
run is retried in halves, each on a sandbox of its own, down to single calls: only a call that
kills a sandbox on its own gets the 502, and a poisoned batch of n costs about 2 log2(n) extra
runs. (Reconstructed: the issue asks for "smaller batches, down to 1"; halving is our choice.)

`on_batch(version, config, execution)`, if given, hears of every `pool.run` that returned (the
profile service refines its profiles with it); an exception it raises is logged, never a
call's failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from esg.model import Config
from faasd.controller import BatchOutcome
from faasd.errors import BadRequest, FaasdError, FunctionError, SandboxCrashed
from faasd.functions.spec import FunctionVersion
from faasd.gateway import CallResult, Invocation
from faasd.metrics import Metrics
from faasd.sandbox.items import Execution, Item, ItemFailure, ItemResult

log = logging.getLogger("faasd.invoker")


class Runner(Protocol):
    async def run(
        self,
        version: FunctionVersion,
        config: Config,
        items: Sequence[Item],
        postprocess: bool = True,
    ) -> Execution: ...


class Invoker:
    def __init__(
        self,
        pool: Runner,
        metrics: Metrics,
        on_batch: Callable[[FunctionVersion, Config, Execution], None] | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._on_batch = on_batch

    async def execute(
        self, config: Config, invocations: list[Invocation], now_s: float
    ) -> BatchOutcome:
        groups: dict[tuple[int, type, bool], list[int]] = {}
        for i, invocation in enumerate(invocations):
            key = (invocation.version.version, type(invocation.item), invocation.postprocess)
            groups.setdefault(key, []).append(i)
        results: list[CallResult | FaasdError | None] = [None] * len(invocations)
        total = _Runs()
        for (_, _, postprocess), indices in groups.items():
            group = [invocations[i] for i in indices]
            runs = await self._run(group[0].version, config, group, postprocess, now_s)
            for i, outcome in zip(indices, runs.outcomes, strict=True):
                results[i] = outcome
            total = total.merged(_Runs([], runs.exec_s, runs.cold_start, runs.ok))
        final = [r if r is not None else FaasdError("no result") for r in results]
        return BatchOutcome(final, total.exec_s, total.cold_start, total.ok)

    async def _run(
        self, version: FunctionVersion, config: Config, group: list[Invocation],
        postprocess: bool, now_s: float,
    ) -> _Runs:
        """`group` in one sandbox run; if its sandbox dies, again in halves (see the module
        docstring). One outcome per invocation, in order."""
        items = [inv.item for inv in group]
        try:
            execution = await self._pool.run(version, config, items, postprocess)
        except SandboxCrashed as exc:
            self._metrics.batch_failed(version.name)
            if len(group) == 1 or not version.settings.idempotent:
                self._log_failure(group, exc)
                return _Runs([exc] * len(group), ok=False)
            log.warning("batch of %d call(s) to %s v%d lost its sandbox (%s); retrying in "
                        "halves", len(group), version.name, version.version, exc.message)
            middle = len(group) // 2
            first = await self._run(version, config, group[:middle], postprocess, now_s)
            second = await self._run(version, config, group[middle:], postprocess, now_s)
            return first.merged(second)
        except FaasdError as exc:
            self._metrics.batch_failed(version.name)
            self._log_failure(group, exc)
            return _Runs([exc] * len(group), ok=False)
        self._metrics.batch_ran(version.name, len(group), execution.exec_s,
                                execution.cold_start)
        if self._on_batch is not None:
            try:
                self._on_batch(version, config, execution)
            except Exception:
                log.exception("observing a batch of %s failed", version.name)
        outcomes = [_outcome(result, execution, invocation, len(group), config, now_s)
                    for result, invocation in zip(execution.results, group, strict=True)]
        return _Runs(outcomes, execution.exec_s, execution.cold_start)

    @staticmethod
    def _log_failure(group: Sequence[Invocation], exc: FaasdError) -> None:
        version = group[0].version
        log.warning("batch of %d call(s) to %s v%d failed: %s (calls %s)", len(group),
                    version.name, version.version, exc.message,
                    ",".join(inv.id for inv in group))


@dataclass(frozen=True)
class _Runs:
    """What one or more sandbox runs of a group gave: outcomes in order, and their costs."""

    outcomes: list[CallResult | FaasdError] = field(default_factory=list)
    exec_s: float = 0.0
    cold_start: bool = False
    ok: bool = True

    def merged(self, other: _Runs) -> _Runs:
        return _Runs([*self.outcomes, *other.outcomes], self.exec_s + other.exec_s,
                     self.cold_start or other.cold_start, self.ok and other.ok)


def _outcome(result: ItemResult, execution: Execution, invocation: Invocation, batch_size: int,
             config: Config, now_s: float) -> CallResult | FaasdError:
    if isinstance(result, ItemFailure):
        return _failure(result)
    return CallResult(
        result=result,
        cold_start=execution.cold_start,
        exec_s=execution.exec_s,
        queue_s=invocation.queued_for_s(now_s),
        batch_size=batch_size,
        config=config,
        device=execution.device,
    )


def _failure(failure: ItemFailure) -> FaasdError:
    if failure.status == 400:
        return BadRequest(failure.message)
    return FunctionError(failure.message)
