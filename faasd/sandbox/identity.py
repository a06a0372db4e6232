"""A user id of its own for each confined worker, and the sweep of what it leaves.

A worker forked inside its function's box (`faasd.sandbox.bubblewrap`) is still root there,
with CAP_SETUID and CAP_SETGID only. Before it loads anything of the function it `become`s its
sandbox's uid: no supplementary groups, no capabilities (a change of uid from root clears
them), `no_new_privs`, and RLIMIT_NPROC, so a fork loop is bounded per sandbox. Uids are given
by the daemon (`uid_for`) and are unique among the live sandboxes of every daemon on the host,
so one sandbox cannot signal, trace or read another, nor the fork server, which stays root.

When the worker ends, the fork server kills every process of its uid (`sweep`), so no child
outlives its sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal

PR_SET_NO_NEW_PRIVS = 38
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


def become(uid: int, max_pids: int) -> None:
    """Run as `uid` from now on (the calling process: root, single-threaded, just forked)."""
    resource.setrlimit(resource.RLIMIT_NPROC, (max_pids, max_pids))
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise IdentityError(err, f"no_new_privs: {os.strerror(err)}")


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
