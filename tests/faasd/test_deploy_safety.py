"""Deploys that cannot hang or hold up others: links, special files, slow imports, a full disk,
a redeploy under load, SIGTERM during a deploy. Real daemons, real sandboxes, real files."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from faasd.errors import DeployError, InsufficientStorage
from faasd.functions.loader import load_function
from faasd.functions.registry import Registry
from faasd.functions.spec import FunctionSettings
from tests.faasd.builders import make_function
from tests.faasd.daemon_process import start_daemon

SLOW_IMPORT = "import time\n\ntime.sleep(60)\n\n\ndef postprocess(outputs):\n    return {}\n"


def _link(directory: Path, name: str, target: str) -> Path:
    link = directory / name
    os.symlink(target, link)
    return link


def _bound_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # the file stays after the socket is closed


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: _link(d, "zero.bin", "/dev/zero"), "outside the function directory"),
        (lambda d: _link(d, "secret.txt", "/etc/passwd"), "outside the function directory"),
        (lambda d: _link(d, "gone.txt", "nowhere.txt"), "which does not exist"),
        (lambda d: (_link(d, "a", "b"), _link(d, "b", "a")), "link loop"),
        (lambda d: _link(d, "up", "."), "a directory that contains it"),
        (lambda d: os.mkfifo(d / "pipe"), "is a FIFO"),
        (lambda d: _bound_socket(d / "sock"), "is a socket"),
    ],
)
def test_links_out_and_special_files_are_refused_before_reading(
    tmp_path: Path, make: object, expected: str
) -> None:
    directory = make_function(tmp_path, "f")
    make(directory)  # type: ignore[operator]
    started = time.perf_counter()
    with pytest.raises(DeployError, match=expected) as caught:
        load_function(directory, FunctionSettings())
    assert time.perf_counter() - started < 1  # a FIFO or /dev/zero was never opened
    assert caught.value.status == 400
    assert str(directory) in caught.value.message  # names the path


def test_a_directory_with_too_many_entries_is_refused_without_walking_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faasd.functions import tree

    directory = make_function(tmp_path, "f")
    for i in range(30):
        (directory / f"extra-{i}.txt").write_text("x")
    monkeypatch.setattr(tree, "MAX_ENTRIES", 20)
    with pytest.raises(DeployError, match="more than 20 files"):
        load_function(directory, FunctionSettings())


def test_a_link_inside_the_directory_is_followed_and_copied(tmp_path: Path) -> None:
    directory = make_function(tmp_path / "src", "f")
    (directory / "data").mkdir()
    (directory / "data" / "labels.real").write_text("zero\none\n")
    _link(directory, "labels.txt", "data/labels.real")
    registry = Registry(tmp_path / "state", FunctionSettings())
    staged = registry.stage(directory)
    copied = staged.directory / "labels.txt"
    assert not copied.is_symlink() and copied.read_text() == "zero\none\n"


def test_a_full_disk_is_507_and_leaves_nothing(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    directory = make_function(tmp_path / "src", "f")
    registry = Registry(tmp_path / "state", FunctionSettings())

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full)  # the disk, at the edge
    with pytest.raises(InsufficientStorage) as caught:
        registry.stage(directory)
    assert caught.value.status == 507
    assert list((tmp_path / "state" / "functions").iterdir()) == []  # no name dir, no counter


@pytest.fixture
async def quick(tmp_path: Path) -> AsyncIterator[Daemon]:
    config = DaemonConfig(port=0, state_dir=tmp_path / "state", deploy_timeout_s=3,
                          drain_timeout_s=2)
    async with Daemon(config) as running:
        yield running


async def test_a_hanging_import_names_handler_py_and_holds_up_no_other_deploy(
    quick: Daemon, tmp_path: Path
) -> None:
    slow = make_function(tmp_path / "src", "slow", "", SLOW_IMPORT)
    other = make_function(tmp_path / "src", "other")
    url = f"{quick.url}/system/functions"
    async with aiohttp.ClientSession() as session:
        async def deploy(path: Path) -> tuple[int, dict[str, object], float]:
            started = time.perf_counter()
            async with session.post(url, json={"path": str(path)}) as resp:
                return resp.status, await resp.json(), time.perf_counter() - started

        hanging = asyncio.ensure_future(deploy(slow))
        await asyncio.sleep(0.5)  # the slow one is importing now
        status, _, _other_s = await deploy(other)
        assert status == 201
        assert not hanging.done()  # it did not wait for the slow one
        status, doc, slow_s = await hanging
    assert status == 400
    assert doc["file"] == str(slow / "handler.py")
    assert "importing" in str(doc["error"]) and "deploy_timeout_s (3 s)" in str(doc["error"])
    assert 2.5 < slow_s < 10


@pytest.mark.parametrize("special", ["zero", "fifo"])
async def test_path_deploys_of_special_files_answer_400_and_the_daemon_serves_on(
    quick: Daemon, tmp_path: Path, special: str
) -> None:
    directory = make_function(tmp_path / "src", "sneaky")
    if special == "zero":
        _link(directory, "weights.bin", "/dev/zero")
    else:
        os.mkfifo(directory / "weights.bin")
    async with aiohttp.ClientSession() as session:
        for _ in range(8):  # more than the executor's threads: none of them is stuck
            async with session.post(f"{quick.url}/system/functions",
                                    json={"path": str(directory)}) as resp:
                assert resp.status == 400
                assert (await resp.json())["file"] == str(directory / "weights.bin")
        (directory / "weights.bin").unlink()
        async with session.post(f"{quick.url}/system/functions",
                                json={"path": str(directory)}) as resp:
            assert resp.status == 201


async def test_a_redeploy_under_load_is_quick(daemon: Daemon, tmp_path: Path) -> None:
    source = make_function(tmp_path / "src", "linear", "batching: {max_batch_size: 8}\n",
                           scale=2.0)
    stop = asyncio.Event()
    answered = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal answered
        while not stop.is_set():
            async with session.post(f"{daemon.url}/function/linear",
                                    json={"x": [[1, 2, 3, 4]]}) as resp:
                assert resp.status == 200, await resp.text()
                answered += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        clients = [asyncio.ensure_future(client(session)) for _ in range(50)]
        while answered < 100:
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        async with session.put(f"{daemon.url}/system/functions",
                               json={"path": str(source)}) as resp:
            assert resp.status == 200, await resp.text()
        redeploy_s = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*clients)
    # 0.3 s on a quiet machine; a generous bound, so that a loaded CI host does not flake
    assert redeploy_s < 5, redeploy_s


def test_sigterm_during_a_hanging_deploy_finishes_within_the_drain_timeout(
    tmp_path: Path,
) -> None:
    config = tmp_path / "faasd.yaml"
    config.write_text("drain_timeout_s: 2\ndeploy_timeout_s: 120\n")
    slow = make_function(tmp_path / "src", "slow", "", SLOW_IMPORT)
    daemon = start_daemon(tmp_path, None, "--config", str(config))
    try:
        import json
        import threading
        import urllib.request

        def deploy() -> None:
            request = urllib.request.Request(
                f"{daemon.url}/system/functions", method="POST",
                data=json.dumps({"path": str(slow)}).encode(),
                headers={"Content-Type": "application/json"})
            with contextlib.suppress(Exception):
                urllib.request.urlopen(request, timeout=30)

        thread = threading.Thread(target=deploy, daemon=True)
        thread.start()
        time.sleep(1.0)  # importing now
        started = time.monotonic()
        assert daemon.stop(timeout_s=20) == 0, daemon.log()
        assert time.monotonic() - started < 8, daemon.log()
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
