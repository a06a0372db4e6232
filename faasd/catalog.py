"""The deployed functions as the daemon serves them: deploy, redeploy, remove, look up.

A deploy is stage (static checks, copy into a new version directory) → inspect (load the model
and handler in a throwaway sandbox) → commit (atomically the current version). Until the
commit, the old version serves every call; calls admitted before it stay pinned to the old
version and finish there; once they have, the old version's idle sandboxes are retired. A
failed deploy discards the staged copy and leaves the current version untouched. Deploys of
one name are serialised by that name's lock, so two of them cannot interleave; deploys of
different names run side by side (a handler whose import hangs for `deploy_timeout_s` holds
up its own name only).

`deploy(..., reuse_unchanged=True)` (what `faasd up --functions DIR` does at every start) keeps
the current version when the directory would install exactly it again (the registry's source
digest: same files, same settings): it is only loaded in a throwaway sandbox, to be sure it
still loads here, and no new version is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from esg.model import Config
from faasd.archive import unpack
from faasd.controller import limits_of
from faasd.errors import Conflict, DeployError, NotFound
from faasd.functions.limits import NodeLimits, check_limits
from faasd.functions.spec import FunctionVersion, ModelInfo

log = logging.getLogger("faasd.catalog")

RETIRE_POLL_S = 0.1


class RegistryLike(Protocol):
    def name_of(self, source: Path, name: str | None = None) -> str: ...
    def stage(self, source: Path, name: str | None = None) -> FunctionVersion: ...
    def commit(self, staged: FunctionVersion, info: ModelInfo) -> FunctionVersion: ...
    def discard(self, staged: FunctionVersion) -> None: ...
    def get(self, name: str) -> FunctionVersion | None: ...
    def unchanged(self, source: Path, name: str | None = None) -> FunctionVersion | None: ...
    def list(self) -> list[FunctionVersion]: ...
    def remove(self, name: str) -> FunctionVersion: ...
    def problem(self, name: str) -> str | None: ...


class PoolLike(Protocol):
    async def inspect(self, version: FunctionVersion) -> ModelInfo: ...
    async def prewarm(self, version: FunctionVersion, config: Config, count: int) -> None: ...
    async def retire(self, name: str, through_version: int | None = None) -> None: ...


class Guard(Protocol):
    """Vetoes changes that would break something built on functions (a workflow)."""

    def check_name(self, name: str) -> None: ...
    def check_deploy(self, version: FunctionVersion, info: ModelInfo) -> None: ...
    def check_remove(self, name: str) -> None: ...


@dataclass(frozen=True)
class Deployed:
    version: FunctionVersion
    info: ModelInfo
    created: bool
    replaced: int | None  # the version it replaced
    unchanged: bool = False  # the current version was kept: the source had not changed


class Catalog:
    def __init__(
        self,
        registry: RegistryLike,
        pool: PoolLike,
        in_flight: Callable[[str, int | None], int],
        vcpu_capacity: int,
        on_change: Callable[[str, FunctionVersion | None], None] | None = None,
        limits: NodeLimits | None = None,
    ) -> None:
        """`on_change(name, version)` hears of every deploy (also one that kept an unchanged
        version) and, with None, every removal, once it is committed. `limits` are the node's
        ceilings, resolved (NodeLimits.resolved); None: only the vCPU capacity is checked."""
        self._registry = registry
        self._limits = limits
        self._pool = pool
        self._in_flight = in_flight
        self._capacity = vcpu_capacity
        self._on_change = on_change
        self._locks: dict[str, asyncio.Lock] = {}
        #: what else must agree to a deploy or removal (the workflows that use functions)
        self.guard: Guard | None = None
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ look-ups

    def get(self, name: str) -> tuple[FunctionVersion, ModelInfo]:
        """The current version of `name` and what loading it revealed; NotFound otherwise."""
        version = self._registry.get(name)
        if version is None:
            raise NotFound(f"no function named {name!r}; deploy one with `faasd deploy DIR`")
        info = ModelInfo(
            version.inputs,
            version.outputs,
            version.batched,
            version.has_preprocess,
            version.has_postprocess,
        )
        return version, info

    def list(self) -> list[tuple[FunctionVersion, ModelInfo]]:
        return [self.get(v.name) for v in self._registry.list()]

    def ready(self, name: str) -> bool:
        return self._registry.get(name) is not None and self._registry.problem(name) is None

    def problem(self, name: str) -> str | None:
        """Why `name` is deployed but not served (its installed copy is damaged), or None."""
        return self._registry.problem(name)

    def problems(self) -> dict[str, str]:
        """Every function that is deployed but not served, with the reason."""
        return {v.name: p for v in self._registry.list()
                if (p := self._registry.problem(v.name)) is not None}

    # ------------------------------------------------------------ changes

    async def deploy(
        self,
        source: Path,
        name: str | None = None,
        *,
        mode: str = "any",
        reuse_unchanged: bool = False,
        name_files_in_source: bool = True,
    ) -> Deployed:
        """Install `source` as the next version. `mode`: "create" (409 if the name exists),
        "update" (404 if it does not) or "any". With `reuse_unchanged`, a source that would
        install the current version again keeps it (see the module docstring). Errors name
        files by their path under `source` unless `name_files_in_source` is off (an unpacked
        upload, whose paths mean nothing to the client)."""
        if not source.is_absolute():
            raise DeployError(f"{source} is not an absolute path; give the full path",
                              file=str(source))
        if not source.is_dir():
            raise DeployError(f"{source} is not a directory on the daemon's host",
                              file=str(source))
        if name is None:  # the static checks name it (config.pbtxt, or the directory)
            name = await asyncio.to_thread(self._registry.name_of, source, None)
        async with self._lock(name):
            self._check_mode(name, mode)  # refuse a wrong mode before copying anything
            if reuse_unchanged and mode != "create":
                kept = await self._keep_unchanged(source, name)
                if kept is not None:
                    return kept
            staged = await asyncio.to_thread(self._registry.stage, source, name)
            try:
                old = self._check_mode(staged.name, mode)
                self._check_resources(staged)
                info = await self._pool.inspect(staged)
                if self.guard is not None:
                    self.guard.check_deploy(staged, info)
            except DeployError as exc:  # the sandbox names files as they are in the copy
                self._registry.discard(staged)
                raise exc.located_in(source) if name_files_in_source else exc from None
            except BaseException:
                self._registry.discard(staged)
                raise
            try:
                final = self._registry.commit(staged, info)
            except BaseException:
                self._registry.discard(staged)
                raise
        log.info("deployed %s v%d from %s", final.name, final.version, source)
        self._changed(final.name, final)
        if old is not None:
            self._spawn(self._retire_when_idle(final.name, old.version))
        if final.settings.min_instances > 0:
            self._spawn(self._prewarm(final))
        return Deployed(final, info, old is None, None if old is None else old.version)

    async def check(self, source: Path, name: str) -> ModelInfo:
        """What deploying `source` as `name` would serve, found by loading it in a throwaway
        sandbox; nothing is installed (DeployError as `deploy` would raise it). A source the
        current version was installed from, unchanged, is neither copied nor loaded: it would
        serve what loading that version recorded. (A workflow's redeploy checks each of its
        function subdirectories, then deploys them with `reuse_unchanged`, which loads an
        unchanged one once; a copy here would spend a version number and log a staged
        version that is never installed.)"""
        if self.guard is not None:
            self.guard.check_name(name)
        async with self._lock(name):
            # The static checks raise here as they would in `stage`: naming files in `source`.
            current = await asyncio.to_thread(self._registry.unchanged, source, name)
            if current is not None:
                return self.get(current.name)[1]
            staged = await asyncio.to_thread(self._registry.stage, source, name)
            try:
                self._check_resources(staged)
                return await self._pool.inspect(staged)
            except DeployError as exc:
                raise exc.located_in(source) from None
            finally:
                self._registry.discard(staged)

    async def deploy_archive(
        self, data: bytes, name: str | None, scratch: Path, *, mode: str = "any",
        max_unpacked_bytes: int | None = None,
    ) -> Deployed:
        """Deploy a tar archive of a function directory (unpacked under `scratch`, then
        removed). Without `name`, the archive's top directory (or config.pbtxt) names it.
        An archive whose files add up past `max_unpacked_bytes` is refused."""
        workdir = scratch / f"upload-{uuid.uuid4().hex}"
        workdir.mkdir(parents=True)
        try:
            directory = await asyncio.to_thread(unpack, data, workdir, max_unpacked_bytes)
            if name is None and directory == workdir:
                name = _pbtxt_name(directory)
                if name is None:
                    raise DeployError(
                        "the archive has no top-level directory to name the function; "
                        "pass ?name=<name> (faasd deploy --upload does)", file="(upload)")
            return await self.deploy(directory, name, mode=mode, name_files_in_source=False)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def remove(self, name: str) -> FunctionVersion:
        async with self._lock(name):
            if self.guard is not None:
                self.guard.check_remove(name)
            removed = self._registry.remove(name)
        self._changed(name, None)
        self._spawn(self._retire_when_idle(name, removed.version))
        return removed

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------ helpers

    def _lock(self, name: str) -> asyncio.Lock:
        """The lock of one function name (made on first use; a handful of bytes per name)."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def _keep_unchanged(self, source: Path, name: str | None) -> Deployed | None:
        """The current version of `source`'s function, loaded once to check it, if `source`
        has not changed since it was deployed; None when a new version is needed."""
        current = await asyncio.to_thread(self._registry.unchanged, source, name)
        if current is None:
            return None
        _, recorded = self.get(current.name)
        info = await self._pool.inspect(current)
        if info != recorded:  # same files, yet they load differently here: record it anew
            log.warning("%s v%d loads differently than when it was deployed; redeploying",
                        current.name, current.version)
            return None
        log.info("%s v%d is unchanged in %s; kept", current.name, current.version, source)
        self._changed(current.name, current)
        if current.settings.min_instances > 0:
            self._spawn(self._prewarm(current))
        return Deployed(current, info, created=False, replaced=None, unchanged=True)

    def _check_mode(self, name: str, mode: str) -> FunctionVersion | None:
        """The current version of `name`, if `mode` allows deploying it; Conflict/NotFound."""
        old = self._registry.get(name)
        if mode == "create" and old is not None:
            raise Conflict(f"function {name!r} exists; update it with PUT "
                           "(`faasd deploy` does this)")
        if mode == "update" and old is None:
            raise NotFound(f"no function named {name!r} to update; POST it first")
        return old

    def _check_resources(self, version: FunctionVersion) -> None:
        if self._limits is not None:
            others = sum(v.settings.min_instances for v in self._registry.list()
                         if v.name != version.name)
            problem = check_limits(version.name, version.settings, self._limits, others)
            if problem is not None:
                raise problem
        if version.settings.vcpu > self._capacity:
            raise DeployError(
                f"{version.name} asks for {version.settings.vcpu} vCPUs but this node has "
                f"{self._capacity}; lower resources.vcpu",
                file="faasd.yaml",
            )

    async def _retire_when_idle(self, name: str, old: int) -> None:
        while self._in_flight(name, old) > 0:
            await asyncio.sleep(RETIRE_POLL_S)
        await self._pool.retire(name, through_version=old)

    async def _prewarm(self, version: FunctionVersion) -> None:
        limits = limits_of(version)
        config = Config(batch=limits.max_batch, vcpu=limits.vcpu)
        try:
            await self._pool.prewarm(version, config, version.settings.min_instances)
        except Exception:
            log.exception("prewarming %s v%d failed", version.name, version.version)

    def _changed(self, name: str, version: FunctionVersion | None) -> None:
        if self._on_change is not None:
            try:
                self._on_change(name, version)
            except Exception:  # a listener's bug must not undo a committed deploy
                log.exception("on_change(%s) failed", name)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _pbtxt_name(directory: Path) -> str | None:
    """The `name:` of a config.pbtxt at the top of `directory`, if there is one."""
    pbtxt = directory / "config.pbtxt"
    if not pbtxt.is_file():
        return None
    for line in pbtxt.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "name":
            return value.strip().strip('"') or None
    return None
