"""The profile service: the daemon's one owner of profiles.

* It refines profiles online: the invoker calls `on_batch` after every executed batch.
* It runs profiles: `start_profile(name)` for `faasd profile` (one at a time per function), and
  a small one in the background after each deploy (`function_changed`) unless switched off
  (`profile_on_deploy: false`). Background profiles run one at a time, only while no call is
  queued or running on the node (see `faasd.profiles.profiler`), and are cancelled by a
  redeploy or removal of their function and by shutdown. A version that already has a measured
  profile (a restart that kept it) is not profiled again.
* It answers the controller: `profiles()` and `cold_starts_ms()`, read-only views that are
  rebuilt only when something changed.
* It flushes online refinements to the store every `flush_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from esg.model import Config, Profile
from esg.pricing import DEFAULT_PRICING, Pricing
from faasd.errors import Conflict, FaasdError, Unavailable
from faasd.functions.spec import FunctionVersion, ModelInfo
from faasd.profiles import table
from faasd.profiles.plan import Kind, plan
from faasd.profiles.profiler import Event, Profiler, Runner, Settings
from faasd.profiles.sample import NoSample, load_sample
from faasd.profiles.store import ProfileStore
from faasd.sandbox.items import Execution, ItemFailure

log = logging.getLogger("faasd.profiles")

IDLE_POLL_S = 0.05


class CatalogLike(Protocol):
    def get(self, name: str) -> tuple[FunctionVersion, ModelInfo]: ...


def max_batch(version: FunctionVersion) -> int:
    """The largest batch a planner may give the function (1 without a dynamic batch axis)."""
    return max(1, version.settings.max_batch_size) if version.batched else 1


class ProfileService:
    def __init__(
        self,
        store: ProfileStore,
        pool: Runner,
        *,
        node_vcpu: int,
        pricing: Pricing = DEFAULT_PRICING,
        profile_on_deploy: bool = True,
        settings: Settings = Settings(),  # noqa: B008 - frozen, immutable
        small_settings: Settings = Settings(repetitions=2),  # noqa: B008
        flush_interval_s: float = 2.0,
    ) -> None:
        self.store = store
        self.pricing = pricing
        self.profile_on_deploy = profile_on_deploy
        self._pool = pool
        self._catalog: CatalogLike | None = None
        self._busy: Callable[[], int] = lambda: 0
        self._node_vcpu = node_vcpu
        self._settings = settings
        self._small_settings = small_settings
        self._flush_interval_s = flush_interval_s
        self._background: dict[str, asyncio.Task[None]] = {}
        self._background_lock = asyncio.Lock()
        self._running: set[str] = set()
        self._closing = False
        self._flusher: asyncio.Task[None] | None = None
        self.refinements: Counter[str] = Counter()
        self.updates: Counter[str] = Counter()

    # ------------------------------------------------------------ lifecycle

    def bind(self, catalog: CatalogLike, busy: Callable[[], int]) -> None:
        """What the service needs that is built after it (the invoker that feeds `on_batch`
        comes first): the functions, and how many calls are queued or running."""
        self._catalog = catalog
        self._busy = busy

    def _functions(self) -> CatalogLike:
        if self._catalog is None:
            raise RuntimeError("ProfileService.bind(catalog, busy) was not called")
        return self._catalog

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush_forever(), name="profile-flush"
        )

    async def stop(self) -> None:
        """Stop profiling: background profiles are cancelled, running `faasd profile` streams
        end at their next run with a 503 line. The store stays open for refinements."""
        self._closing = True
        tasks = list(self._background.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """`stop()`, then flush the refinements and close the store."""
        await self.stop()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.store.close()

    # ------------------------------------------------------------ hooks

    def on_batch(self, version: FunctionVersion, config: Config, execution: Execution) -> None:
        """One real batch ran at `config` (its vCPUs and GPU slice; its batch size is the
        number of calls it held): refine that point, and record a cold start it waited for.
        Not used for the point: a batch with a failed call (a rejected input returns early)
        and the first batch of a new sandbox (its first run pays one-time initialisation,
        which the profiler's warm-up excludes too)."""
        name = version.name
        if execution.cold_start:
            if execution.start_s > 0:
                self.store.observe_cold_start(name, version.version, execution.start_s * 1e3)
            return
        results = execution.results
        if not results or execution.exec_s <= 0:
            return
        if any(isinstance(r, ItemFailure) for r in results):
            return
        point = Config(len(results), config.vcpu, config.vgpu)
        if self.store.observe(name, version.version, point, execution.exec_s * 1e3):
            self.updates[name] += 1
        self.refinements[name] += 1

    def function_changed(self, name: str, version: FunctionVersion | None) -> None:
        """`name` now serves `version` (None: removed): see the module docstring."""
        self.store.set_current(name, None if version is None else version.version)
        old = self._background.pop(name, None)
        if old is not None:
            old.cancel()
        if version is None or not self.profile_on_deploy or self._closing:
            return
        if self.store.has_measured(name, version.version):
            return
        task = asyncio.get_running_loop().create_task(
            self._profile_in_background(version), name=f"profile-{name}"
        )
        self._background[name] = task
        task.add_done_callback(lambda t: self._forget_background(name, t))

    # ------------------------------------------------------------ views

    def profiles(self) -> Mapping[str, Profile]:
        return self.store.profiles()

    def cold_starts_ms(self) -> Mapping[str, float]:
        return self.store.cold_starts_ms()

    def table(self, name: str) -> dict[str, Any]:
        """`GET /system/profile/{name}`: the current version's table (NotFound if no such
        function)."""
        version, _ = self._functions().get(name)
        number = version.version
        return table.document(
            name, number, self.store.profile_version(name, number),
            self.store.points(name, number), self.store.cold_starts(name, number),
            self.pricing, name in self._running or name in self._background,
        )

    # ------------------------------------------------------------ profiling

    def start_profile(self, name: str, kind: Kind = Kind.FULL) -> ProfileRun:
        """Check that `name` can be profiled now, then return its run: its progress events
        (the profile runs as they are consumed). NotFound, NoSample (400), Conflict (409) or
        Unavailable (503) are raised here, before any event. The caller must `close()` the
        run (iterating it to the end does)."""
        if self._closing:
            raise Unavailable("faasd is shutting down; profile after it restarts")
        version, info = self._functions().get(name)
        item = load_sample(version, info)
        if name in self._running:
            raise Conflict(f"{name} is being profiled already; wait for that run to finish "
                           f"(GET /system/profile/{name} shows running: false then)")
        background = self._background.pop(name, None)
        if background is not None:
            background.cancel()
        self._running.add(name)
        profile_plan = plan(kind, max_batch(version), self._node_vcpu)
        profiler = Profiler(self.store, self._pool, version, item, profile_plan,
                            self._settings, gate=self._open)
        return ProfileRun(profiler.run(), lambda: self._running.discard(name))

    async def _open(self) -> None:
        if self._closing:
            raise Unavailable("faasd is shutting down; the profile was stopped")

    async def _idle(self) -> None:
        """The background gate: wait until no call is queued or running."""
        await self._open()
        while self._busy() > 0:
            await asyncio.sleep(IDLE_POLL_S)
            await self._open()

    async def _profile_in_background(self, version: FunctionVersion) -> None:
        name = version.name
        async with self._background_lock:
            try:
                current, info = self._functions().get(name)
                if current.version != version.version or name in self._running:
                    return
                item = load_sample(current, info)
                small = plan(Kind.SMALL, max_batch(current), self._node_vcpu)
                profiler = Profiler(self.store, self._pool, current, item, small,
                                    self._small_settings, gate=self._idle)
                async for event in profiler.run():
                    if event["event"] == "done":
                        log.info("small profile of %s v%d: %d measured, %d fitted "
                                 "(profile version %d)", name, current.version,
                                 event["measured"], event["fitted"], event["profile_version"])
            except NoSample as exc:
                log.info("no background profile of %s: %s", name, exc.message)
            except FaasdError as exc:
                log.warning("background profile of %s stopped: %s", name, exc.message)
            except Exception:
                log.exception("background profile of %s failed", name)

    def _forget_background(self, name: str, task: asyncio.Task[None]) -> None:
        if self._background.get(name) is task:
            del self._background[name]

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            try:
                self.store.flush()
            except Exception:
                log.exception("writing the profile refinements failed")

    # ------------------------------------------------------------ metrics

    def collector(self) -> Collector:
        return _ProfileMetrics(self)


class ProfileRun:
    """One `faasd profile` run: iterate it for its events; `close()` ends it (idempotent)."""

    def __init__(self, events: AsyncIterator[Event], done: Callable[[], None]) -> None:
        self._events = events
        self._done = done
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            async for event in self._events:
                yield event
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._done()


class _ProfileMetrics(Collector):
    def __init__(self, service: ProfileService) -> None:
        self._service = service

    def collect(self) -> Iterator[CounterMetricFamily]:
        refinements = CounterMetricFamily(
            "faasd_profile_refinements",
            "Executed batches that refined a profile point online.", labels=["function_name"],
        )
        for name, count in sorted(self._service.refinements.items()):
            refinements.add_metric([name], count)
        yield refinements
        updates = CounterMetricFamily(
            "faasd_profile_updates",
            "Refinements that changed a published latency (and so the profile version).",
            labels=["function_name"],
        )
        for name, count in sorted(self._service.updates.items()):
            updates.add_metric([name], count)
        yield updates

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())
