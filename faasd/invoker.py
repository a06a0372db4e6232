"""The invoker: carries out one dispatch on this node's sandbox pool.

A batch normally holds calls of one version. During a redeploy it may hold calls pinned to the
old version and calls of the new one; each version's group runs as its own `pool.run`, so every
call is answered by the version it was admitted under. Likewise tensor and body items, and calls
that want the handler's `postprocess` and calls that want the model's tensors (the V2 path), run
as separate, homogeneous `pool.run`s. A sandbox that crashes or times out
fails only the calls of its own run, with the pool's 502/504 error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from esg.model import Config
from faasd.controller import BatchOutcome
from faasd.errors import BadRequest, FaasdError, FunctionError
from faasd.functions.spec import FunctionVersion
from faasd.gateway import CallResult, Invocation
from faasd.metrics import Metrics
from faasd.sandbox.items import Execution, Item, ItemFailure

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
    def __init__(self, pool: Runner, metrics: Metrics) -> None:
        self._pool = pool
        self._metrics = metrics

    async def execute(
        self, config: Config, invocations: list[Invocation], now_s: float
    ) -> BatchOutcome:
        groups: dict[tuple[int, type, bool], list[int]] = {}
        for i, invocation in enumerate(invocations):
            key = (invocation.version.version, type(invocation.item), invocation.postprocess)
            groups.setdefault(key, []).append(i)
        results: list[CallResult | FaasdError | None] = [None] * len(invocations)
        exec_s, cold, ok = 0.0, False, True
        for (_, _, postprocess), indices in groups.items():
            group = [invocations[i] for i in indices]
            version = group[0].version
            items = [inv.item for inv in group]
            try:
                execution = await self._pool.run(version, config, items, postprocess)
            except FaasdError as exc:
                log.warning(
                    "batch of %d call(s) to %s v%d failed: %s (calls %s)",
                    len(group), version.name, version.version, exc.message,
                    ",".join(inv.id for inv in group),
                )
                self._metrics.batch_failed(version.name)
                for i in indices:
                    results[i] = exc
                ok = False
                continue
            exec_s += execution.exec_s
            cold = cold or execution.cold_start
            self._metrics.batch_ran(version.name, len(group), execution.exec_s,
                                    execution.cold_start)
            for i, result in zip(indices, execution.results, strict=True):
                invocation = invocations[i]
                if isinstance(result, ItemFailure):
                    results[i] = _failure(result)
                else:
                    results[i] = CallResult(
                        result=result,
                        cold_start=execution.cold_start,
                        exec_s=execution.exec_s,
                        queue_s=max(0.0, now_s - invocation.start_s),
                        batch_size=len(group),
                        device=execution.device,
                    )
        final = [r if r is not None else FaasdError("no result") for r in results]
        return BatchOutcome(final, exec_s, cold, ok)


def _failure(failure: ItemFailure) -> FaasdError:
    if failure.status == 400:
        return BadRequest(failure.message)
    return FunctionError(failure.message)
