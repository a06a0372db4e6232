"""A user id of its own for each confined worker, and the sweep of what it leaves.

A worker forked inside its function's box (`faasd.sandbox.bubblewrap`) is still root there,
with CAP_SETUID and CAP_SETGID only. Before it loads anything of the function it `become`s its
sandbox's uid: no supplementary groups, no capabilities (a change of uid from root clears
them), `no_new_privs`, and RLIMIT_NPROC, so a fork loop is bounded per sandbox. Uids are given
by the daemon (`uid_for`, from a range its state directory picks: `daemon_range`) and are
unique among the live sandboxes of every daemon on the host, containers included (but for
the odds that `daemon_range` gives), so one sandbox cannot signal, trace or read another, nor
the fork server, which stays root.

Then it `isolate`s itself: namespaces of its own, apart from its function's other sandboxes
that share the box — a user namespace (its uid mapped to itself), PID, mount, IPC, UTS and,
unless the function says `network: true`, network (a loopback of its own, so no abstract
socket or loopback port reaches a sibling) — with a `/tmp` of its own (a tmpfs of `tmp_mb`,
charged to its cgroup), no capabilities left in them (the creator of a user namespace gets
them all there) and no user namespace of its own to make (its namespace's
`max_user_namespaces` is 0, what bubblewrap's `--disable-userns` does).

A new PID namespace takes the caller's next child as its init, so the worker forks twice more:
the process the fork server forked stays outside as the sandbox's keeper, its child is the
namespace's init, which reaps orphans as an init must (both `_wait_as`), and the grandchild
goes on as the sandbox. The two waiters hold about 0.75 MB of private memory each. The
sandbox is not the init on purpose: an init ignores every signal it has no handler for, even
SIGKILL from itself, so a handler that kills itself would live on. Each of the two waiters
ends as the process below it ended (an exit code, or killed by the same signal) and takes it
along when it is killed itself (their parent-death signals), and the kernel kills every
process of a namespace whose init ends.

The sandbox's `/proc` still lists the box's processes: bubblewrap's `/proc` has read-only binds
over parts of it, so the kernel refuses a new proc mount in a user namespace ("not fully
visible"). Those processes run as other uids and are outside the sandbox's PID namespace, so
it can neither signal nor trace them.

When the worker ends, the fork server kills every process of its uid (`sweep`), so no child
outlives its sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import resource
import signal
import sys
from pathlib import Path
from typing import NoReturn

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
CAPABILITY_VERSION_3 = 0x20080522
#: Sandbox uids: UID_BASE + SLOTS * (the daemon's range) + a slot among its live sandboxes;
#: every uid stays below 2**31 and far above a real account's.
UID_BASE = 1_000_000
SLOTS = 256
#: How many daemons' ranges fit below 2**31 (8,384,701).
RANGES = (2**31 - UID_BASE) // SLOTS
#: The uid the daemon's start-up check (`probe`) confines itself as: below every sandbox's.
PROBE_UID = UID_BASE - 1


class IdentityError(OSError):
    """The worker could not give up root; the message names the step."""


def daemon_range(state_dir: Path) -> int:
    """The range of sandbox uids of the daemon whose state directory this is (it exists).

    Not the daemon's pid: daemons in PID namespaces of their own (containers) share pids, and
    so they shared uids, and with them each uid's RLIMIT_NPROC and `sweep`. One daemon runs
    per state directory (it holds a lock in it), and the directory's device and inode tell it
    apart from every other directory on the host, in any mount namespace (its path would not:
    two containers may both keep theirs at /var/lib/faasd). A hash of them picks one of
    `RANGES` ranges: two given daemons share one with odds of 1 in 8.4 million, and among n
    daemons running at once two do with odds of about n**2 / 16.8 million (10 daemons: 1 in
    170,000; 100: 1 in 1,700)."""
    stat = os.stat(state_dir)
    digest = hashlib.sha256(f"{stat.st_dev}:{stat.st_ino}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % RANGES


def uid_for(daemon_range: int, slot: int) -> int:
    """The uid of slot `slot` (0..SLOTS-1) of a daemon's range (`daemon_range`)."""
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot {slot} outside 0..{SLOTS - 1}")
    if not 0 <= daemon_range < RANGES:
        raise ValueError(f"uid range {daemon_range} outside 0..{RANGES - 1}")
    return UID_BASE + SLOTS * daemon_range + slot


def become(uid: int, max_pids: int, network: bool = False, tmp_mb: int = 64) -> None:
    """Run as `uid` in namespaces of its own from now on (the calling process: root,
    single-threaded, just forked); `network`: keep the box's network. Returns in the sandbox,
    pid 2 of its own PID namespace; the calling process stays behind as its keeper."""
    resource.setrlimit(resource.RLIMIT_NPROC, (max_pids, max_pids))
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(libc, "no_new_privs", PR_SET_NO_NEW_PRIVS, 1)
    isolate(libc, uid, network, tmp_mb)
    child = _fork("the init of its PID namespace")
    if child:
        _wait_as(libc, child, init=False)
    sandbox = _fork("the sandbox below its PID namespace's init")
    if sandbox:
        _wait_as(libc, sandbox, init=True)


def probe() -> int:
    """Confine the calling process as a worker confines itself (`become`), then end: 0 when
    it could, else 1 after saying why on stderr (one line). Run inside a box by
    `bubblewrap.probe` at the daemon's start, so that a host where a sandbox cannot make its
    namespaces (user namespaces turned off, a seccomp filter) is found then, not at the first
    deploy."""
    try:
        become(PROBE_UID, max_pids=8, tmp_mb=1)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.ENOSPC:
            hint = " (user namespaces are turned off here: user.max_user_namespaces is 0?)"
        print(f"a sandbox could not confine itself: {exc}{hint}", file=sys.stderr)
        return 1
    return 0  # the sandbox's end, below its init and keeper, which end as it does


def _fork(what: str) -> int:
    try:
        return os.fork()
    except OSError as exc:
        raise IdentityError(exc.errno, f"{what} (fork): {exc.strerror}") from None


def isolate(libc: ctypes.CDLL, uid: int, network: bool, tmp_mb: int) -> None:
    """Namespaces and a `/tmp` of its own for the calling process (`uid`, unprivileged,
    single-threaded), then no capabilities and no further user namespace (see the module
    docstring). Its PID namespace is its next child's."""
    # A change of uid made the process undumpable, which hands its /proc files to root: it
    # could not write its own uid map. Dumpable again, only its own uid may trace it.
    _prctl(libc, "dumpable", PR_SET_DUMPABLE, 1)
    flags = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    if not network:
        flags |= CLONE_NEWNET
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise IdentityError(err, f"namespaces of its own (unshare): {os.strerror(err)}")
    for path, text in (("/proc/self/setgroups", "deny"),
                       ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{uid} {uid} 1")):
        _write(path, text)
    _private_tmp(libc, tmp_mb)
    _write("/proc/sys/user/max_user_namespaces", "0")
    _drop_capabilities(libc)


def mounts_below(mountinfo: str, directory: str) -> list[str]:
    """The mount points strictly below `directory` that no other of them holds, from
    /proc/self/mountinfo (field 5, with its octal escapes undone)."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]))
    below = sorted({p for p in points if p.startswith(directory.rstrip("/") + "/")})
    return [p for p in below if not any(p.startswith(q + "/") for q in below)]


def _private_tmp(libc: ctypes.CDLL, tmp_mb: int) -> None:
    """A tmpfs of `tmp_mb` on `/tmp`, in the calling process's own mount namespace. What the
    box binds below `/tmp` (a function directory or a virtual environment there, as in tests)
    is bound again on top of it, from a handle opened before the tmpfs hid it; those binds
    stay read-only (the kernel locks their flags in a user namespace), and so do the
    directories made to hold them (each top one bound read-only onto itself): the sandbox
    writes anywhere in its `/tmp` but on the paths of the box's own."""
    with open("/proc/self/mountinfo") as file:
        kept = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY))
                for path in mounts_below(file.read(), "/tmp")]
    try:
        _mount(libc, b"tmpfs", "/tmp", b"tmpfs", MS_NOSUID | MS_NODEV,
               f"size={max(1, tmp_mb)}m,mode=1777".encode())
        for path, _ in kept:
            os.makedirs(path, mode=0o755, exist_ok=True)
        for top in sorted({"/tmp/" + path.split("/")[2] for path, _ in kept}):
            _mount(libc, top.encode(), top, None, MS_BIND, None)
            _mount(libc, b"none", top, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        for path, fd in kept:
            _mount(libc, f"/proc/self/fd/{fd}".encode(), path, None, MS_BIND | MS_REC, None)
    finally:
        for _, fd in kept:
            os.close(fd)


def _mount(libc: ctypes.CDLL, source: bytes, target: str, kind: bytes | None, flags: int,
           data: bytes | None) -> None:
    if libc.mount(source, target.encode(), kind, ctypes.c_ulong(flags), data) != 0:
        err = ctypes.get_errno()
        raise IdentityError(err, f"mounting {target}: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as file:
            file.write(text)
    except OSError as exc:
        raise IdentityError(exc.errno, f"{path}: {exc.strerror}") from None


def _wait_as(libc: ctypes.CDLL, child: int, init: bool) -> NoReturn:
    """The keeper (`init` False) or the init of the sandbox's PID namespace: holds nothing of
    the sandbox's (no channel, no shared memory), waits for `child` (the init reaps every
    other process that ends in its namespace too) and ends as it ended. An init cannot kill
    itself with a signal, so it exits with 128 + the signal, and the keeper, which can, turns
    that back into the signal. Killed itself, a waiter takes `child` along (its parent-death
    signal); neither forwards signals, which an init would ignore."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # a uid change cleared the keeper's
    # Not dumpable: the sandbox below runs as the same uid and sees this process in the box's
    # /proc; it must not write its memory (/proc/PID/mem) or trace it, and so run code here,
    # outside its own PID namespace.
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    while True:
        pid, status = os.waitpid(-1 if init else child, 0)
        if pid == child:
            break
    if os.WIFSIGNALED(status):
        killed_by = os.WTERMSIG(status)
    elif not init and 128 < os.WEXITSTATUS(status) < 128 + signal.NSIG:  # the init's report
        killed_by = os.WEXITSTATUS(status) - 128
    else:
        os._exit(os.WEXITSTATUS(status))
    if not init:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP keep theirs
            signal.signal(killed_by, signal.SIG_DFL)
        os.kill(os.getpid(), killed_by)
    os._exit(128 + killed_by)


def _drop_capabilities(libc: ctypes.CDLL) -> None:
    """None left: not in the bounding set (for good), not ambient, not effective or permitted."""
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:  # EINVAL past the last one
        cap += 1
    _prctl(libc, "ambient capabilities", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)

    class Header(ctypes.Structure):
        _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))

    class Data(ctypes.Structure):
        _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32))

    none = (Data * 2)()  # two 32-bit halves, all zero
    if libc.capset(ctypes.byref(Header(CAPABILITY_VERSION_3, 0)), none) != 0:
        err = ctypes.get_errno()
        raise IdentityError(err, f"dropping capabilities: {os.strerror(err)}")


def _prctl(libc: ctypes.CDLL, what: str, option: int, value: int) -> None:
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise IdentityError(err, f"{what}: {os.strerror(err)}")


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
