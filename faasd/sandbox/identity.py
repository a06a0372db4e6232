"""A user id of its own for each confined worker, and the sweep of what it leaves.

A worker forked inside its function's box (`faasd.sandbox.bubblewrap`) is still root there,
with CAP_SETUID and CAP_SETGID only. Before it loads anything of the function it `become`s its
sandbox's uid: no supplementary groups, no capabilities (a change of uid from root clears
them), `no_new_privs`, and RLIMIT_NPROC, so a fork loop is bounded per sandbox. Uids are given
by the daemon (`uid_for`) and are unique among the live sandboxes of every daemon on the host,
so one sandbox cannot signal, trace or read another, nor the fork server, which stays root.

Then it `isolate`s itself: namespaces of its own, apart from its function's other sandboxes
that share the box — a user namespace (its uid mapped to itself), mount, IPC, UTS and, unless
the function says `network: true`, network (a loopback of its own, so no abstract socket or
loopback port reaches a sibling) — with no capabilities left in them (the creator of a user
namespace gets them all there) and no user namespace of its own to make (its namespace's
`max_user_namespaces` is 0, what bubblewrap's `--disable-userns` does). Only the PID
namespace stays the box's: a new one would need a process of its own as its init.

When the worker ends, the fork server kills every process of its uid (`sweep`), so no child
outlives its sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CAPABILITY_VERSION_3 = 0x20080522
#: Sandbox uids: UID_BASE + SLOTS * (the daemon's pid) + a slot among its live sandboxes. A
#: pid is at most 2**22, so every uid stays below 2**31 and never meets a real account's.
UID_BASE = 1_000_000
SLOTS = 256


class IdentityError(OSError):
    """The worker could not give up root; the message names the step."""


def uid_for(daemon_pid: int, slot: int) -> int:
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot {slot} outside 0..{SLOTS - 1}")
    return UID_BASE + SLOTS * daemon_pid + slot


def become(uid: int, max_pids: int, network: bool = False) -> None:
    """Run as `uid` in namespaces of its own from now on (the calling process: root,
    single-threaded, just forked); `network`: keep the box's network."""
    resource.setrlimit(resource.RLIMIT_NPROC, (max_pids, max_pids))
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(libc, "no_new_privs", PR_SET_NO_NEW_PRIVS, 1)
    isolate(libc, uid, network)


def isolate(libc: ctypes.CDLL, uid: int, network: bool) -> None:
    """Namespaces of its own for the calling process (`uid`, unprivileged, single-threaded),
    then no capabilities and no further user namespace (see the module docstring)."""
    # A change of uid made the process undumpable, which hands its /proc files to root: it
    # could not write its own uid map. Dumpable again, only its own uid may trace it.
    _prctl(libc, "dumpable", PR_SET_DUMPABLE, 1)
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    if not network:
        flags |= CLONE_NEWNET
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise IdentityError(err, f"namespaces of its own (unshare): {os.strerror(err)}")
    for path, text in (("/proc/self/setgroups", "deny"),
                       ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{uid} {uid} 1"),
                       ("/proc/sys/user/max_user_namespaces", "0")):
        try:
            with open(path, "w") as file:
                file.write(text)
        except OSError as exc:
            raise IdentityError(exc.errno, f"{path}: {exc.strerror}") from None
    _drop_capabilities(libc)


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
