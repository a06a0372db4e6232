"""What a daemon claims before it creates anything, and what it cleans up after a kill -9:
its port first, its state directory's lock, its own cgroup parent, a dead predecessor's
leftovers (sandbox groups and directories, upload scratch)."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from faasd.claim import cgroup_parent_for
from faasd.config import ConfigError, DaemonConfig
from faasd.daemon import Daemon
from faasd.sandbox.cgroups import group_dir, parse_mounts, parse_own_groups
from tests.faasd.builders import make_function
from tests.faasd.daemon_process import start_daemon

pytestmark = pytest.mark.slow


def _parents(pid: int, parent: str) -> list[Path]:
    """The directories the daemon `pid` makes its sandboxes' groups in, on this host."""
    mounts = parse_mounts(Path("/proc/self/mountinfo").read_text())
    own = parse_own_groups(Path(f"/proc/{pid}/cgroup").read_text())
    return [group_dir(mounts[c], own[c]) / parent for c in ("unified", "memory")
            if c in mounts and c in own]


async def test_a_taken_port_fails_before_anything_is_created(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    state = tmp_path / "state"
    config = DaemonConfig(host="127.0.0.1", port=taken.getsockname()[1], state_dir=state)
    try:
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1"):
            async with Daemon(config):
                pass
    finally:
        taken.close()
    assert not state.exists()  # no state, so no cgroup and no fork server either


async def test_one_daemon_per_state_directory(tmp_path: Path) -> None:
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state")
    async with Daemon(config):
        with pytest.raises(ConfigError, match="another faasd daemon uses the state directory"):
            async with Daemon(config):
                pass
    async with Daemon(config):  # released when the first stopped
        pass


def test_two_daemons_have_their_own_cgroup_parents(tmp_path: Path) -> None:
    assert cgroup_parent_for("faasd", tmp_path / "a") != cgroup_parent_for("faasd", tmp_path / "b")
    assert cgroup_parent_for("faasd", tmp_path / "a") == cgroup_parent_for("faasd", tmp_path / "a")


def test_a_killed_daemons_leftovers_are_removed_at_the_next_start(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "linear", "scale: {keep_alive_s: 600}\n")
    first = start_daemon(tmp_path, functions)
    state = (tmp_path / "state").resolve()
    parents = _parents(first.process.pid, cgroup_parent_for("faasd", state))
    request = urllib.request.Request(f"{first.url}/function/linear",
                                     data=b'{"x": [[1, 2, 3, 4]]}', method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200
    (state / "uploads" / "upload-dead").mkdir(parents=True)
    (state / "uploads" / "upload-dead" / "model.onnx").write_bytes(b"half")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    time.sleep(0.5)  # the fork server sees the daemon gone and ends its workers
    left_groups = [g for p in parents if p.is_dir() for g in p.iterdir() if g.is_dir()]
    left_dirs = list((state / "sandboxes").iterdir())
    assert left_dirs, "the kill left no sandbox directory: nothing to test"
    if parents:
        assert left_groups, "the kill left no cgroup: nothing to test"

    (tmp_path / "port").unlink()
    second = start_daemon(tmp_path, functions)
    try:
        for group in left_groups:
            assert not group.exists(), group
        assert not any(d.exists() for d in left_dirs)
        assert list((state / "uploads").iterdir()) == []
        assert "removed what a stopped daemon left" in second.log()
    finally:
        assert second.stop() == 0, second.log()
    for parent in parents:  # a clean stop leaves nothing either
        assert not parent.exists() or not any(p.is_dir() for p in parent.iterdir())
