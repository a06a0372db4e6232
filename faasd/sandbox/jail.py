"""Namespaces, a root of its own and a user of its own for one forked worker.

The fork server design stays: a worker is forked from a process that has onnxruntime imported,
and confines itself before it loads anything of the function. bubblewrap cannot be used for
that (it confines a program it executes, and an exec would pay the imports the fork server
exists to save), so `enter` does what `bwrap --unshare-all --ro-bind ... --tmpfs /tmp
--uid N --cap-drop ALL --new-session` does, with the same kernel calls, in the forked child:

1. new mount, IPC and UTS namespaces, and a network namespace (only a loopback that is down:
   no network, no daemon port, no other local service) unless the function sets `network`;
2. a new root on a tmpfs: read-only binds of the system's `/usr`, `/lib*`, `/bin`, `/sbin`, a
   few files of `/etc` (no `shadow`), Python's standard library and site-packages, four
   `/dev` nodes, the CPU topology in `/sys`, the function's own version directory at its usual
   path, `/proc` with other users' processes hidden, and a private writable `/tmp` of
   `tmp_mb`. The daemon's state directory, other functions and the host's `/tmp` are not in it;
3. a user id of its own (`sandbox_uid(pid)`: ids are unique among live sandboxes, so one
   sandbox cannot signal, trace or read another, nor the daemon or the fork server, which run
   as root), no supplementary groups, no capabilities (a change of uid from root clears them),
   `no_new_privs`, and RLIMIT_NPROC: a fork loop is bounded per sandbox;
4. when the worker ends, the fork server kills every process of that uid (`sweep`), so no
   child outlives its sandbox.

PID namespaces are not used: a worker would have to fork once more to enter one, and the
fork server tracks the worker by pid; the per-sandbox uid and `hidepid` give the isolation
that matters (no signals, no /proc view of others). Names the kernel ABI; Linux only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 0x1, 0x2, 0x4, 0x20
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
PR_SET_NO_NEW_PRIVS = 38

#: Sandbox user ids are UID_BASE + the worker's pid (pid_max is at most 2**22).
UID_BASE = 1_000_000
#: The new root is mounted over this directory, in the worker's own mount namespace only.
STAGE = "/tmp"

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
             "/etc/ssl", "/etc/ca-certificates", "/etc/nsswitch.conf", "/etc/hosts",
             "/etc/mime.types", "/etc/alternatives")
DEV_NODES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
CPU_TOPOLOGY = "/sys/devices/system/cpu"


class JailError(OSError):
    """A step of `enter` failed; the message names the step."""


def sandbox_uid(pid: int) -> int:
    return UID_BASE + pid


@dataclass(frozen=True)
class JailSpec:
    function_dir: str
    network: bool = False
    tmp_mb: int = 64
    max_pids: int = 64
    #: bind the NVIDIA device nodes (a sandbox with a GPU slice)
    gpu: bool = False


def python_dirs() -> tuple[str, ...]:
    """The directories a handler's `import` may read: the standard library (and its
    extension modules), every site-packages on `sys.path`, and the faasd package's own
    directory (handlers use `faasd.handlers`). Never the current directory or a whole source
    checkout, which may hold the daemon's state."""
    found: set[str] = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            found.add(sysconfig.get_paths()[key])
    found.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages",
                                                    "lib-dynload")))
    found.add(str(Path(__file__).resolve().parents[1]))  # faasd itself (faasd.handlers)
    return tuple(sorted(p for p in found if os.path.isdir(p)))


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise JailError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _check(_libc.mount(None if source is None else source.encode(), target.encode(),
                       None if fstype is None else fstype.encode(), ctypes.c_ulong(flags),
                       None if data is None else data.encode()), f"mount {target}")


def _bind_ro(fd: int, target: str) -> None:
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _sources(spec: JailSpec) -> list[str]:
    gpu_nodes = [str(p) for p in Path("/dev").glob("nvidia*")] if spec.gpu else []
    wanted = [*SYSTEM_DIRS, *ETC_FILES, *DEV_NODES, *gpu_nodes, CPU_TOPOLOGY, *python_dirs(),
              spec.function_dir]
    return sorted({p for p in wanted if os.path.lexists(p)}, key=lambda p: (p.count("/"), p))


def _build_root(spec: JailSpec, uid: int) -> None:
    sources = _sources(spec)
    # Opened before the stage hides them (the function may live under /tmp, as in tests).
    fds = {p: os.open(p, os.O_PATH) for p in sources if not os.path.islink(p)}
    links = {p: os.readlink(p) for p in sources if os.path.islink(p)}
    _mount("faasd-root", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    # /tmp first: a function directory under /tmp (tests) is bound on top of it, not hidden
    Path(STAGE, "tmp").mkdir(mode=0o755)
    _mount("tmpfs", STAGE + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"mode=1777,size={max(1, spec.tmp_mb)}m")
    try:
        for path in sources:
            target = STAGE + path
            if os.path.lexists(target):  # already inside an earlier bind
                continue
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            if path in links:
                os.symlink(links[path], target)
                continue
            if os.path.isdir(f"/proc/self/fd/{fds[path]}"):
                os.mkdir(target, 0o755)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
            _bind_ro(fds[path], target)
    finally:
        for fd in fds.values():
            os.close(fd)
    Path(STAGE, "etc").mkdir(mode=0o755, exist_ok=True)
    Path(STAGE, "etc/passwd").write_text(
        f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{uid}:{uid}::/tmp:/usr/sbin/nologin\n")
    Path(STAGE, "etc/group").write_text(f"root:x:0:\nsandbox:x:{uid}:\n")
    Path(STAGE, "proc").mkdir(mode=0o755, exist_ok=True)
    for option in ("hidepid=invisible", "hidepid=2", None):
        with contextlib.suppress(JailError):
            _mount("proc", STAGE + "/proc", "proc", MS_NOSUID | MS_NODEV, option)
            break
    _mount(None, STAGE, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755")


def enter(spec: JailSpec) -> int:
    """Confine the calling process (root, single-threaded, just forked) as the module doc says;
    returns the uid it now runs as. JailError names the step that failed."""
    uid = sandbox_uid(os.getpid())
    flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | (0 if spec.network else CLONE_NEWNET)
    _check(_libc.unshare(flags), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _build_root(spec, uid)
    os.chroot(STAGE)
    os.chdir(spec.function_dir)
    resource.setrlimit(resource.RLIMIT_NPROC, (spec.max_pids, spec.max_pids))
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    return uid


def sweep(uid: int) -> None:
    """SIGKILL every process running as `uid` (a sandbox's leftovers), from a short-lived
    child of the caller (root) that takes that uid: kill(-1) as a user reaches exactly that
    user's processes. The kernel holds its task list while it signals, so a fork loop cannot
    add a process during the sweep."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setresuid(uid, uid, uid)
            for _ in range(2):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(-1, signal.SIGKILL)
        except BaseException:
            code = 1
        os._exit(code)
    os.waitpid(pid, 0)


def probe() -> str | None:
    """None when `enter` can work on this host (checked in a throwaway child), else why not."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC), "unshare")
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            _mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m")
            os.chroot(STAGE)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    if os.geteuid() != 0:
        return "faasd is not running as root (it needs CAP_SYS_ADMIN to make namespaces)"
    return "the kernel refused new mount/network namespaces (a container without CAP_SYS_ADMIN?)"
