"""A hostile handler through the real daemon: every escape the review found now fails, and
the daemon serves on. The handler reports what each attempt did instead of crashing, so a
test says which escape worked if one does.

With namespaces off (`allow_unconfined` on a host without them) these attempts succeed: the
test `test_without_namespaces_the_escapes_work` shows it, so the others can fail.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from faasd.daemon import Daemon
from faasd.sandbox import bubblewrap, identity
from faasd.sandbox.spawner import tmp_mb_for
from tests.faasd.builders import make_function, started_daemon

pytestmark = pytest.mark.slow

HOSTILE = '''
import json
import os
import signal
import socket
import time

import numpy as np

OUT = {}


def attempt(action, arg):
    if action == "read":
        with open(arg, "rb") as f:
            return f"read {len(f.read())} bytes"
    if action == "write":
        with open(arg, "w") as f:
            f.write("pwned")
        return "wrote"
    if action == "listdir":
        return sorted(os.listdir(arg))
    if action == "connect":
        host, port = arg.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=2).close()
        return "connected"
    if action == "kill":
        os.kill(int(arg), signal.SIGKILL)
        return "killed"
    if action == "env":
        return dict(os.environ)
    if action == "whoami":
        return [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()]
    if action == "namespaces":  # after `arg` seconds, so two calls overlap in two sandboxes
        with open(f"/tmp/made-by-{os.getuid()}", "w") as f:
            f.write("mine")
        time.sleep(float(arg))
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        lines = open("/proc/self/status").read().splitlines()
        status = dict(line.split(":\t", 1) for line in lines)
        kinds = ("user", "net", "ipc", "mnt", "uts", "pid")
        ns = {n: os.readlink(f"/proc/self/ns/{n}") for n in kinds}
        made = libc.unshare(0x10000000)  # CLONE_NEWUSER, after reading its own
        devices = open("/proc/self/net/dev").read().splitlines()[2:]
        return {
            "ns": ns,
            "caps": [status["CapEff"], status["CapPrm"], status["CapBnd"]],
            "userns": "made" if made == 0 else os.strerror(ctypes.get_errno()),
            "links": [line.split(":")[0].strip() for line in devices],
            "pid": os.getpid(),
            "tmp": sorted(os.listdir("/tmp")),
            "uid": os.getuid(),
        }
    if action == "fill":  # /tmp, a MiB at a time, until it is full
        written = 0
        try:
            with open("/tmp/fill", "wb") as f:
                while written < int(arg):
                    f.write(b"x" * 2**20)
                    f.flush()
                    written += 1
        except OSError as exc:
            return {"mib": written, "error": exc.strerror}
        finally:
            os.unlink("/tmp/fill")
        return {"mib": written}
    if action == "poke":  # open for writing the memory of its uid's other processes
        found = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                status = dict(line.split(":\t", 1) for line in
                              open(f"/proc/{pid}/status").read().splitlines())
            except (OSError, ValueError):
                continue
            nspid = status["NSpid"].split()
            if int(status["Uid"].split()[0]) != os.getuid() or nspid[-1] == str(os.getpid()):
                continue  # another's, or itself
            try:
                with open(f"/proc/{pid}/mem", "r+b"):
                    found[pid] = "opened"
            except OSError as exc:
                found[pid] = exc.strerror
        return found
    if action == "forkbomb":
        made = 0
        for _ in range(int(arg)):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                os.setsid()  # try to get away from the sandbox too
                time.sleep(3600)
                os._exit(0)
            made += 1
        return made
    raise ValueError(action)


def preprocess(body, content_type):
    action, _, arg = body.decode().partition(" ")
    try:
        OUT["result"] = {"ok": attempt(action, arg)}
    except Exception as exc:
        OUT["result"] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"x": np.zeros((1, 4), dtype=np.float32)}


def postprocess(outputs):
    return OUT["result"]
'''


@pytest.fixture
def functions_dir(tmp_path: Path) -> Path:
    root = tmp_path / "functions"
    make_function(root, "hostile", "resources: {memory_mb: 512}\n", HOSTILE)
    make_function(root, "linear")
    return root


@pytest.fixture
async def daemon(tmp_path: Path, functions_dir: Path) -> AsyncIterator[Daemon]:
    running = await started_daemon(tmp_path, functions_dir)
    yield running
    await running.stop()


async def _try(daemon: Daemon, what: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as s, s.post(
        f"{daemon.url}/function/hostile", data=what.encode(),
        headers={"Content-Type": "text/plain"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        doc: dict[str, object] = json.loads(await resp.text())
        return doc


async def _serves(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as s, s.post(
        f"{daemon.url}/function/linear", json={"x": [[1, 2, 3, 4]]}
    ) as resp:
        assert resp.status == 200


def _escapes(daemon: Daemon, tmp_path: Path) -> list[str]:
    state = daemon.config.state_dir.resolve()
    linear_current = next((state / "functions" / "linear").glob("current*"), state)
    return [
        "read /etc/shadow",
        "write /etc/faasd-pwned",
        f"write {state}/pwned",
        f"write {linear_current}",
        f"read {tmp_path / 'functions' / 'linear' / 'model.onnx'}",
        f"connect 127.0.0.1:{daemon.port}",
        "connect 1.1.1.1:53",
        f"kill {os.getpid()}",
    ]


@pytest.mark.skipif(bubblewrap.probe() is not None, reason="this host cannot make namespaces")
async def test_every_escape_fails_and_the_daemon_serves_on(daemon: Daemon,
                                                           tmp_path: Path) -> None:
    for what in _escapes(daemon, tmp_path):
        doc = await _try(daemon, what)
        assert "error" in doc, f"{what!r} worked: {doc}"
    await _serves(daemon)
    # pid 1 of the sandbox's PID namespace is its own init, which ignores the signal; the box's
    # fork server and init are not in that namespace at all
    cold_starts = daemon.services.pool_stats()["cold_starts"]
    assert await _try(daemon, "kill 1") == {"ok": "killed"}
    assert "ok" in await _try(daemon, "whoami")
    assert daemon.services.pool_stats()["cold_starts"] == cold_starts  # the same sandbox
    assert not Path("/etc/faasd-pwned").exists()
    # of the state directory, only the path to its own version directory is there
    state = daemon.config.state_dir.resolve()
    assert (await _try(daemon, f"listdir {state}"))["ok"] == ["functions"]
    assert (await _try(daemon, f"listdir {state}/functions"))["ok"] == ["hostile"]
    own = (await _try(daemon, f"listdir {state}/functions/hostile"))["ok"]
    assert isinstance(own, list) and len(own) == 1 and own[0].isdigit()
    assert await _try(daemon, "write /tmp/scratch") == {"ok": "wrote"}  # private /tmp works
    uid, euid, gid, groups = (await _try(daemon, "whoami"))["ok"]  # type: ignore[misc]
    assert uid == euid == gid and uid >= identity.UID_BASE and groups == []
    # its keeper and its namespace's init run as its uid, and their memory is not its to write
    poked = (await _try(daemon, "poke"))["ok"]
    assert isinstance(poked, dict) and len(poked) == 2, poked
    assert "opened" not in poked.values(), poked


async def test_the_environment_is_only_what_the_function_names(
        tmp_path: Path, functions_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAASD_TEST_SECRET", "hunter2")  # the daemon's: never a sandbox's
    (functions_dir / "hostile" / "faasd.yaml").write_text("env: {GREETING: hello}\n")
    daemon = await started_daemon(tmp_path, functions_dir)
    try:
        env = (await _try(daemon, "env"))["ok"]
    finally:
        await daemon.stop()
    assert isinstance(env, dict)
    assert set(env) == {"PATH", "HOME", "TMPDIR", "LANG", "GREETING"}, env
    assert env["GREETING"] == "hello"


@pytest.mark.skipif(bubblewrap.probe() is not None, reason="this host cannot make namespaces")
async def test_a_sandboxs_tmp_is_bounded(daemon: Daemon) -> None:
    """A quarter of the function's memory_mb (512 here): 128 MiB, then ENOSPC."""
    wanted = tmp_mb_for(512)
    filled = (await _try(daemon, f"fill {2 * wanted}"))["ok"]
    assert filled == {"mib": wanted, "error": "No space left on device"}, filled
    await _serves(daemon)


def _uid_processes(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            except FileNotFoundError:
                pass
    return found


@pytest.mark.skipif(bubblewrap.probe() is not None, reason="this host cannot make namespaces")
async def test_a_fork_loop_is_bounded_and_dies_with_its_sandbox(daemon: Daemon) -> None:
    uid = (await _try(daemon, "whoami"))["ok"][0]  # type: ignore[index]
    made = (await _try(daemon, "forkbomb 500"))["ok"]
    assert isinstance(made, int) and 0 < made < 64  # RLIMIT_NPROC of the sandbox's own uid
    assert len(_uid_processes(uid)) > made  # they run, detached from the worker
    await _serves(daemon)
    async with aiohttp.ClientSession() as s, s.delete(
        f"{daemon.url}/system/functions", json={"functionName": "hostile"}
    ) as resp:
        assert resp.status in (200, 202, 204), await resp.text()
    for _ in range(100):
        if not _uid_processes(uid):
            break
        await __import__("asyncio").sleep(0.05)
    assert _uid_processes(uid) == []
    await _serves(daemon)


async def test_without_namespaces_the_escapes_work(tmp_path: Path, functions_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: on a host without namespaces, with allow_unconfined, the same handler
    reads what it should not (so the tests above can fail), and the daemon says so."""
    monkeypatch.setattr(bubblewrap, "probe", lambda: "no namespaces on this pretend host")
    with pytest.raises(Exception, match="cannot be confined in namespaces here"):
        await started_daemon(tmp_path, functions_dir)
    daemon = await started_daemon(tmp_path, functions_dir, allow_unconfined=True)
    try:
        state = daemon.config.state_dir.resolve()
        assert "ok" in await _try(daemon, "read /etc/shadow")
        assert "ok" in await _try(daemon, f"listdir {state}")
        assert "ok" in await _try(daemon, f"connect 127.0.0.1:{daemon.port}")
    finally:
        await daemon.stop()


@pytest.mark.skipif(bubblewrap.probe() is not None, reason="this host cannot make namespaces")
async def test_each_sandbox_has_namespaces_of_its_own_and_no_capabilities(
        tmp_path: Path, functions_dir: Path) -> None:
    """Two sandboxes of one function share its box, but not a user, PID, network, IPC, mount
    or UTS namespace, nor a `/tmp`; neither has a capability or can make a user namespace."""
    (functions_dir / "hostile" / "faasd.yaml").write_text(
        "batching: {max_batch_size: 1}\nscale: {max_instances: 2}\n")
    daemon = await started_daemon(tmp_path, functions_dir)
    try:
        first, second = await asyncio.gather(*(_try(daemon, "namespaces 1") for _ in "ab"))
    finally:
        await daemon.stop()
    one, two = first["ok"], second["ok"]
    assert isinstance(one, dict) and isinstance(two, dict)
    ns_one, ns_two = one["ns"], two["ns"]
    assert set(ns_one) == {n for n in ns_one if ns_one[n] != ns_two[n]}
    own = {n: os.readlink(f"/proc/self/ns/{n}") for n in ns_one}
    assert all(ns_one[n] != own[n] for n in own)  # and none of them the host's
    for seen in (one, two):
        assert seen["caps"] == ["0000000000000000"] * 3
        assert seen["userns"] == "No space left on device"  # max_user_namespaces is 0
        assert seen["links"] == ["lo"]
        assert seen["pid"] == 2  # below the init of its own PID namespace
        # its own /tmp: the other's file is not there (besides it, only the tops of what the
        # box binds below /tmp, such as this test's function directory)
        made = [name for name in seen["tmp"] if name.startswith("made-by-")]
        assert made == [f"made-by-{seen['uid']}"] and one["uid"] != two["uid"]
        assert tmp_path.parts[2] in seen["tmp"]


@pytest.mark.skipif(bubblewrap.probe() is not None, reason="this host cannot make namespaces")
async def test_network_true_opens_the_network(tmp_path: Path, functions_dir: Path) -> None:
    (functions_dir / "hostile" / "faasd.yaml").write_text("network: true\n")
    daemon = await started_daemon(tmp_path, functions_dir)
    try:
        assert await _try(daemon, f"connect 127.0.0.1:{daemon.port}") == {"ok": "connected"}
        assert "error" in await _try(daemon, "read /etc/shadow")  # the rest stays confined
    finally:
        await daemon.stop()
