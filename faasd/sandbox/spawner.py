"""Forking confined workers: CPUs, cgroups, a uid and a scratch directory, then a fork server.

The pool decides *when* a sandbox starts; the spawner decides *where* it runs: it spreads
sandboxes over the daemon's CPUs (least-loaded first), binds a sandbox with `vgpu > 0` to a GPU
slice (when the daemon has a `GpuBinder`: the slice's environment travels in the worker's spec
and is set before onnxruntime starts; the slice is given back when the process has exited),
makes the sandbox's cgroups (or, without cgroups, hands the worker its affinity and rlimit), and
asks a fork server for the process.

Confined (bubblewrap found and working), each function's sandboxes come from a fork server in
a box of that function's own (`faasd.sandbox.bubblewrap`), started with the first of them and
stopped `BOX_IDLE_S` after the last has ended; each worker gets a uid of its own. Unconfined,
one fork server on the host serves every function, as before.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from esg.model import Config
from faasd.errors import SandboxCrashed
from faasd.functions.spec import FunctionVersion
from faasd.sandbox import bubblewrap, channel, identity, protocol, sharedmem
from faasd.sandbox.cgroups import (
    ADDRESS_SPACE_HEADROOM_MB,
    Backend,
    Confinement,
    Limits,
    SandboxGroups,
    pick_cpus,
)
from faasd.sandbox.launcher import Launcher, LaunchError
from faasd.sandbox.process import SandboxProcess

logger = logging.getLogger("faasd.sandbox")


class GpuBinding(Protocol):
    """What a bound sandbox gets (faasd.gpu.service.Binding)."""

    @property
    def env(self) -> dict[str, str]: ...
    @property
    def cuda_options(self) -> dict[str, Any]: ...
    @property
    def label(self) -> str: ...
    @property
    def fake(self) -> bool: ...


class GpuBinder(Protocol):
    """The daemon's GPU slices (faasd.gpu.service.GpuService)."""

    def bind(self, owner: str, function: str, units: int, memory_mb: int = 0) -> GpuBinding:
        """A slice for sandbox `owner` (`memory_mb` of device memory; 0: the slice's own);
        GpuUnavailable (busy or never) if none can be given."""
        ...

    def started(self, owner: str, pid: int) -> None: ...

    def release(self, owner: str) -> None: ...


def worker_spec(
    version: FunctionVersion,
    config: Config,
    groups: SandboxGroups | None,
    cpus: tuple[int, ...],
    tmp_dir: Path,
    uid: int = 0,
    gpu: GpuBinding | None = None,
) -> protocol.WorkerSpec:
    settings = version.settings
    fallback = groups is None
    return protocol.WorkerSpec(
        name=version.name,
        version=version.version,
        directory=str(version.directory),
        model_path=str(version.model_path),
        handler_path=str(version.handler_path) if version.handler_path else None,
        vcpu=config.vcpu,
        vgpu=config.vgpu,
        env=dict(settings.env),
        cpus=cpus if fallback else (),
        address_space_bytes=(settings.memory_mb + ADDRESS_SPACE_HEADROOM_MB) * 2**20
        if fallback
        else 0,
        tmp_dir=str(tmp_dir),
        shared_cap_bytes=sharedmem.cap_for_memory(settings.memory_mb),
        shared_threshold_bytes=sharedmem.THRESHOLD_BYTES,
        uid=uid,
        max_pids=settings.max_pids,
        network=settings.network,
        tmp_mb=tmp_mb_for(settings.memory_mb),
        gpu_env=dict(gpu.env) if gpu is not None else {},
        cuda_options=dict(gpu.cuda_options) if gpu is not None else {},
        gpu_fake=gpu.fake if gpu is not None else False,
    )


def tmp_mb_for(memory_mb: int) -> int:
    """A sandbox's /tmp is a tmpfs charged to its memory: a quarter of it, at most 256 MiB."""
    return max(16, min(256, memory_mb // 4))


def box_for(version: FunctionVersion, config: Config) -> bubblewrap.Box:
    settings = version.settings
    return bubblewrap.Box(
        function_dir=str(version.directory),
        network=settings.network,
        gpu=config.vgpu > 0,
        inode=os.stat(version.directory).st_ino,
    )


#: How long a function's box (its fork server) outlives its last sandbox: a sandbox started
#: again soon after forks at once instead of paying the box's start (about 0.3 s here).
BOX_IDLE_S = 60.0


class Spawner:
    def __init__(
        self,
        state_dir: Path,
        cgroup_parent: str,
        confinement: str = "auto",
        namespaces: str = "auto",
        reap_leftovers: bool = False,
        gpu: GpuBinder | None = None,
        max_answer_bytes: int = channel.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        """`namespaces`: "on" (refuse to start where `bubblewrap.probe` fails), "auto" (use
        them where the host allows, else warn), "off". `max_answer_bytes`: the largest frame a
        sandbox may send (`SandboxProcess.start`)."""
        self.state_dir = state_dir
        self.max_answer_bytes = max_answer_bytes
        self.gpu = gpu
        self.cgroup_parent = cgroup_parent
        self._choice = confinement
        self._namespaces = namespaces
        self._reap_leftovers = reap_leftovers
        #: sandboxes confined by bubblewrap, each function in a box of its own
        self.boxed = False
        self.confinement = Confinement(Backend.NONE, {})
        self.launcher = Launcher()  # unconfined: one fork server for every function
        self._boxes: dict[bubblewrap.Box, Launcher] = {}
        self._box_users: Counter[bubblewrap.Box] = Counter()
        self._box_timers: dict[bubblewrap.Box, asyncio.TimerHandle] = {}
        self._box_stops: set[asyncio.Task[None]] = set()
        self._uid_slots: set[int] = set()
        #: this daemon's range of sandbox uids (`identity.daemon_range`), found at `start`
        self._uid_range = 0
        #: sandboxes per CPU (idle or not): where a new one is least in the way
        self._cpu_load: Counter[int] = Counter()
        #: batches running per CPU now (see `occupy`)
        self._busy: Counter[int] = Counter()
        self._allowed = tuple(sorted(os.sched_getaffinity(0)))
        self._ids = itertools.count(1)
        # Several pools may share a parent group in one process (the tests' daemons), and a
        # daemon may get a pid that a dead one had: the token keeps ids (and so the groups'
        # names) apart even when a group of theirs was left behind.
        self._token = f"{os.getpid()}-{os.urandom(2).hex()}"

    async def start(self) -> None:
        if self._namespaces != "off":
            why_not = bubblewrap.probe()
            if why_not is not None and self._namespaces == "on":
                raise LaunchError(
                    f"sandboxes cannot be confined in namespaces here: {why_not}; run faasd as "
                    "root, or set allow_unconfined: true to run them with cgroups only"
                )
            if why_not is not None:
                logger.warning("sandboxes run WITHOUT namespaces (network, file system and "
                               "user are the daemon's): %s", why_not)
            self.boxed = why_not is None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._uid_range = identity.daemon_range(self.state_dir)
        self.confinement = Confinement.detect(self.cgroup_parent, self._choice)
        if self._reap_leftovers:
            self._reap()
        if self.boxed:  # each function's box starts its own fork server
            return
        try:
            await self.launcher.start()
        except BaseException:
            self.confinement.close()
            raise

    def fork_server_pids(self) -> tuple[int, ...]:
        launchers = [self.launcher, *self._boxes.values()]
        return tuple(pid for launcher in launchers if (pid := launcher.pid) is not None)

    def _reap(self) -> None:
        """What a killed predecessor with this state directory left: its sandboxes' groups
        (and any process still in them) and their scratch directories."""
        groups = self.confinement.reap_leftovers()
        scratch = self.state_dir / "sandboxes"
        dirs = sorted(p.name for p in scratch.iterdir()) if scratch.is_dir() else []
        for name in dirs:
            shutil.rmtree(scratch / name, ignore_errors=True)
        if groups or dirs:
            logger.warning("removed what a stopped daemon left: %d sandbox cgroup(s), %d "
                           "sandbox director(y/ies)", len(groups), len(dirs))

    async def stop(self) -> None:
        for timer in self._box_timers.values():
            timer.cancel()
        self._box_timers.clear()
        boxes, self._boxes = list(self._boxes.values()), {}
        await asyncio.gather(*(box.stop() for box in boxes), *self._box_stops,
                             return_exceptions=True)
        await self.launcher.stop()
        self.confinement.close()

    def _take_box(self, box: bubblewrap.Box) -> Launcher:
        """The launcher of `box`'s fork server (started by its first spawn), counted in use."""
        timer = self._box_timers.pop(box, None)
        if timer is not None:
            timer.cancel()
        self._box_users[box] += 1
        if box not in self._boxes:
            self._boxes[box] = Launcher(tuple(bubblewrap.command(box)))
        return self._boxes[box]

    def _leave_box(self, box: bubblewrap.Box) -> None:
        self._box_users[box] -= 1
        if self._box_users[box] > 0:
            return
        del self._box_users[box]
        loop = asyncio.get_running_loop()
        self._box_timers[box] = loop.call_later(BOX_IDLE_S, self._close_box, box)

    def _close_box(self, box: bubblewrap.Box) -> None:
        self._box_timers.pop(box, None)
        launcher = self._boxes.pop(box, None)
        if launcher is None or self._box_users[box] > 0:
            return
        task = asyncio.get_running_loop().create_task(launcher.stop())
        self._box_stops.add(task)
        task.add_done_callback(self._box_stops.discard)

    def _take_uid(self) -> tuple[int, int]:
        """A uid for a confined worker and its slot (give the slot back with `_uid_slots`)."""
        free = next((n for n in range(identity.SLOTS) if n not in self._uid_slots), None)
        if free is None:
            raise OSError(f"more than {identity.SLOTS} confined sandboxes in one daemon")
        self._uid_slots.add(free)
        return identity.uid_for(self._uid_range, free), free

    async def spawn(
        self, version: FunctionVersion, config: Config
    ) -> tuple[SandboxProcess, tuple[int, ...]]:
        """A forked, confined worker for (version, config) that still has to load, and its
        CPUs (give them back with `release`). SandboxCrashed if the sandbox cannot be made;
        GpuUnavailable if it needs a GPU slice and none can be given (its `busy` says whether
        one may come free). Without a GpuBinder, a sandbox with vgpu > 0 is not bound."""
        sandbox_id = f"{version.name}-v{version.version}-{self._token}-{next(self._ids)}"
        try:
            box = box_for(version, config) if self.boxed else None
        except OSError as exc:  # its version directory is gone
            raise SandboxCrashed(f"could not start a sandbox for {version.name}: {exc}") from exc
        binding = None
        if config.vgpu > 0 and self.gpu is not None:  # before the first await, as the CPUs
            binding = self.gpu.bind(sandbox_id, version.name, config.vgpu,
                                    version.settings.gpu_memory_mb)
        cpus = pick_cpus(self._allowed, self._busy, config.vcpu, tiebreak=self._cpu_load)
        # Counted at once, before the first await: sandboxes started side by side must see
        # each other's CPUs, or they all land on the same least-loaded one.
        self._cpu_load.update(cpus)
        limits = Limits(vcpu=config.vcpu, cpus=cpus, memory_mb=version.settings.memory_mb,
                        max_pids=version.settings.max_pids)
        tmp_dir = self.state_dir / "sandboxes" / sandbox_id
        groups: SandboxGroups | None = None
        launcher = self._take_box(box) if box is not None else self.launcher
        uid, slot = (0, -1)
        try:
            if box is not None:
                uid, slot = self._take_uid()
            tmp_dir.mkdir(parents=True, exist_ok=True)
            groups = self.confinement.create(sandbox_id, limits)
            spec = worker_spec(version, config, groups, cpus, tmp_dir, uid, binding)
            process = await SandboxProcess.start(launcher, sandbox_id, spec, groups, tmp_dir,
                                                 self.max_answer_bytes)
        except BaseException as exc:
            if box is not None:
                self._uid_slots.discard(slot)
                self._leave_box(box)
            if binding is not None and self.gpu is not None:
                self.gpu.release(sandbox_id)
            self.release(cpus)
            if groups is not None:
                groups.remove()
            shutil.rmtree(tmp_dir, ignore_errors=True)
            if isinstance(exc, OSError | LaunchError):
                logger.error("could not start a sandbox for %s: %s", version.name, exc)
                raise SandboxCrashed(
                    f"could not start a sandbox for {version.name}: {exc}"
                ) from exc
            raise
        if binding is not None and self.gpu is not None:
            _hold_until_exit(self.gpu, process, binding)
        if box is not None:
            process.spawned.exited.add_done_callback(
                lambda _: self._left(box, slot))
        logger.info(
            "sandbox %s forked for %s v%d at %s on cpus %s%s",
            process.id,
            version.name,
            version.version,
            config,
            cpus,
            f" bound to {binding.label}" if binding is not None else "",
        )
        return process, cpus

    def release(self, cpus: tuple[int, ...]) -> None:
        self._cpu_load.subtract(cpus)

    def loaded(self, process: SandboxProcess) -> None:
        """A sandbox is ready: the holder of its GPU slice, if it has one, is now the process
        that runs the function (a confined one is known once it has confined itself)."""
        if self.gpu is not None:
            self.gpu.started(process.id, process.pid)

    def occupy(self, groups: SandboxGroups | None, cpus: tuple[int, ...]) -> tuple[int, ...]:
        """The CPUs a batch of the sandbox on `cpus` runs on; `vacate` them when it ends.

        A sandbox's cpuset is picked when it starts, but it runs a batch whenever it is
        dispatched: two warm sandboxes of one vCPU each may sit on the same core and be
        dispatched together, each at half speed beside an idle core, while the scheduler
        counts two vCPUs in use. So a batch whose cores are taken moves, before it runs, to
        the CPUs running the fewest batches (a cpuset write, about 0.05 ms): each running
        batch has cores of its own whenever the controller keeps its vCPUs within the host's.
        Without cgroups the sandbox stays where it is.
        """
        if groups is not None and any(self._busy[c] for c in cpus):
            moved = pick_cpus(self._allowed, self._busy, len(cpus), tiebreak=self._cpu_load)
            if sum(self._busy[c] for c in moved) < sum(self._busy[c] for c in cpus):
                try:
                    groups.set_cpus(moved)
                except OSError as exc:
                    logger.warning("could not move a sandbox to CPUs %s: %s", moved, exc)
                else:
                    self._cpu_load.subtract(cpus)
                    self._cpu_load.update(moved)
                    cpus = moved
        self._busy.update(cpus)
        return cpus

    def vacate(self, cpus: tuple[int, ...]) -> None:
        self._busy.subtract(cpus)

    def _left(self, box: bubblewrap.Box, slot: int) -> None:
        """A confined worker has exited (its uid swept by its fork server)."""
        self._uid_slots.discard(slot)
        self._leave_box(box)


def _hold_until_exit(gpu: GpuBinder, process: SandboxProcess, binding: GpuBinding) -> None:
    """The slice stays taken until the process has exited (not merely been asked to): a
    dying sandbox may still hold device memory."""
    process.device = binding.label
    gpu.started(process.id, process.pid)
    process.spawned.exited.add_done_callback(lambda _: gpu.release(process.id))
