"""The sandbox pool: warm sandboxes per (function, version, shape), started on demand.

- A sandbox's shape is its (vCPU, GPU slice): what its cgroup and its slice fix. The batch size
  is not part of it (a sandbox runs whatever batch it is given), so one warm sandbox serves
  every batch configuration of its shape, and `warm_counts` lists it under each batch size the
  function takes (as `esg.sim.cluster` does). Keyed by the full configuration, a planner that
  moves between batch sizes would start, and evict, a sandbox per size.

- A call takes an idle sandbox of its key, else starts one from the fork server (a cold start),
  within the function's cap (`max_instances`) and the pool's (`max_sandboxes`); at a cap it
  stops an idle sandbox of another key to make room, or waits for one to come free.
- A sandbox that crashes, runs past the function's timeout or runs out of memory is killed and
  dropped; the call raises SandboxCrashed or SandboxTimeout; the next call starts a new one.
- Idle sandboxes older than `keep_alive_s` are stopped (scale to zero, down to
  `min_instances`), and idle ones are pinged now and then; a silent one is killed.
- A sandbox with `vgpu > 0` holds a GPU slice (see `Spawner`) from its fork until its process
  has exited, idle or busy. When no slice of its size is free, an idle sandbox whose slice can
  make room is stopped, or the call waits (up to its timeout) for one to come free; a node
  that can never give that size answers GpuUnavailable at once. A sandbox whose GPU failed is
  killed (`kill_sandboxes`) and replaced like a crashed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from esg.model import Config
from faasd.clock import Clock, SystemClock
from faasd.errors import GpuUnavailable, SandboxCrashed, SandboxTimeout, Unavailable
from faasd.functions.spec import FunctionVersion, ModelInfo
from faasd.sandbox import channel, protocol
from faasd.sandbox.cgroups import Backend
from faasd.sandbox.items import Execution, Item, PoolStats
from faasd.sandbox.process import (
    Death,
    LoadFailed,
    ProtocolViolation,
    SandboxDied,
    SandboxProcess,
    State,
)
from faasd.sandbox.spawner import GpuBinder, Spawner
from faasd.sandbox.validation import deploy_error, oversized_batch

logger = logging.getLogger("faasd.sandbox")

SandboxKey = tuple[str, int, Config]


def sandbox_key(version: FunctionVersion, config: Config) -> SandboxKey:
    """(name, version, shape): the batch size is normalised to 1 (see the module docstring)."""
    return (version.name, version.version, Config(1, config.vcpu, config.vgpu))


def batch_sizes(version: FunctionVersion) -> range:
    """The batch sizes a planner may ask of `version`: 1 to its max_batch_size (a model that
    does not batch gets limits of batch 1 from the controller, so the rest are never asked)."""
    return range(1, max(1, version.settings.max_batch_size) + 1)


@functools.lru_cache(maxsize=4096)
def _warm_entries(
    name: str, shape: Config, sizes: range, idle: int
) -> Mapping[tuple[str, Config], int]:
    """What `idle` sandboxes of `shape` add to `warm_counts`: `idle` under each batch size.
    Kept, not rebuilt: the view is rebuilt on almost every event of a busy daemon, and making
    its configurations anew (and hashing them into a new table) was most of its time."""
    return {(name, Config(b, shape.vcpu, shape.vgpu)): idle for b in sizes}


#: How long loading a version (model, then handler.py) may take, at a deploy's inspection
#: and at a cold start, unless the pool is told otherwise (the daemon's `deploy_timeout_s`).
LOAD_TIMEOUT_S = 60.0
PING_INTERVAL_S = 30.0
PING_TIMEOUT_S = 5.0


@dataclass(eq=False)
class _Entry:
    key: SandboxKey
    version: FunctionVersion
    process: SandboxProcess
    cpus: tuple[int, ...]
    last_used_s: float
    last_ping_s: float
    retired: bool = False
    #: how long starting it took (fork, confine, load): what its first call waited for
    start_s: float = 0.0

    @property
    def name(self) -> str:
        return self.key[0]


@dataclass
class _Counters:
    cold_starts: int = 0
    crashes: int = 0
    timeouts: int = 0
    reserved: Counter[str] = field(default_factory=Counter)


class SandboxPool:
    """Async context manager: starts the fork server on enter, stops every sandbox on exit."""

    def __init__(
        self,
        *,
        state_dir: Path,
        cgroup_parent: str = "faasd",
        max_sandboxes: int = 32,
        confinement: str = "auto",
        namespaces: str = "auto",
        reap_leftovers: bool = False,
        clock: Clock | None = None,
        reap_interval_s: float = 1.0,
        load_timeout_s: float = LOAD_TIMEOUT_S,
        gpu: GpuBinder | None = None,
        max_answer_bytes: int = channel.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        """`max_answer_bytes`: the largest frame a sandbox may send; a larger one is a
        protocol violation (the sandbox is killed, its call fails with SandboxCrashed)."""
        self.state_dir = Path(state_dir)
        self.max_sandboxes = max_sandboxes
        self._spawner = Spawner(self.state_dir, cgroup_parent, confinement, namespaces,
                                reap_leftovers, gpu, max_answer_bytes)
        self._clock = clock or SystemClock()
        self._reap_interval_s = reap_interval_s
        self._load_timeout_s = load_timeout_s
        self._entries: dict[str, _Entry] = {}
        self._idle: dict[SandboxKey, list[_Entry]] = {}
        #: warm_counts(), computed once per change of `_idle` (the controller reads it per event)
        self._warm_view: Mapping[tuple[str, Config], int] | None = None
        self._counters = _Counters()
        self._waiters: list[asyncio.Future[None]] = []
        self._reaper: asyncio.Task[None] | None = None
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()
        #: name -> (how many retire() calls so far, the version the last one retired through)
        self._retirements: dict[str, tuple[int, int | None]] = {}

    @property
    def backend(self) -> Backend:
        return self._spawner.confinement.backend

    @property
    def fork_server_pids(self) -> tuple[int, ...]:
        """The fork servers running now (confined: one per function box; their bwrap's)."""
        return self._spawner.fork_server_pids()

    async def __aenter__(self) -> SandboxPool:
        await self._spawner.start()
        self._reaper = asyncio.create_task(self._reap_forever(), name="sandbox-reaper")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*(self._drop(entry) for entry in list(self._entries.values())))
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._spawner.stop()
        self._wake()

    # --- the contract ------------------------------------------------------------------------

    async def inspect(self, version: FunctionVersion) -> ModelInfo:
        """Load model and handler in a throwaway sandbox; DeployError naming the file if not.

        On the CPU even for a GPU function: what a model takes and gives does not depend on
        the device, and a deploy must not take a GPU slice from the sandboxes serving calls."""
        settings = version.settings
        config = Config(max(1, settings.max_batch_size), max(1, settings.vcpu), 0)
        process, cpus = await self._spawner.spawn(version, config)
        try:
            info = await process.wait_ready(self._load_timeout_s)
        except LoadFailed as failed:
            if failed.kind == protocol.FAILED_SANDBOX:
                raise SandboxCrashed(f"{version.name}: {failed.message}") from None
            raise deploy_error(version, failed.kind, failed.message) from None
        except SandboxDied as died:
            death = await process.death()
            if isinstance(died, ProtocolViolation):
                raise deploy_error(version, "died", f"was killed: {died}") from None
            raise deploy_error(version, "died", death.describe(), death.out_of_memory) from None
        except TimeoutError:
            process.kill()
            raise deploy_error(
                version, "timeout",
                f"it did not finish within deploy_timeout_s ({self._load_timeout_s:g} s)",
                stage=process.loading,
            ) from None
        finally:
            await process.stop()
            self._spawner.release(cpus)
        problem = oversized_batch(version, info)
        if problem is not None:
            raise problem
        return info

    async def run(
        self,
        version: FunctionVersion,
        config: Config,
        items: Sequence[Item],
        postprocess: bool = True,
    ) -> Execution:
        """Run one batch in a sandbox of (version, config); see the module docstring.

        With `postprocess` False every item is answered with the model's output tensors, even
        when the function's handler has a `postprocess` (the V2 inference path).
        """
        if not items:
            raise ValueError("run() needs at least one item")
        entry, cold = await self._acquire(version, config)
        entry.cpus = self._spawner.occupy(entry.process.groups, entry.cpus)
        process = entry.process
        process.state = State.BUSY
        message = {
            "op": "run",
            "items": protocol.items_to_wire(items),
            "postprocess": postprocess,
        }
        try:
            reply = await process.call(message, version.settings.timeout_s)
        except TimeoutError:
            self._counters.timeouts += 1
            process.kill()
            logger.warning(
                "sandbox [%d] of %s ran past its timeout of %g s; killed",
                process.pid,
                version.name,
                version.settings.timeout_s,
            )
            await self._drop(entry)
            raise SandboxTimeout(
                f"{version.name} did not answer within its timeout of "
                f"{version.settings.timeout_s:g} s; its sandbox (pid {process.pid}) was killed",
                function=version.name,
            ) from None
        except SandboxDied as died:
            self._counters.crashes += 1
            death = await process.death()
            await self._drop(entry)
            if isinstance(died, ProtocolViolation):
                logger.warning("sandbox [%d] of %s killed: %s", process.pid, version.name, died)
                raise SandboxCrashed(
                    f"{version.name}'s sandbox (pid {process.pid}) was killed and will be "
                    f"replaced: {died}", function=version.name
                ) from None
            logger.warning("sandbox [%d] of %s %s", process.pid, version.name, death.describe())
            raise SandboxCrashed(
                self._crash_message(version, process.pid, death), function=version.name
            ) from None
        except BaseException:  # cancelled mid-exchange: the channel is out of step, drop it
            process.kill()
            await self._drop(entry)
            raise
        finally:
            self._spawner.vacate(entry.cpus)
        self._release(entry)
        return Execution(
            results=protocol.results_from_wire(reply["results"]),
            cold_start=cold,
            exec_s=float(reply["exec_s"]),
            sandbox_pid=process.pid,
            start_s=entry.start_s if cold else 0.0,
            device=process.device,
        )

    async def prewarm(self, version: FunctionVersion, config: Config, count: int) -> None:
        """Start sandboxes of (version, config) until `count` are idle, within the caps."""
        key = sandbox_key(version, config)
        while len(self._idle.get(key, [])) < count and self._has_room(version):
            entry = await self._start(version, config)
            self._release(entry)

    async def stop_idle(self, version: FunctionVersion, config: Config) -> int:
        """Stop the idle sandboxes of (version, config) now (a profiler cleaning up after
        itself); busy ones are left alone. Returns how many were stopped."""
        idle = list(self._idle.get(sandbox_key(version, config), ()))
        stops = [self._stop(e) for e in idle if self._detach(e)]
        await asyncio.shield(asyncio.gather(*stops))
        return len(stops)

    async def retire(self, name: str, through_version: int | None = None) -> None:
        """Stop the sandboxes of `name` up to `through_version` (every version if None): idle
        ones now, busy ones when their call ends.

        Only versions up to the one retired: a retirement that waited for an old version's
        calls to end may come after a later redeploy, whose sandboxes it must not touch.
        Idle ones leave the books before the first await, so that no call can take one of
        them in between."""
        count, _ = self._retirements.get(name, (0, None))
        self._retirements[name] = (count + 1, through_version)
        doomed = [
            e for e in self._entries.values()
            if e.name == name and _retired_by(e.key[1], through_version)
        ]
        for entry in doomed:
            entry.retired = True
        stops = [self._stop(e) for e in doomed if e.process.state is State.IDLE and self._detach(e)]
        await asyncio.shield(asyncio.gather(*stops))

    def warm_counts(self) -> Mapping[tuple[str, Config], int]:
        """Idle warm sandboxes by (function, config), each listed under every batch size of its
        function: a read-only view, fixed once returned."""
        if self._warm_view is None:
            counts: dict[tuple[str, Config], int] = {}
            shapes: set[tuple[str, Config]] = set()
            for (name, _, shape), idle in self._idle.items():
                if not idle:
                    continue
                entries = _warm_entries(name, shape, batch_sizes(idle[0].version), len(idle))
                if (name, shape) not in shapes:
                    shapes.add((name, shape))
                    counts.update(entries)  # from a dict its stored hashes: none is computed
                else:  # another version's sandboxes of the same shape
                    for key, count in entries.items():
                        counts[key] = counts.get(key, 0) + count
            self._warm_view = MappingProxyType(counts)
        return self._warm_view

    def stats(self) -> PoolStats:
        alive = Counter(e.name for e in self._entries.values())
        idle: Counter[str] = Counter()
        for (name, _, _), entries in self._idle.items():
            idle[name] += len(entries)
        return PoolStats(
            alive=dict(alive),
            idle={n: c for n, c in idle.items() if c},
            cold_starts=self._counters.cold_starts,
            crashes=self._counters.crashes,
            timeouts=self._counters.timeouts,
        )

    # --- acquiring and releasing -----------------------------------------------------------

    async def _acquire(self, version: FunctionVersion, config: Config) -> tuple[_Entry, bool]:
        key = sandbox_key(version, config)
        deadline_s = self._clock.now() + version.settings.timeout_s
        while True:
            if self._closing:
                raise Unavailable("the sandbox pool is shutting down", retry_after_s=1.0)
            entry = self._pop_idle(key)
            if entry is not None:
                return entry, False
            if self._has_room(version):
                try:
                    return await self._start(version, config), True
                except GpuUnavailable as exc:
                    if not exc.busy:
                        raise
                    if await self._evict_gpu_holder(exc.freed_by):
                        continue
                    if deadline_s - self._clock.now() <= 0:
                        raise
                    await self._wait_for_change(deadline_s - self._clock.now())
                    continue
            if await self._evict_for(version.name):
                continue
            remaining_s = deadline_s - self._clock.now()
            if remaining_s <= 0:
                raise Unavailable(
                    f"{version.name}: all {version.settings.max_instances} sandboxes stayed busy "
                    f"for {version.settings.timeout_s:g} s",
                    retry_after_s=1.0,
                )
            await self._wait_for_change(remaining_s)

    def _pop_idle(self, key: SandboxKey) -> _Entry | None:
        idle = self._idle.get(key)
        while idle:
            entry = idle.pop()  # most recently used first, so the others can expire
            self._warm_view = None
            if not entry.process.spawned.has_exited():
                return entry
            self._in_background(self._drop(entry))
        return None

    def _count(self, name: str) -> int:
        return (
            sum(1 for e in self._entries.values() if e.name == name) + self._counters.reserved[name]
        )

    def _has_room(self, version: FunctionVersion) -> bool:
        total = len(self._entries) + sum(self._counters.reserved.values())
        return (
            self._count(version.name) < max(1, version.settings.max_instances)
            and total < self.max_sandboxes
        )

    async def _evict_for(self, name: str) -> bool:
        """Stop the least recently used idle sandbox that blocks `name`: its own other keys first
        (when the function is at its cap), else any (when the pool is). False if none is idle."""
        idle = [e for entries in self._idle.values() for e in entries]
        own = [e for e in idle if e.name == name]
        candidates = own or idle
        if not candidates:
            return False
        victim = min(candidates, key=lambda e: e.last_used_s)
        logger.info(
            "stopping idle sandbox [%d] of %s to make room", victim.process.pid, victim.name
        )
        await self._drop(victim)
        return True

    async def _evict_gpu_holder(self, sizes: frozenset[int]) -> bool:
        """Stop the least recently used idle sandbox holding a GPU slice of one of `sizes`
        (those whose release can make room), and wait until its process has exited (its slice
        is free then). False if none is idle."""
        holders = [e for entries in self._idle.values() for e in entries
                   if e.key[2].vgpu in sizes]
        if not holders:
            return False
        victim = min(holders, key=lambda e: e.last_used_s)
        logger.info("stopping idle sandbox [%d] of %s to free its GPU slice",
                    victim.process.pid, victim.name)
        await self._drop(victim)
        return True

    def kill_sandboxes(self, sandbox_ids: Sequence[str]) -> None:
        """Kill these sandboxes now (their GPU failed): idle ones leave the books, busy ones
        fail their call with SandboxCrashed and are dropped by it."""
        doomed = set(sandbox_ids)
        for entry in [e for e in self._entries.values() if e.process.id in doomed]:
            logger.warning("sandbox [%d] of %s: its GPU failed; killed",
                           entry.process.pid, entry.name)
            entry.process.kill()
            if entry.process.state is State.IDLE and self._detach(entry):
                self._stop(entry)

    async def _wait_for_change(self, timeout_s: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _release(self, entry: _Entry) -> None:
        if entry.retired or self._closing:
            self._in_background(self._drop(entry))
            return
        entry.process.state = State.IDLE
        entry.last_used_s = self._clock.now()
        self._idle.setdefault(entry.key, []).append(entry)
        self._warm_view = None
        self._wake()

    # --- starting and stopping -------------------------------------------------------------

    async def _start(self, version: FunctionVersion, config: Config) -> _Entry:
        """A cold start: fork, confine, load; SandboxCrashed if the function cannot load."""
        name = version.name
        retired_before = self._retirements.get(name)
        began = self._clock.now()
        self._counters.reserved[name] += 1
        try:
            process, cpus = await self._spawner.spawn(version, config)
            try:
                await process.wait_ready(self._load_timeout_s)
            except (LoadFailed, SandboxDied, TimeoutError) as exc:
                reason = await self._start_failure(process, exc)
                await process.stop()
                self._spawner.release(cpus)
                if isinstance(exc, LoadFailed) and exc.kind == protocol.FAILED_GPU:
                    raise GpuUnavailable(f"{name} v{version.version}: {reason}") from None
                raise SandboxCrashed(
                    f"{name} v{version.version} could not start: {reason}"
                ) from None
            except BaseException:  # cancelled while loading: leave nothing behind
                process.kill()
                await asyncio.shield(process.stop())
                self._spawner.release(cpus)
                raise
        finally:
            self._counters.reserved[name] -= 1
            self._wake()
        self._counters.cold_starts += 1
        self._spawner.loaded(process)
        now = self._clock.now()
        entry = _Entry(sandbox_key(version, config), version, process, cpus, now, now)
        entry.start_s = now - began
        retirement = self._retirements.get(name)
        if retirement != retired_before and retirement is not None:  # retired while it loaded
            entry.retired = _retired_by(version.version, retirement[1])
        self._entries[process.id] = entry
        logger.info("sandbox [%d] of %s ready in %.0f ms", process.pid, name, process.load_s * 1e3)
        return entry

    async def _start_failure(self, process: SandboxProcess, exc: BaseException) -> str:
        if isinstance(exc, LoadFailed):
            return exc.message
        if isinstance(exc, ProtocolViolation):
            await process.death()
            return f"the sandbox was killed while loading: {exc}"
        if isinstance(exc, TimeoutError):
            process.kill()
            return "loading the model took too long"
        death = await process.death()
        return f"the sandbox {death.describe()} while loading"

    async def _drop(self, entry: _Entry) -> None:
        """Forget a sandbox and stop it (kill after a grace period)."""
        if self._detach(entry):
            await asyncio.shield(self._stop(entry))

    def _detach(self, entry: _Entry) -> bool:
        """Take a sandbox off the books at once (False if it already was): no call gets it."""
        if self._entries.pop(entry.process.id, None) is None:
            return False
        idle = self._idle.get(entry.key)
        if idle is not None and entry in idle:
            idle.remove(entry)
            self._warm_view = None
        self._spawner.release(entry.cpus)
        return True

    def _stop(self, entry: _Entry) -> asyncio.Task[None]:
        """Start stopping a sandbox taken off the books, as a task of the pool's own (which it
        waits for when it closes): a caller cancelled meanwhile (a retirement cut short by the
        shutdown, a client gone) leaves no process, cgroup or file behind."""
        task = self._in_background(entry.process.stop())
        task.add_done_callback(lambda _: self._wake())
        return task

    def _crash_message(self, version: FunctionVersion, pid: int, death: Death) -> str:
        if death.out_of_memory:
            return (
                f"{version.name} ran out of memory (limit {version.settings.memory_mb} MB): its "
                f"sandbox (pid {pid}) was killed; raise resources.memory_mb in faasd.yaml"
            )
        return f"{version.name}'s sandbox (pid {pid}) {death.describe()} while serving the call"

    # --- keep-alive and liveness -------------------------------------------------------------

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval_s)
            try:
                await self.reap()
            except Exception:
                logger.exception("reaping idle sandboxes failed")

    async def reap(self) -> None:
        """Stop expired idle sandboxes (down to min_instances) and ping long-idle ones."""
        now = self._clock.now()
        for entry in [e for entries in self._idle.values() for e in entries]:
            if entry not in self._idle.get(entry.key, ()):
                continue  # taken by a call (or stopped) while an earlier one was being stopped
            settings = entry.version.settings
            alive = sum(1 for e in self._entries.values() if e.key[:2] == entry.key[:2])
            if now - entry.last_used_s >= settings.keep_alive_s and alive > settings.min_instances:
                logger.info(
                    "sandbox [%d] of %s idle for %.0f s; stopping",
                    entry.process.pid,
                    entry.name,
                    now - entry.last_used_s,
                )
                await self._drop(entry)
            elif now - entry.last_ping_s >= PING_INTERVAL_S:
                await self._ping(entry, now)

    async def _ping(self, entry: _Entry, now: float) -> None:
        idle = self._idle.get(entry.key, [])
        if entry not in idle:
            return
        idle.remove(entry)
        self._warm_view = None
        entry.process.state = State.BUSY
        entry.last_ping_s = now
        if await entry.process.ping(PING_TIMEOUT_S):
            entry.process.state = State.IDLE
            idle.insert(0, entry)  # still the least recently used
            self._warm_view = None
            self._wake()
            return
        logger.warning(
            "sandbox [%d] of %s did not answer a ping; killed", entry.process.pid, entry.name
        )
        entry.process.kill()
        await self._drop(entry)


def _retired_by(version: int, through_version: int | None) -> bool:
    return through_version is None or version <= through_version
