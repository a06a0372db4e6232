"""What one careless or hostile client costs everyone else: slow connections, a stall request,
a redeploy under load. The figures `docs/benchmarks.md` records under "Availability".

One `faasd up` on 127.0.0.1 serving a copy of `functions/digits` (its header_timeout_s lowered
with --header-timeout, 10 s by default as in configs/faasd.yaml), then three cases:

1. **slow**: `--slow` connections (a third send nothing, a third half their headers, a third
   announce a 1,000-byte body and drip one byte a second), held open. Meanwhile `/healthz`
   and digits calls are timed; then how long until the daemon has closed every one of them,
   and its open file descriptors before, at the peak and after (/proc/PID/fd).
2. **stall**: the 113-byte V2 request that declares 100,000,000 BYTES elements and
   `binary_data_size: 0`, and a call of 20,000 rows against max_batch_size 32, each sent
   `--stall` times while `/healthz` is timed alongside.
3. **redeploy**: `--load` client connections call digits in a loop while the function is
   redeployed (PUT /system/functions) `--redeploys` times; each redeploy's duration.

    .venv/bin/python benchmarks/abuse.py [--slow 1000] [--stall 50] [--load 200]
        [--redeploys 3] [--header-timeout 10]

Prints one JSON report. The daemon and its sandboxes are stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from faasd_bench.procs import Server, free_port

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "functions" / "digits"
STALL = json.dumps({"inputs": [{"name": "input", "shape": [100_000_000], "datatype": "BYTES",
                                "parameters": {"binary_data_size": 0}}]}).encode()


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": round(statistics.median(ordered) * 1e3, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 2),
            "max_ms": round(ordered[-1] * 1e3, 2), "n": len(ordered)}


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _timed_get(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.get(url) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status}")
    return time.perf_counter() - started


async def _timed_post(session: aiohttp.ClientSession, url: str, body: bytes,
                      headers: dict[str, str] | None = None) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers or {
            "Content-Type": "application/json"}) as resp:
        await resp.read()
        return time.perf_counter() - started, resp.status


async def slow_case(url: str, port: int, pid: int, count: int) -> dict[str, Any]:
    before = _fds(pid)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    openings = [b"", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                b"POST /function/digits HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                b"application/json\r\nContent-Length: 1000\r\n\r\n{"]
    started = time.perf_counter()
    for i in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if openings[i % 3]:
            writer.write(openings[i % 3])
        held.append((reader, writer))
    opened_s = time.perf_counter() - started
    await asyncio.sleep(0.5)
    peak = _fds(pid)
    sample = (DIGITS / "sample.json").read_bytes()
    health: list[float] = []
    calls: list[float] = []
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            health.append(await _timed_get(session, f"{url}/healthz"))
            took, status = await _timed_post(session, f"{url}/function/digits", sample)
            calls.append(took)
            statuses.append(status)
            for _, writer in held[2::3]:  # the drips: one byte each
                if not writer.is_closing():
                    writer.write(b" ")
            await asyncio.sleep(0.1)

    async def closed(reader: asyncio.StreamReader) -> float:
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        return time.perf_counter() - started

    closed_after = await asyncio.gather(*(closed(r) for r, _ in held))
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.5)
    kinds = ("silent", "half_headers", "body_drip")
    return {
        "connections": count, "opened_in_s": round(opened_s, 2),
        "closed_by_daemon": len(closed_after),
        "closed_after_s": {kind: round(max(closed_after[i::3]), 1)
                           for i, kind in enumerate(kinds)},
        "daemon_fds": {"before": before, "peak": peak, "after": _fds(pid)},
        "healthz_meanwhile": _ms(health),
        "digits_calls_meanwhile": {**_ms(calls), "statuses": sorted(set(statuses))},
    }


async def stall_case(url: str, count: int) -> dict[str, Any]:
    rows = json.dumps({"inputs": [{"name": "input", "shape": [20_000, 64], "datatype": "FP32",
                                   "data": [0.0] * (20_000 * 64)}]}).encode()
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        for label, body in (("bytes_100M_113B", STALL), ("rows_20000", rows)):
            results: list[tuple[float, int]] = []
            health: list[float] = []

            await asyncio.gather(_hostile(session, url, body, count, results),
                                 _watch(session, url, count, results, health))
            out[label] = {"request_bytes": len(body),
                          "answers": _ms([t for t, _ in results]),
                          "statuses": sorted({s for _, s in results}),
                          "healthz_meanwhile": _ms(health)}
    return out


async def _hostile(session: aiohttp.ClientSession, url: str, body: bytes, count: int,
                   results: list[tuple[float, int]]) -> None:
    for _ in range(count):
        results.append(await _timed_post(session, f"{url}/v2/models/digits/infer", body))


async def _watch(session: aiohttp.ClientSession, url: str, count: int,
                 results: list[tuple[float, int]], health: list[float]) -> None:
    """Time /healthz every 5 ms until `count` hostile answers are in."""
    while len(results) < count:
        health.append(await _timed_get(session, f"{url}/healthz"))
        await asyncio.sleep(0.005)


async def redeploy_case(url: str, source: Path, load: int, redeploys: int) -> dict[str, Any]:
    sample = (source / "sample.json").read_bytes()
    stop = asyncio.Event()
    answered: list[int] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client() -> None:
            while not stop.is_set():
                _, status = await _timed_post(session, f"{url}/function/digits", sample)
                answered.append(status)

        clients = [asyncio.ensure_future(client()) for _ in range(load)]
        while len(answered) < load:
            await asyncio.sleep(0.05)
        durations: list[float] = []
        for _ in range(redeploys):
            took, status = await _timed_post(
                session, f"{url}/system/functions", json.dumps({"path": str(source)}).encode())
            if status not in (200, 201):
                raise RuntimeError(f"redeploy answered {status}")
            durations.append(took)
            await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)
    return {"load_connections": load, "redeploy_s": [round(d, 3) for d in durations],
            "calls": len(answered), "call_statuses": sorted(set(answered))}


async def measure(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    functions = scratch / "functions"
    shutil.copytree(DIGITS, functions / "digits")
    config = scratch / "faasd.yaml"
    config.write_text(f"header_timeout_s: {args.header_timeout}\n")
    port = free_port()
    argv = [str(Path(os.sys.executable)), "-m", "faasd.cli", "up", "--port", str(port),
            "--state-dir", str(scratch / "state"), "--functions", str(functions),
            "--config", str(config)]
    url = f"http://127.0.0.1:{port}"
    with Server("faasd", argv, scratch / "faasd.log", cwd=REPO) as server:
        server.wait_http(f"{url}/v2/health/ready", 120)
        report: dict[str, Any] = {"header_timeout_s": args.header_timeout}
        report["slow"] = await slow_case(url, port, server.pid, args.slow)
        report["stall"] = await stall_case(url, args.stall)
        report["redeploy"] = await redeploy_case(url, functions / "digits", args.load,
                                                 args.redeploys)
        log = server.log_tail(400)
        report["cap_log_lines"] = log.count("connection cap of")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=1000)
    parser.add_argument("--stall", type=int, default=50)
    parser.add_argument("--load", type=int, default=200)
    parser.add_argument("--redeploys", type=int, default=3)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="faasd-abuse-") as scratch:
        report = asyncio.run(measure(args, Path(scratch)))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
