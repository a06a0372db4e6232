"""A sandbox holds only the descriptors faasd hands it: `keep_only` in a real child, then a
real `faasd up` (uvloop, its stdout and stderr in a log file, a pipe its parent left it open)
whose sandbox lists its own descriptors."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from faasd.sandbox.descriptors import keep_only
from tests.faasd.builders import make_function
from tests.faasd.daemon_process import start_daemon


def _in_child(work: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """What `work(report_fd)` returns, run in a forked child (it must keep `report_fd`)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, json.dumps(work(write)).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        data = os.read(read, 65536)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data)
    return result


def _open_fds() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc/self/fd"))


def test_keep_only_closes_every_other_descriptor_inherited_or_not() -> None:
    def work(report: int) -> dict[str, Any]:
        inherited, own = os.pipe()
        os.set_inheritable(inherited, True)  # `own` stays close-on-exec
        closed = keep_only({0, 1, 2, report})
        return {"closed": closed, "left": _open_fds(), "report": report,
                "made": [inherited, own]}

    found = _in_child(work)
    assert set(found["made"]) <= set(found["closed"])
    # the listing's own descriptor shows in `left`: it is open while /proc/self/fd is read
    assert len(set(found["left"]) - {0, 1, 2, found["report"]}) == 1


def test_keep_only_inherited_leaves_what_the_process_opened_itself() -> None:
    def work(report: int) -> dict[str, Any]:
        inherited, own = os.pipe()
        os.set_inheritable(inherited, True)
        return {"closed": keep_only({0, 1, 2, report}, inherited_only=True),
                "made": [inherited, own]}

    found = _in_child(work)
    inherited, own = found["made"]
    assert inherited in found["closed"] and own not in found["closed"]


FDS = '''
import os

import numpy as np

OUT = {}


def preprocess(body, content_type):
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own
    OUT["fds"] = fds
    return {"x": np.zeros((1, 4), dtype=np.float32)}


def postprocess(outputs):
    return OUT
'''


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(_parent(int(entry.name)), []).append(int(entry.name))
            except OSError:
                continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found[1:]


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _is_fork_server(pid: int) -> bool:
    """Its command line is a fork server's (so are those of the workers it forked)."""
    return b"faasd.sandbox.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()


def _fds_of(pid: int) -> dict[int, str]:
    fds = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while listed
            fds[int(entry.name)] = os.readlink(entry)
    return fds


@pytest.mark.slow
def test_a_sandbox_sees_nothing_the_daemon_opened(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "fds", "", FDS)
    stray_r, stray_w = os.pipe()  # what a daemon's parent may leave it: inherited, writable
    stray = f"pipe:[{os.fstat(stray_w).st_ino}]"
    os.set_inheritable(stray_w, True)
    try:
        daemon = start_daemon(tmp_path, functions, pass_fds=(stray_w,))
    finally:
        os.close(stray_w)
    try:
        request = urllib.request.Request(f"{daemon.url}/function/fds", data=b"x",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            seen = {int(fd): target for fd, target in json.loads(resp.read())["fds"].items()}
        fork_servers = [pid for pid in _descendants(daemon.process.pid)
                        if _is_fork_server(pid) and not _is_fork_server(_parent(pid))]
        fork_server_fds = [_fds_of(pid) for pid in fork_servers]
    finally:
        daemon.stop()
        os.close(stray_r)
    log = str(daemon.log_path)
    assert not any(log in target or target == stray for target in seen.values()), seen
    # stdin /dev/null, stdout and stderr its relay pipe, its channel, its shared memory
    assert seen[0] == "/dev/null" and seen[1] == seen[2] and seen[1].startswith("pipe:[")
    rest = sorted(target for fd, target in seen.items() if fd > 2)
    assert len(rest) == 3 and rest[2].startswith("socket:["), seen
    assert rest[0].startswith("/memfd:faasd-fds-") and rest[0].endswith("-request (deleted)")
    assert rest[1].startswith("/memfd:faasd-fds-") and rest[1].endswith("-response (deleted)")
    # the fork server: stdin /dev/null, and the daemon's log only as its stdout and stderr
    assert fork_servers, "no fork server found below the daemon"
    for fds in fork_server_fds:
        assert fds[0] == "/dev/null"
        assert sorted(fd for fd, target in fds.items() if log in target) == [1, 2], fds
        assert stray not in fds.values(), fds
