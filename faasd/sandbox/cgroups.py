"""Confine sandboxes: cgroup v2 where writable, else v1, else CPU affinity and RLIMIT_AS.

Every sandbox gets its own group under `<the daemon's own group>/<parent>/<sandbox id>` in each
hierarchy (nesting under the daemon's own group is what systemd's `Delegate=yes` hands out), with
a CPU quota of `vcpu` cores, a cpuset of `vcpu` cores, a memory limit and, where the pids
controller is there, a limit on its processes and threads (a fork loop stops there). The
worker joins the groups before it loads anything, so every page it touches is charged.
Groups are removed when their sandbox stops; the parent when the pool closes.

Parsing `/proc/self/mountinfo` and `/proc/self/cgroup` is pure; the rest touches the filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

logger = logging.getLogger("faasd.sandbox")

CONTROLLERS = ("cpu", "cpuset", "memory")
#: Used where the host has it, not required: RLIMIT_NPROC of a sandbox's own uid bounds its
#: processes too.
OPTIONAL = ("pids",)
CFS_PERIOD_US = 100_000
#: Under RLIMIT_AS the limit counts address space, not memory: onnxruntime and numpy reserve far
#: more than they touch (thread stacks, arenas). This headroom is added to `memory_mb`.
ADDRESS_SPACE_HEADROOM_MB = 4096


class Backend(StrEnum):
    V2 = "v2"
    V1 = "v1"
    NONE = "none"


@dataclass(frozen=True)
class Limits:
    vcpu: int
    cpus: tuple[int, ...]
    memory_mb: int
    #: processes and threads (pids.max); 0: no limit
    max_pids: int = 0


def parse_mounts(mountinfo: str) -> dict[str, tuple[Path, str]]:
    """Controller (or "unified" for cgroup2) -> (mount point, root of the mount)."""
    mounts: dict[str, tuple[Path, str]] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, fstype = fields[3], Path(fields[4]), tail[0]
        if fstype == "cgroup2":
            mounts.setdefault("unified", (mount_point, root))
        elif fstype == "cgroup":
            for option in tail[2].split(","):
                if option in CONTROLLERS + OPTIONAL:
                    mounts.setdefault(option, (mount_point, root))
    return mounts


def parse_own_groups(proc_cgroup: str) -> dict[str, str]:
    """Controller (or "unified") -> this process's group path, from /proc/self/cgroup."""
    groups: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            groups["unified"] = path
        for controller in controllers.split(","):
            if controller in CONTROLLERS + OPTIONAL:
                groups[controller] = path
    return groups


def group_dir(mount: tuple[Path, str], own: str) -> Path:
    mount_point, root = mount
    relative = own[len(root) :] if root != "/" and own.startswith(root) else own
    return mount_point / relative.lstrip("/")


def pick_cpus(
    allowed: Sequence[int], load: Mapping[int, int], count: int,
    tiebreak: Mapping[int, int] | None = None,
) -> tuple[int, ...]:
    """The `count` least-loaded CPUs of `allowed`, sorted. Ties go to the CPU lowest in
    `tiebreak`, then to the lowest number."""
    second = tiebreak or {}
    ranked = sorted(allowed, key=lambda cpu: (load.get(cpu, 0), second.get(cpu, 0), cpu))
    return tuple(sorted(ranked[: max(1, min(count, len(ranked)))]))


def _write(path: Path, value: str) -> None:
    with open(path, "w") as file:  # cgroup files want one write() per value, no buffering games
        file.write(value)


@dataclass(frozen=True)
class SandboxGroups:
    """One sandbox's groups: the files its worker joins, and how to tell an OOM kill."""

    backend: Backend
    dirs: tuple[Path, ...]
    memory_dir: Path
    cpuset_dir: Path

    def set_cpus(self, cpus: Sequence[int]) -> None:
        """Move the sandbox to other CPUs (the kernel moves its threads); OSError if refused."""
        _write(self.cpuset_dir / "cpuset.cpus", ",".join(str(c) for c in cpus))

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(str(d / "cgroup.procs") for d in self.dirs)

    def oom_killed(self) -> bool:
        name = "memory.events" if self.backend is Backend.V2 else "memory.oom_control"
        try:
            text = (self.memory_dir / name).read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value) > 0
        return False

    def remove(self) -> bool:
        """Remove the groups (their processes must have exited); False if one is still busy."""
        removed = True
        for directory in self.dirs:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                removed = False
                logger.warning("could not remove cgroup %s: %s", directory, exc)
        return removed


class Confinement:
    """Creates sandbox groups with the best backend this host allows (see module docstring)."""

    def __init__(
        self,
        backend: Backend,
        parents: Mapping[str, Path],
        recreate: Callable[[], dict[str, Path] | None] | None = None,
    ) -> None:
        self.backend = backend
        self._parents = dict(parents)
        self._recreate = recreate

    @classmethod
    def detect(cls, parent: str, prefer: str = "auto") -> Confinement:
        mounts = parse_mounts(Path("/proc/self/mountinfo").read_text())
        own = parse_own_groups(Path("/proc/self/cgroup").read_text())
        attempts = {Backend.V2: cls._setup_v2, Backend.V1: cls._setup_v1}
        for backend, setup in attempts.items():
            if prefer not in ("auto", backend.value):
                continue
            try:
                parents = setup(parent, mounts, own)
            except OSError as exc:
                logger.debug("cgroup %s not usable: %s", backend.value, exc)
                continue
            if parents is not None:
                logger.info("sandboxes confined by cgroup %s under %s", backend.value, parents)
                return cls(backend, parents, functools.partial(setup, parent, mounts, own))
        logger.warning(
            "no writable cgroup (v2 or v1 with cpu, cpuset, memory): sandboxes get CPU affinity "
            "and an address-space rlimit only; run as root or with systemd Delegate=yes"
        )
        return cls(Backend.NONE, {})

    @staticmethod
    def _setup_v1(
        parent: str, mounts: Mapping[str, tuple[Path, str]], own: Mapping[str, str]
    ) -> dict[str, Path] | None:
        if any(c not in mounts or c not in own for c in CONTROLLERS):
            return None
        present = [*CONTROLLERS, *(c for c in OPTIONAL if c in mounts and c in own)]
        parents = {c: group_dir(mounts[c], own[c]) / parent for c in present}
        for directory in parents.values():
            directory.mkdir(exist_ok=True)
        cpuset = parents["cpuset"]
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not (cpuset / name).read_text().strip():
                _write(cpuset / name, (cpuset.parent / name).read_text().strip())
        return parents

    @staticmethod
    def _setup_v2(
        parent: str, mounts: Mapping[str, tuple[Path, str]], own: Mapping[str, str]
    ) -> dict[str, Path] | None:
        if "unified" not in mounts or "unified" not in own:
            return None
        home = group_dir(mounts["unified"], own["unified"])
        available = set((home / "cgroup.controllers").read_text().split())
        if not set(CONTROLLERS) <= available:
            return None
        enable = " ".join(f"+{c}" for c in (*CONTROLLERS, *available.intersection(OPTIONAL)))
        base = home / parent
        base.mkdir(exist_ok=True)
        try:
            _write(home / "cgroup.subtree_control", enable)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            # "No internal processes": move our group's processes into a leaf, as systemd
            # documents for delegated subtrees, then enable the controllers below us.
            leaf = home / f"{parent}-daemon"
            leaf.mkdir(exist_ok=True)
            for pid in (home / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):  # a process may exit meanwhile
                    _write(leaf / "cgroup.procs", pid)
            _write(home / "cgroup.subtree_control", enable)
        _write(base / "cgroup.subtree_control", enable)
        return {"unified": base}

    def create(self, sandbox_id: str, limits: Limits) -> SandboxGroups | None:
        """Groups for one sandbox with its limits set, or None under the rlimit fallback.

        OSError if the groups cannot be made. A parent group removed meanwhile (another pool
        with the same parent name closed) is made again once.
        """
        if self.backend is Backend.NONE:
            return None
        try:
            return self._create(sandbox_id, limits)
        except FileNotFoundError:
            if self._recreate is None:
                raise
            self._parents = self._recreate() or self._parents
            return self._create(sandbox_id, limits)

    def _create(self, sandbox_id: str, limits: Limits) -> SandboxGroups:
        cpus = ",".join(str(c) for c in limits.cpus)
        quota_us = limits.vcpu * CFS_PERIOD_US
        memory_bytes = str(limits.memory_mb * 2**20)
        if self.backend is Backend.V2:
            group = self._parents["unified"] / sandbox_id
            group.mkdir()
            try:
                _write(group / "cpu.max", f"{quota_us} {CFS_PERIOD_US}")
                _write(group / "cpuset.cpus", cpus)
                _write(group / "memory.max", memory_bytes)
                with contextlib.suppress(OSError):  # absent without swap accounting
                    _write(group / "memory.swap.max", "0")
                if limits.max_pids and (group / "pids.max").exists():
                    _write(group / "pids.max", str(limits.max_pids))
            except OSError:
                group.rmdir()
                raise
            return SandboxGroups(Backend.V2, (group,), group, group)
        dirs = {c: parent / sandbox_id for c, parent in self._parents.items()}
        groups = SandboxGroups(Backend.V1, tuple(dirs.values()), dirs["memory"], dirs["cpuset"])
        try:
            self._fill_v1(dirs, limits)
        except OSError:
            groups.remove()
            raise
        return groups

    def _fill_v1(self, dirs: Mapping[str, Path], limits: Limits) -> None:
        cpus = ",".join(str(c) for c in limits.cpus)
        memory_bytes = str(limits.memory_mb * 2**20)
        for directory in dirs.values():
            directory.mkdir()
        _write(dirs["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        _write(dirs["cpu"] / "cpu.cfs_quota_us", str(limits.vcpu * CFS_PERIOD_US))
        _write(dirs["cpuset"] / "cpuset.cpus", cpus)
        _write(
            dirs["cpuset"] / "cpuset.mems", (self._parents["cpuset"] / "cpuset.mems").read_text()
        )
        _write(dirs["memory"] / "memory.limit_in_bytes", memory_bytes)
        with contextlib.suppress(OSError):  # absent or refused without swap accounting
            _write(dirs["memory"] / "memory.memsw.limit_in_bytes", memory_bytes)
        if limits.max_pids and "pids" in dirs:
            _write(dirs["pids"] / "pids.max", str(limits.max_pids))

    def reap_leftovers(self, settle_s: float = 2.0) -> list[str]:
        """Kill the processes of every sandbox group under this pool's parents and remove the
        groups: what a daemon killed with SIGKILL left behind. Only for a parent no live pool
        uses (the daemon's own, per state directory, held under its lock). The names reaped."""
        import signal
        import time

        reaped = []
        for parent in self._parents.values():
            for group in sorted(p for p in parent.iterdir() if p.is_dir()):
                deadline = time.monotonic() + settle_s
                while True:
                    with contextlib.suppress(OSError):
                        for pid in (group / "cgroup.procs").read_text().split():
                            with contextlib.suppress(ProcessLookupError, ValueError):
                                os.kill(int(pid), signal.SIGKILL)
                    try:
                        group.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            logger.warning("could not remove the leftover cgroup %s", group)
                            break
                        time.sleep(0.02)
                reaped.append(group.name)
        return sorted(set(reaped))

    def close(self) -> None:
        """Remove the parent groups if no sandbox group is left in them."""
        for directory in self._parents.values():
            with contextlib.suppress(OSError):
                directory.rmdir()


def join(procs_fds: Sequence[int]) -> None:
    """Move the calling process into the groups whose `cgroup.procs` files these are (opened
    for writing by the daemon; run by the worker, first thing, and closes them). Writing 0
    means "the writer": a worker in a PID namespace does not know its pid outside it."""
    for fd in procs_fds:
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def open_procs(groups: SandboxGroups | None) -> list[int]:
    """The groups' `cgroup.procs` files opened for writing, to hand to a worker (`join`)."""
    fds: list[int] = []
    try:
        for procs in groups.procs_files if groups is not None else ():
            fds.append(os.open(procs, os.O_WRONLY | os.O_CLOEXEC))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds
