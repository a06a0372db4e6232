"""The DAG runner: one workflow call, stage by stage, through the controller.

Each function of the workflow becomes one stage invocation in the AFW queue of (workflow,
function), so the scheduling policy sees the whole application (ESG splits its SLO and plans
each stage with the time actually left). A stage is submitted once all its predecessors have
answered (a join waits for every side); the source gets the call's parsed body; every other
stage gets the tensors its feeds name (`faasd.workflows.wiring`). Intermediate tensors never
leave the node: they come back from one sandbox over its channel and go into the next one's
batch. Only the sinks' handlers `postprocess` (when the caller wants that); intermediate stages
always hand over the model's tensors.

A stage that fails fails the call with `StageFailed`, which names the stage and its cause; the
other stages of that call still queued are cancelled (their jobs leave the queues), and no
other call is affected.

In a cluster a stage may run on another node; that node keeps its outputs until the stage's
successors have read them (`Invocation.keep_for`) and answers with where they are
(`CallResult.held_at`). A successor's inputs are then `Held` references, which the node that
runs it reads from the producing node directly, or from its own memory when it is the same
node (`faasd.cluster.outputs`): intermediate tensors go worker → worker, never back through
the entry node. When a node dies holding a stage's outputs before its successors read them,
the tensors are gone: the call then runs again from its source, once, under new stage ids
(the entry still holds the call's body), unless a function of the workflow says
`idempotent: false`, whose call answers the 502 (`"reason": "input_lost"`) instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from esg.pricing import Pricing
from faasd.clock import Clock
from faasd.errors import FaasdError
from faasd.functions.spec import FunctionVersion
from faasd.gateway import CallResult, Gateway, Held
from faasd.sandbox.items import Item, TensorItem, TensorResult
from faasd.workflows.spec import WorkflowSpec
from faasd.workflows.wiring import Wiring

log = logging.getLogger("faasd.workflows")

#: A call whose stage input was lost with a node runs at most this many times in all.
LOST_INPUT_ATTEMPTS = 2


class StageFailed(FaasdError):
    """A stage of a workflow call failed; `stage` names it, the message gives its cause."""

    def __init__(self, workflow: str, stage: str, cause: FaasdError, is_source: bool) -> None:
        super().__init__(
            f"stage {stage!r} of workflow {workflow!r} failed: {cause.message}",
            workflow=workflow, stage=stage, **cause.extra,
        )
        # The source's 4xx is the caller's input; a later stage's 4xx means an earlier stage
        # produced what it cannot take: the workflow's fault, a bad gateway to the caller.
        self.status = cause.status if is_source or cause.status >= 500 else 502
        self.retry_after_s = getattr(cause, "retry_after_s", None)


@dataclass(frozen=True)
class DeployedWorkflow:
    """A workflow as the daemon serves it: spec, feeds, version number."""

    spec: WorkflowSpec
    wiring: Wiring
    version: int
    deployed_at: float


@dataclass
class WorkflowResult:
    """The sinks' results (in the spec's order) and what each stage took."""

    sinks: dict[str, CallResult] = field(default_factory=dict)
    stages: dict[str, CallResult] = field(default_factory=dict)
    #: per stage: when it was submitted and when it answered (the clock's seconds)
    timeline: dict[str, tuple[float, float]] = field(default_factory=dict)

    def outside_s(self, spec: WorkflowSpec, end_s: float) -> float:
        """The time the call spent outside its stages once its source was submitted, along
        the path that decided when it ended: from the last stage to answer back to the
        source, each hop from the predecessor that answered last to the stage's submission,
        plus the time from that last answer to `end_s` (the answer rendered). What a planner
        that spends the SLO must leave over (`esg.policy.Snapshot.outside_ms`)."""
        if not self.timeline:
            return 0.0
        at = max(self.timeline, key=lambda f: self.timeline[f][1])
        total = end_s - self.timeline[at][1]
        while preds := [p for p in spec.predecessors(at) if p in self.timeline]:
            last = max(preds, key=lambda p: self.timeline[p][1])
            total += self.timeline[at][0] - self.timeline[last][1]
            at = last
        return max(0.0, total)

    def before_s(self, spec: WorkflowSpec, start_s: float) -> float:
        """The time from `start_s` (the call's handler began: the body read and parsed) to
        its source stage's submission. Not a reserve for the planners: the call's deadline
        already counts from `start_s`, so they see this time gone from what is left."""
        submitted = self.timeline.get(spec.source)
        return 0.0 if submitted is None else max(0.0, submitted[0] - start_s)

    @property
    def cold_start(self) -> bool:
        return any(r.cold_start for r in self.stages.values())

    def cost(self, pricing: Pricing) -> float:
        """What the call's stages cost (each its share of its batch), in dollars."""
        return sum(r.cost(pricing) for r in self.stages.values())


class WorkflowRunner:
    """Runs workflow calls; `current(name)` is the version of a function that serves now."""

    def __init__(
        self, gateway: Gateway, current: Callable[[str], FunctionVersion], clock: Clock
    ) -> None:
        self._gateway = gateway
        self._current = current
        self._clock = clock

    async def run(
        self,
        workflow: DeployedWorkflow,
        source_version: FunctionVersion,
        source_item: Item,
        *,
        call_id: str,
        start_s: float,
        postprocess: bool,
        on_dispatch: Callable[[], None] | None = None,
    ) -> WorkflowResult:
        """Run every stage of `workflow` for one call; StageFailed if one fails.
        `on_dispatch`: see `Invocation` (the source's; every other stage comes after it).

        The source runs at `source_version` (the one its body was checked against); every
        later stage at the version that serves when it is submitted. A redeploy during the call
        therefore never sends a stage to a version already retired, and a redeploy that would
        not fit the workflow's edges is refused (`faasd.workflows.service`), so the stages of
        one call always fit together. A stage whose input was lost with the node that held it
        runs the whole call again (see the module docstring), its stages as `CALL~2.STAGE`.
        """
        attempt, request_id = 1, call_id
        while True:
            try:
                return await self._attempt(workflow, source_version, source_item,
                                           request_id=request_id, start_s=start_s,
                                           postprocess=postprocess, on_dispatch=on_dispatch)
            except StageFailed as failed:
                if not (failed.extra.get("reason") == "input_lost"
                        and attempt < LOST_INPUT_ATTEMPTS and self._idempotent(workflow)):
                    raise
                log.warning("workflow call %s of %s: %s; running it again from its source",
                            call_id, workflow.spec.name, failed.message)
            attempt += 1
            request_id = f"{call_id}~{attempt}"

    def _idempotent(self, workflow: DeployedWorkflow) -> bool:
        """Whether every function of `workflow` may run a call twice."""
        return all(self._current(f).settings.idempotent for f in workflow.spec.functions)

    async def _attempt(
        self,
        workflow: DeployedWorkflow,
        source_version: FunctionVersion,
        source_item: Item,
        *,
        request_id: str,
        start_s: float,
        postprocess: bool,
        on_dispatch: Callable[[], None] | None,
    ) -> WorkflowResult:
        spec = workflow.spec
        deadline_s = start_s + spec.slo_ms / 1000.0
        sinks = set(spec.sinks())
        result = WorkflowResult()
        done: dict[str, asyncio.Future[dict[str, np.ndarray | Held]]] = {}
        loop = asyncio.get_running_loop()
        for function in spec.functions:
            done[function] = loop.create_future()

        async def stage(function: str) -> None:
            preds = spec.predecessors(function)
            held: dict[str, Held] = {}
            if preds:
                await asyncio.gather(*(done[p] for p in preds))
                version = self._current(function)
                tensors: dict[str, np.ndarray] = {}
                for feed in workflow.wiring[function]:
                    value = done[feed.source].result()[feed.output]
                    if isinstance(value, Held):
                        held[feed.input] = value
                    else:
                        tensors[feed.input] = value
                item: Item = TensorItem(tensors)
            else:
                item, version = source_item, source_version
            invocation = self._gateway.stage_invocation(
                version, item, app=spec.name, request_id=request_id, start_s=start_s,
                deadline_s=deadline_s, postprocess=postprocess and function in sinks,
                held=held, keep_for=sum(1 for e in spec.edges if e.source == function),
                on_dispatch=None if preds else on_dispatch,
            )
            submitted_s = self._clock.now()
            try:
                answer = await self._gateway.call(invocation)
            except FaasdError as exc:
                raise StageFailed(spec.name, function, exc, not preds) from exc
            result.stages[function] = answer
            result.timeline[function] = (submitted_s, self._clock.now())
            if function in sinks:
                result.sinks[function] = answer
            if answer.held_at:
                done[function].set_result({
                    o.name: Held(answer.held_at, invocation.id, o.name) for o in version.outputs})
            else:
                out = answer.result.tensors if isinstance(answer.result, TensorResult) else {}
                done[function].set_result(dict(out))

        tasks = [
            loop.create_task(stage(f), name=f"faasd-{spec.name}-{f}") for f in spec.functions
        ]
        try:
            await _first_failure(tasks)
        finally:
            for task in tasks:
                task.cancel()
            for future in done.values():
                if not future.done():
                    future.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        result.sinks = {f: result.sinks[f] for f in spec.functions if f in result.sinks}
        return result


async def _first_failure(tasks: list[asyncio.Task[None]]) -> None:
    """Wait until every task is done; raise the first failure at once."""
    pending = set(tasks)
    while pending:
        finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for task in finished:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
