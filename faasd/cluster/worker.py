"""The worker's side of a placed batch: gather its calls from their entry nodes, run it once.

The leader places a batch on a worker and tells each entry node holding some of its calls
(`faasd.cluster.messages.Assignment`); each entry sends its share of the payloads here
(`RunRequest`). The batch runs when every call it names has arrived, or `gather_s` after the
first share came (an entry that died, or whose client left, does not hold the others up), on
this node's sandboxes through the same invoker a local batch uses. Each entry gets its own
calls' results in the answer to its request.

Fencing: a request whose term is older than the highest this node has seen is refused
(`StaleTerm`, 409): a deposed leader's placements never run after its successor's.

Versions: a batch runs this node's current version of its function. Nodes number the
versions they install on their own, and a redeploy reaches them one after another, so for a
moment two nodes may answer with different versions, as replicas do in a rolling update. A
function this node does not have (yet) runs nothing: the entry node places the calls again.

Workflow stages (`faasd.cluster.outputs`): before a batch runs, the inputs its calls hold as
`Held` references are read, from this node's `OutputStore` or from the node that produced
them (one request per node and batch); after it ran, a call with successors (`keep_for`)
leaves its outputs in the store and answers with `held_at` instead of tensors. `execute` does
both around the invoker, so it is also the leader's executor for its own calls
(`faasd.controller.Executor`). An input that cannot be read (its node died, or it expired)
fails that call with a 502 that says so: the tensors are gone, and running the stage again
would not bring them back.

Deduplication: a call id this node runs or ran in the last `keep_s` is not run again; a second
request for it waits for (or gets) the first run's result. The batch itself runs in a task of
its own: an entry that hangs up does not cancel its batch-mates, and its result is kept for a
retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from esg.model import Config
from faasd.clock import Clock
from faasd.cluster.errors import InputLost, NotRun, StaleTerm
from faasd.cluster.leadership import Fence
from faasd.cluster.messages import BatchSummary, Job, MessageError, RunReply, RunRequest
from faasd.cluster.outputs import OutputStore, decode_pulled, encode_pull
from faasd.cluster.peers import PeerLost, Peers, PeerUnreachable
from faasd.controller import BatchOutcome, Executor
from faasd.errors import FaasdError
from faasd.functions.spec import FunctionVersion
from faasd.gateway import NOTHING_HELD, CallResult, Invocation
from faasd.sandbox.items import TensorItem, TensorResult

log = logging.getLogger("faasd.cluster")

Tensors = dict[str, np.ndarray]

#: How long a batch waits for the shares of entries that have not sent theirs.
GATHER_S = 0.2
#: How long a finished call's result is kept for a retried request.
KEEP_S = 60.0


@dataclass
class _Batch:
    request: RunRequest
    expected: set[str]
    jobs: dict[str, Job] = field(default_factory=dict)
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    summary: asyncio.Future[BatchSummary] | None = None


class Worker:
    def __init__(
        self,
        *,
        name: str,
        fence: Fence,
        executor: Executor,
        versions: Callable[[str], FunctionVersion | None],
        clock: Clock,
        peers: Peers | None = None,
        address: Callable[[str], str | None] = lambda node: None,
        gather_s: float = GATHER_S,
        keep_s: float = KEEP_S,
    ) -> None:
        """`address(node)` is another node's HTTP address (to read the outputs it holds)."""
        self.name = name
        self._peers = peers
        self._address = address
        self.outputs = OutputStore()
        self._fence = fence
        self._executor = executor
        self._versions = versions
        self._clock = clock
        self._gather_s = gather_s
        self._keep_s = keep_s
        self._batches: dict[str, _Batch] = {}
        #: every call this node runs or ran lately, by id
        self._calls: dict[str, asyncio.Future[CallResult | FaasdError]] = {}
        self._expiry: deque[tuple[float, str]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches_run = 0
        #: vCPUs of the batches other nodes' calls run here now (the state report subtracts
        #: them: this node's controller does not count them)
        self.busy_vcpu = 0
        #: told when a batch starts or ends here (the state reporter: warm sandboxes changed)
        self.on_change: Callable[[], None] | None = None

    async def run(self, request: RunRequest) -> RunReply:
        """Run this entry's share of a batch; its calls' results (see the module docstring)."""
        if not self._fence.admit(request.term):
            raise StaleTerm(request.term, self._fence.max_term)
        self._expire()
        batch = self._batches.get(request.batch)
        if batch is None:
            batch = self._batches[request.batch] = _Batch(request, set(request.batch_ids))
            loop = asyncio.get_running_loop()
            batch.summary = loop.create_future()
            task = loop.create_task(self._run_batch(batch), name=f"faasd-remote-{request.batch}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        batch.expected.difference_update(request.skipped)
        mine: dict[str, asyncio.Future[CallResult | FaasdError]] = {}
        for job in request.jobs:
            known = self._calls.get(job.id)
            if known is None:  # a new call: it joins the batch
                known = self._calls[job.id] = asyncio.get_running_loop().create_future()
                batch.jobs[job.id] = job
            else:  # run or running already: this batch does not wait for it
                batch.expected.discard(job.id)
            mine[job.id] = known
        if batch.expected <= batch.jobs.keys():
            batch.complete.set()
        assert batch.summary is not None
        # shielded: a request whose entry hangs up does not cancel what runs for others
        results = {i: await asyncio.shield(f) for i, f in mine.items()}
        summary = await asyncio.shield(batch.summary)
        return RunReply(summary, results)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run_batch(self, batch: _Batch) -> None:
        assert batch.summary is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(batch.complete.wait(), self._gather_s)
        del self._batches[batch.request.batch]  # late shares start a batch of their own
        now = self._clock.now()
        runnable: list[Invocation] = []
        version = self._versions(batch.request.function)
        for job in batch.jobs.values():
            if version is None:
                self._settle(job.id, NotRun(
                    f"{batch.request.function} is not deployed on {self.name} (yet); placing "
                    "the call again"))
                continue
            runnable.append(Invocation(
                id=job.id, function=batch.request.function, version=version, item=job.item,
                start_s=now, deadline_s=now + job.left_s, postprocess=job.postprocess,
                held=job.held, keep_for=job.keep_for))
        summary = BatchSummary(ok=False)
        if runnable:
            summary = await self._run_here(batch.request, runnable, now)
        batch.summary.set_result(summary)

    async def _run_here(self, request: RunRequest, runnable: list[Invocation],
                        now: float) -> BatchSummary:
        """Run the gathered calls, counted as busy vCPUs here while they run; each call's
        result settled, and how the batch went."""
        self.busy_vcpu += request.config.vcpu
        if self.on_change is not None:
            self.on_change()
        try:
            outcome = await self.execute(request.config, runnable, now)
        except Exception as exc:  # an invoker bug: the calls fail, the node serves on
            log.exception("batch %s of %s failed", request.batch, request.function)
            for invocation in runnable:
                self._settle(invocation.id, FaasdError(f"internal error on {self.name}: {exc}"))
            return BatchSummary(ok=False)
        finally:
            self.busy_vcpu -= request.config.vcpu
            if self.on_change is not None:
                self.on_change()
        self.batches_run += 1
        for invocation, result in zip(runnable, outcome.results, strict=True):
            if isinstance(result, CallResult):
                result = dataclasses.replace(result, node=self.name)
            self._settle(invocation.id, result)
        return BatchSummary(outcome.exec_s, outcome.cold_start, outcome.ok)

    # ------------------------------------------------------------ workflow stages' outputs

    async def execute(self, config: Config, invocations: list[Invocation],
                      now_s: float) -> BatchOutcome:
        """Run a batch on this node: held inputs read first, outputs kept after (see the
        module docstring)."""
        order = [i.id for i in invocations]  # results go back in the batch's order
        failed: dict[str, FaasdError] = {}
        if any(i.held for i in invocations):
            invocations, failed = await self._resolve(invocations)
        outcome = BatchOutcome([], 0.0, False, True)
        if invocations:
            outcome = await self._executor.execute(config, invocations, now_s)
        results: dict[str, CallResult | FaasdError] = dict(failed)
        for invocation, result in zip(invocations, outcome.results, strict=True):
            if (invocation.keep_for and isinstance(result, CallResult)
                    and isinstance(result.result, TensorResult)):
                self.outputs.put(invocation.id, result.result.tensors, invocation.keep_for,
                                 self._clock.now())
                result = dataclasses.replace(result, result=TensorResult({}),
                                             held_at=self.name)
            results[invocation.id] = result
        return BatchOutcome([results[i] for i in order], outcome.exec_s, outcome.cold_start,
                            outcome.ok and not failed)

    def serve_outputs(self, wanted: dict[str, list[str]]) -> dict[str, Tensors | None]:
        """Another node's read of outputs held here (None for a call not held)."""
        now = self._clock.now()
        found: dict[str, Tensors | None] = {}
        for call_id, names in wanted.items():
            taken = self.outputs.take(call_id, names, now, local=False)
            found[call_id] = None if taken is None else dict(taken)
        return found

    async def _resolve(self, invocations: list[Invocation]
                       ) -> tuple[list[Invocation], dict[str, FaasdError]]:
        """The invocations with their held inputs read in; those whose inputs are gone."""
        wanted: dict[str, dict[str, set[str]]] = {}
        for invocation in invocations:
            for held in invocation.held.values():
                wanted.setdefault(held.node, {}).setdefault(held.call_id, set()).add(held.output)
        nodes = list(wanted)
        reads = await asyncio.gather(*(self._read(node, wanted[node]) for node in nodes))
        found: dict[tuple[str, str], Tensors | None] = {}
        problems: dict[str, str] = {}
        for node, (got, problem) in zip(nodes, reads, strict=True):
            for call_id in wanted[node]:
                found[(node, call_id)] = got.get(call_id)
            if problem:
                problems[node] = problem
        ready: list[Invocation] = []
        failed: dict[str, FaasdError] = {}
        for invocation in invocations:
            tensors = dict(invocation.item.tensors) if isinstance(invocation.item,
                                                                  TensorItem) else {}
            missing = None
            for name, held in invocation.held.items():
                kept = found.get((held.node, held.call_id))
                if kept is None or held.output not in kept:
                    missing = held
                    break
                tensors[name] = kept[held.output]
            if missing is None:
                ready.append(dataclasses.replace(invocation, item=TensorItem(tensors),
                                               held=NOTHING_HELD))
                continue
            why = problems.get(missing.node, "it is no longer there (expired or already read)")
            failed[invocation.id] = InputLost(
                f"the input {missing.output!r} of {invocation.function}, kept on "
                f"{missing.node}, could not be read: {why}", reason="input_lost")
        return ready, failed

    async def _read(self, node: str, wanted: dict[str, set[str]]
                    ) -> tuple[dict[str, Tensors | None], str]:
        """The outputs `wanted` (call id → names) from `node`, and what went wrong if any."""
        now = self._clock.now()
        if node == self.name:
            return {c: self.outputs.take(c, names, now) for c, names in wanted.items()}, ""
        address = self._address(node)
        if address is None or self._peers is None:
            return {}, f"{node} is not an alive member of the cluster"
        try:
            status, body = await self._peers.post(address, "/system/cluster/outputs",
                                                  encode_pull(wanted), 30.0)
        except (PeerUnreachable, PeerLost) as exc:
            return {}, str(exc)
        if status != 200:
            return {}, f"{node} answered {status}"
        try:
            return dict(decode_pulled(body)), ""
        except MessageError as exc:
            return {}, str(exc)

    def _settle(self, call_id: str, result: CallResult | FaasdError) -> None:
        future = self._calls.get(call_id)
        if future is not None and not future.done():
            future.set_result(result)
        if isinstance(result, NotRun):
            self._calls.pop(call_id, None)  # not run: a later request may run it
        else:
            self._expiry.append((self._clock.now() + self._keep_s, call_id))

    def _expire(self) -> None:
        now = self._clock.now()
        while self._expiry and self._expiry[0][0] <= now:
            _, call_id = self._expiry.popleft()
            future = self._calls.get(call_id)
            if future is not None and future.done():
                del self._calls[call_id]
