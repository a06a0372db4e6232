"""Lifecycle end to end: redeploy under load loses no call; SIGTERM drains; sd_notify."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from tests.faasd.builders import TEXT_HANDLER, WEIGHTS, make_function
from tests.faasd.daemon_process import start_daemon

pytestmark = pytest.mark.slow


async def test_redeploy_under_load_loses_no_call(daemon: Daemon, tmp_path: Path) -> None:
    """Clients call without pause while the function is redeployed twice with new weights;
    every call succeeds and its answer matches the version that says it served it."""
    url = daemon.url
    sources = [make_function(tmp_path / f"v{i}", "linear",
                             "batching: {max_batch_size: 4, max_queue_delay_ms: 1}\n",
                             scale=float(i + 2)) for i in range(2)]
    stop = asyncio.Event()
    answers: list[tuple[int, float]] = []
    failures: list[str] = []
    request = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                           "data": [1, 1, 1, 1]}]}

    async def client(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with s.post(f"{url}/v2/models/linear/infer", json=request) as resp:
                if resp.status != 200:
                    failures.append(f"{resp.status}: {await resp.text()}")
                    continue
                doc: dict[str, Any] = await resp.json()
                answers.append((int(doc["model_version"]), doc["outputs"][0]["data"][0]))

    async with aiohttp.ClientSession() as s:
        first = (await (await s.get(f"{url}/system/function/linear")).json())["version"]
        clients = [asyncio.create_task(client(s)) for _ in range(6)]
        await served_by(first, answers)
        for number, source in enumerate(sources, start=first + 1):
            async with s.put(f"{url}/system/functions", json={"path": str(source)}) as resp:
                assert resp.status == 200, await resp.text()
            await served_by(number, answers)
        stop.set()
        await asyncio.gather(*clients)
    assert not failures, failures[:3]
    base = float(WEIGHTS.sum(axis=0)[0])  # y[0] for x = ones and scale 1
    scale_of = {first: 1.0, first + 1: 2.0, first + 2: 3.0}
    served = {v for v, _ in answers}
    assert served == set(scale_of), served
    for v, y0 in answers:
        assert y0 == pytest.approx(base * scale_of[v], rel=1e-5)


async def served_by(version: int, answers: list[tuple[int, float]], count: int = 20) -> None:
    """Wait until `count` answers came from `version` (the clients keep calling meanwhile)."""
    async with asyncio.timeout(60):
        while sum(1 for v, _ in answers if v == version) < count:
            await asyncio.sleep(0.01)


def _in_flight(url: str) -> int:
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
        return int(json.loads(resp.read())["in_flight"])


def _post(url: str, body: bytes, out: dict[str, Any]) -> None:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            out["status"] = resp.status
            out["body"] = resp.read()
    except Exception as exc:
        out["error"] = exc


def test_sigterm_drains_in_flight_calls_then_exits(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "texty", "timeout_s: 10\n", TEXT_HANDLER)
    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(60)
        daemon = start_daemon(tmp_path, functions, env={"NOTIFY_SOCKET": str(notify_path)})
        messages = [notify.recv(4096).decode()]
        while "READY=1" not in messages[-1]:
            messages.append(notify.recv(4096).decode())
        assert "serving 1 function(s)" in messages[-1]

        out: dict[str, Any] = {}
        caller = threading.Thread(target=_post,
                                  args=(f"{daemon.url}/function/texty", b"sleep:1.5", out))
        caller.start()
        deadline = time.monotonic() + 30
        while _in_flight(daemon.url) == 0:  # wait until the call is admitted
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.02)
        started = time.monotonic()
        exit_code = daemon.stop()
        caller.join(30)
        assert out.get("status") == 200, (out, daemon.log())
        assert exit_code == 0, daemon.log()
        assert time.monotonic() - started >= 0.3  # it waited for the call
        notify.setblocking(False)
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except BlockingIOError:
                break
        assert any("STOPPING=1" in m for m in messages), messages
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{daemon.url}/healthz", timeout=5)
    log = daemon.log()
    assert log.index("draining") < log.index("faasd stopped")


def test_sigterm_while_functions_load_stops_promptly(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    slow_import = "import time\n\ntime.sleep(20)\n\n\ndef postprocess(outputs):\n    return {}\n"
    make_function(functions, "slow", "", slow_import)
    port_file = tmp_path / "port"
    log_path = tmp_path / "daemon.log"
    import subprocess
    import sys

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "faasd.cli", "up", "--port", "0", "--state-dir",
             str(tmp_path / "state"), "--functions", str(functions), "--port-file",
             str(port_file)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "bound to" not in log_path.read_text():
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
            time.sleep(0.05)
        time.sleep(0.3)  # inside the slow deploy now
        started = time.monotonic()
        process.terminate()
        assert process.wait(15) == 0, log_path.read_text()
        assert time.monotonic() - started < 10  # did not wait for the 20 s import
        assert not port_file.exists()  # never became ready
        assert "signal received while starting" in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_restart_over_unchanged_functions_keeps_their_versions(tmp_path: Path) -> None:
    """`faasd up --functions DIR` twice over one state directory: an unchanged function keeps
    its version (and still answers), a changed one gets the next version."""
    root = tmp_path / "functions"
    make_function(root, "linear", "batching: {max_batch_size: 4}\n")
    make_function(root, "texty", "timeout_s: 5\n", TEXT_HANDLER)
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=root)

    async def versions() -> dict[str, int]:
        async with Daemon(config) as running:
            assert not running.load_errors, running.load_errors
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{running.url}/function/linear", json={"x": [[1, 2, 3, 4]]}) \
                        as resp:
                    assert resp.status == 200, await resp.text()
                async with s.get(f"{running.url}/system/functions") as resp:
                    listed = await resp.json()
        return {f["name"]: f["version"] for f in listed}

    assert await versions() == {"linear": 1, "texty": 1}
    assert await versions() == {"linear": 1, "texty": 1}
    (root / "texty" / "faasd.yaml").write_text("timeout_s: 6\n")
    assert await versions() == {"linear": 1, "texty": 2}
    installed = sorted(p.name for p in (tmp_path / "state" / "functions" / "linear").iterdir())
    assert installed == ["1", "1.json", "counter", "current"]
