"""The file descriptors a sandbox holds: only those faasd hands it, nothing of the daemon's.

A process keeps, across `exec`, every descriptor its parent had open without close-on-exec,
and a forked child keeps all of its parent's, close-on-exec or not. So without this:

- the fork server would hold whatever the daemon had open without close-on-exec — the copies
  of its stdio that uvloop's `create_subprocess_exec` makes (it ignores `close_fds`), a pipe
  the daemon's own parent left it — and every worker it forks would inherit them: a handler
  could write forged lines into the daemon's log;
- every worker would inherit what the fork server itself opened, shared with its siblings.

`keep_only` runs twice: first thing in the fork server, on what crossed its `exec` (what its
own imports opened stays theirs), and first thing in each worker, on everything, before
anything of the function runs. onnxruntime's telemetry store, the one file its import keeps
open, is never opened (`faasd.sandbox.launcher` sets ORT_DISABLE_TELEMETRY): shared by every
worker of a fork server, it was a file each of them could write. It costs a cold start one
listing of `/proc/self/fd`; nothing per call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection

_FD_DIR = "/proc/self/fd"


def keep_only(keep: Collection[int], inherited_only: bool = False) -> list[int]:
    """Close every descriptor of the calling process except `keep`, or with `inherited_only`
    every inheritable one (those without close-on-exec: all that can have crossed an `exec`,
    as Python opens its own close-on-exec); the ones closed.

    Listed from /proc rather than closed by range: the open-file limit `faasd up` raises may
    be a million, and every descriptor is found whatever the limit was when it was opened.
    The caller is single-threaded (nothing can open one meanwhile)."""
    closed = []
    for name in os.listdir(_FD_DIR):  # the listing's own descriptor is closed by now
        fd = int(name)
        if fd in keep or (inherited_only and not _inheritable(fd)):
            continue
        with contextlib.suppress(OSError):  # the listing's own: already gone
            os.close(fd)
            closed.append(fd)
    return closed


def stdin_from_devnull() -> None:
    """Point descriptor 0 at /dev/null: a sandbox reads nothing of the daemon's stdin."""
    null = os.open(os.devnull, os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # the listing's own, closed by now
        return False
