"""GPU slices in a real daemon on fake NVML machines: real sandboxes, real HTTP.

The sandbox processes are real; their environment is read from /proc/PID/environ, so what is
checked is what CUDA would read at its initialisation on a GPU host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from faasd.gpu.mps import PID_FILE
from faasd.gpu.settings import GpuSettings
from tests.faasd.builders import TEXT_HANDLER, make_function
from tests.faasd.gpu.test_mps import STAND_IN

pytestmark = pytest.mark.slow

#: Logs which slice each call ran on (the sandbox's own CUDA_VISIBLE_DEVICES) and when.
#: Answers when and where (which slice) it ran: a sandbox cannot write to the host's files.
SLICE_LOG_HANDLER = '''
import os
import time

import numpy as np

RUN = {}


def preprocess(body, content_type):
    start = time.time()
    time.sleep(float(body.decode() or 0))
    RUN.update(pid=os.getpid(), start=start, end=time.time(),
               device=os.environ.get("CUDA_VISIBLE_DEVICES"))
    return {"x": np.ones((1, 4), dtype=np.float32)}


def postprocess(outputs):
    return dict(RUN)
'''


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def gone(pid: int) -> bool:
    try:
        return "Z" in Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True


@asynccontextmanager
async def gpu_daemon(tmp_path: Path, fake: str, functions: Path,
                     mode: str = "auto") -> AsyncIterator[Daemon]:
    config = DaemonConfig(
        port=0,
        state_dir=tmp_path / "state",
        functions_dir=functions,
        drain_timeout_s=5,
        gpu=GpuSettings(mode=mode, fake=fake, health_interval_s=3600),
    )
    async with Daemon(config) as running:
        assert not running.load_errors, running.load_errors
        yield running


async def call(session: aiohttp.ClientSession, url: str, name: str,
               body: str = "1,2,3,4") -> tuple[int, dict[str, str], Any]:
    async with session.post(f"{url}/function/{name}", data=body,
                            headers={"Content-Type": "text/plain"}) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def nodes(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    """This node's entry of /system/nodes (the one with its resources), as a list of one."""
    async with session.get(f"{url}/system/nodes") as resp:
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
    return [n for n in doc["nodes"] if n["name"] == doc["self"]["name"]]


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_mig_sandbox_carries_its_instance_and_gives_it_back(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "onmig", "resources: {vgpu: 1}\n", TEXT_HANDLER)
    async with gpu_daemon(tmp_path, "a100-40gb-mig", functions) as daemon, \
            aiohttp.ClientSession() as session:
        (node,) = await nodes(session, daemon.url)
        (gpu,) = node["gpus"]
        assert (gpu["mode"], gpu["total_units"], gpu["free_units"]) == ("mig", 7, 7)
        assert [i["profile"] for i in gpu["instances"]] == ["1g.5gb"] * 7

        status, headers, body = await call(session, daemon.url, "onmig")
        assert status == 200, body
        ((_, function, pid, given),) = daemon.services.gpus.bound()
        assert function == "onmig" and pid is not None
        assert headers["X-Faasd-Device"] == f"cpu (fake {given.device_uuid})"
        env = environ(pid)  # what the sandbox process really has
        assert env["CUDA_VISIBLE_DEVICES"] == given.device_uuid
        assert given.device_uuid.startswith("MIG-")
        (gpu,) = (await nodes(session, daemon.url))[0]["gpus"]
        assert gpu["free_units"] == 6
        assert [i["uuid"] for i in gpu["instances"] if i["in_use"]] == [given.device_uuid]
        async with session.get(f"{daemon.url}/healthz") as resp:
            assert (await resp.json())["gpus"][0]["free_units"] == 6
        async with session.get(f"{daemon.url}/metrics") as resp:
            text = await resp.text()
        assert 'faasd_gpu_units_total{gpu="0",mode="mig"} 7.0' in text
        assert 'faasd_gpu_units_free{gpu="0",mode="mig"} 6.0' in text
        daemon.services.gpus.nvml.attach(pid, given.device_uuid, 300 * 2**20)  # as CUDA would
        async with session.get(f"{daemon.url}/metrics") as resp:
            text = await resp.text()
        (line,) = [x for x in text.splitlines() if x.startswith("faasd_gpu_memory_used_bytes{")]
        assert line.startswith('faasd_gpu_memory_used_bytes{function_name="onmig"} ')
        assert float(line.split()[-1]) == 300 * 2**20

        # the fork server never gets a slice, nor CUDA (above the sandbox: its PID
        # namespace's init, then its keeper, `faasd.sandbox.identity`)
        fork_server = parent_of(parent_of(parent_of(pid)))
        assert "CUDA_VISIBLE_DEVICES" not in environ(fork_server)
        assert "libcuda" not in Path(f"/proc/{fork_server}/maps").read_text()

        async with session.delete(f"{daemon.url}/system/functions",
                                  json={"functionName": "onmig"}) as resp:
            assert resp.status in (200, 202, 204), await resp.text()
        await until(lambda: not daemon.services.gpus.bound())
        assert gone(pid)
        (gpu,) = (await nodes(session, daemon.url))[0]["gpus"]
        assert gpu["free_units"] == 7 and not any(i["in_use"] for i in gpu["instances"])


async def test_concurrent_calls_never_share_the_only_2g_instance(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    for name, units in (("two", 2), ("one", 1)):
        make_function(functions, name, f"resources: {{vgpu: {units}}}\n"
                      "scale: {max_instances: 4}\n", SLICE_LOG_HANDLER)
    async with gpu_daemon(tmp_path, "h100-80gb-mig-mixed", functions) as daemon, \
            aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(call(session, daemon.url, "two", "0.2") for _ in range(4)),
            *(call(session, daemon.url, "one", "0.2") for _ in range(4)),
        )
        assert [r[0] for r in results] == [200] * 8, results
        two_uuid = next(i["uuid"] for i in (await nodes(session, daemon.url))[0]["gpus"][0]
                        ["instances"] if i["profile"] == "2g.20gb")
        ones = {i["uuid"] for i in (await nodes(session, daemon.url))[0]["gpus"][0]["instances"]
                if i["units"] == 1}
        assert {r[1]["X-Faasd-Device"] for r in results[:4]} == {f"cpu (fake {two_uuid})"}
        assert {r[1]["X-Faasd-Device"] for r in results[4:]} <= {f"cpu (fake {u})" for u in ones}
        runs = [r[2] for r in results]
        assert len({r["pid"] for r in runs}) >= 1 and all(r["device"] for r in runs)
        # at any moment each MIG device serves one sandbox process at most
        for a in runs:
            for b in runs:
                if a is not b and a["device"] == b["device"] and a["pid"] != b["pid"]:
                    assert a["end"] <= b["start"] or b["end"] <= a["start"], (a, b)
        held = daemon.services.gpus.bound()
        assert len({s.device_uuid for _, _, _, s in held}) == len(held) <= 3


async def test_a_size_the_node_cannot_give_is_a_clear_503(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "big", "resources: {vgpu: 4}\n", TEXT_HANDLER)
    make_function(functions, "fat", "resources: {vgpu: 1, gpu_memory_mb: 6000}\n",
                  TEXT_HANDLER)
    async with gpu_daemon(tmp_path, "a100-40gb-mig", functions) as daemon, \
            aiohttp.ClientSession() as session:
        status, headers, body = await call(session, daemon.url, "big")
        assert status == 503 and body["code"] == "gpu_unavailable"
        assert "slices of: 1; set resources.vgpu" in body["error"]
        assert "Retry-After" in headers
        status, _, body = await call(session, daemon.url, "fat")  # a 1g.5gb has 4864 MB
        assert status == 503 and body["code"] == "gpu_unavailable"
        assert "6000 MB of device memory" in body["error"]
        assert "lower resources.gpu_memory_mb" in body["error"]


async def test_mps_sandboxes_get_a_share_and_a_memory_limit(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "share", "resources: {vgpu: 3}\n", TEXT_HANDLER)
    make_function(functions, "pinned", "resources: {vgpu: 1, gpu_memory_mb: 12000}\n",
                  TEXT_HANDLER)
    async with gpu_daemon(tmp_path, "a100-40gb-mps", functions) as daemon, \
            aiohttp.ClientSession() as session:
        status, headers, _ = await call(session, daemon.url, "share")
        assert status == 200
        assert headers["X-Faasd-Device"] == "cpu (fake cuda:0 (mps 43%))"
        ((_, _, pid, given),) = daemon.services.gpus.bound()
        assert pid is not None
        env = environ(pid)
        assert env["CUDA_VISIBLE_DEVICES"] == given.gpu_uuid
        assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "43"
        assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=17554M"
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(tmp_path / "state" / "mps" / "pipe")
        assert (await call(session, daemon.url, "pinned"))[0] == 200
        ((_, _, pinned_pid, _),) = [b for b in daemon.services.gpus.bound() if b[1] == "pinned"]
        assert pinned_pid is not None
        assert environ(pinned_pid)["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=12000M"


async def test_without_gpu_units_a_gpu_function_runs_on_the_cpu(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "wants", "resources: {vgpu: 1}\n", TEXT_HANDLER)
    async with gpu_daemon(tmp_path, "no-nvml", functions) as daemon, \
            aiohttp.ClientSession() as session:
        assert (await nodes(session, daemon.url))[0]["gpus"] == []
        status, headers, _ = await call(session, daemon.url, "wants")
        assert status == 200 and headers["X-Faasd-Device"] == "cpu"


async def test_a_crashed_or_hung_gpu_sandbox_returns_its_slice(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "onmig", "timeout_s: 1\nresources: {vgpu: 1}\n", TEXT_HANDLER)
    async with gpu_daemon(tmp_path, "a100-40gb-mig", functions) as daemon, \
            aiohttp.ClientSession() as session:
        gpus = daemon.services.gpus
        for body, status in (("die", 502), ("hang", 504)):
            answer, _, error = await call(session, daemon.url, "onmig", body)
            assert answer == status, error
            await until(lambda: not gpus.bound())  # the killed sandbox's slice came back
            assert gpus.table.free_units(0) == 7
        answer, headers, _ = await call(session, daemon.url, "onmig")
        assert answer == 200 and headers["X-Faasd-Device"].startswith("cpu (fake MIG-")
        assert len(gpus.bound()) == 1


async def test_a_gpu_lost_mid_run_is_withdrawn_and_its_sandboxes_killed(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "onmig", "resources: {vgpu: 1}\n", TEXT_HANDLER)
    async with gpu_daemon(tmp_path, "a100-40gb-mig", functions) as daemon, \
            aiohttp.ClientSession() as session:
        assert (await call(session, daemon.url, "onmig"))[0] == 200
        ((owner, _, pid, _),) = daemon.services.gpus.bound()
        daemon.services.gpus.nvml.lose(0)  # the fake GPU falls off the bus
        assert await daemon.services.gpus.check() == [owner]
        await until(lambda: not daemon.services.gpus.bound())
        (gpu,) = (await nodes(session, daemon.url))[0]["gpus"]
        assert (gpu["healthy"], gpu["total_units"], gpu["free_units"]) == (False, 0, 0)
        assert pid is not None and gone(pid)
        # no GPU units left: the function goes on, on the CPU
        status, headers, _ = await call(session, daemon.url, "onmig")
        assert status == 200 and headers["X-Faasd-Device"] == "cpu"


async def test_a_dead_mps_server_is_restarted_and_its_clients_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-cuda-mps-control").write_text(STAND_IN)
    (bin_dir / "nvidia-cuda-mps-control").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    functions = tmp_path / "functions"
    make_function(functions, "shared", "resources: {vgpu: 2}\n", TEXT_HANDLER)
    async with gpu_daemon(tmp_path, "a100-40gb", functions, mode="mps") as daemon, \
            aiohttp.ClientSession() as session:
        gpus = daemon.services.gpus
        assert gpus.mps is not None and gpus.mps.owned
        first = gpus.mps.pid()
        assert first is not None
        try:
            assert (await call(session, daemon.url, "shared"))[0] == 200
            ((owner, _, pid, _),) = gpus.bound()
            os.kill(first, signal.SIGKILL)  # the MPS control daemon dies
            await until(lambda: gone(first))
            assert await gpus.check() == [owner]
            assert gpus.mps.pid() not in (None, first) and gpus.mps.restarts == 1
            await until(lambda: not gpus.bound())
            assert pid is not None and gone(pid)
            status, headers, _ = await call(session, daemon.url, "shared")  # a new sandbox
            assert status == 200 and headers["X-Faasd-Cold-Start"] == "true"
        finally:
            for pid_file in tmp_path.rglob(PID_FILE):
                with contextlib.suppress(ValueError, ProcessLookupError):
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_no_sandbox_module_imports_nvml() -> None:
    """The fork server imports what every worker inherits: never NVML or the GPU package."""
    import subprocess
    import sys

    code = ("import sys, faasd.sandbox.forkserver; "
            "print([m for m in sys.modules if m.startswith(('pynvml', 'faasd.gpu', 'cupy'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert out.stdout.strip() == "[]"
