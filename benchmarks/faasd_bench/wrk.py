"""Load with wrk (the Debian package): a Lua script POSTs one fixed body over N connections.

`parse` is pure (wrk's text report -> `WrkResult`); `run` is the thin shell around the binary.
Calls per second count only 2xx answers: wrk's own "Requests/sec" counts errors too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_LATENCY_LINE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_TOTAL_LINE = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m),")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: answered calls per second (2xx only), latency percentiles, failures."""

    calls_per_s: float
    requests: int
    non_2xx: int
    socket_errors: int
    duration_s: float
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 3) for k, v in asdict(self).items()}


def parse(report: str) -> WrkResult:
    """Read wrk's `--latency` report. Raises ValueError if it lacks the totals or percentiles."""
    total = _TOTAL_LINE.search(report)
    percentiles = {int(q): float(v) * _UNIT_MS[u] for q, v, u in _LATENCY_LINE.findall(report)}
    if total is None or 50 not in percentiles or 99 not in percentiles:
        raise ValueError(f"not a wrk --latency report:\n{report}")
    requests = int(total.group(1))
    duration_s = float(total.group(2)) * _UNIT_MS[total.group(3)] / 1e3
    non_2xx_match = _NON_2XX.search(report)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    socket_match = _SOCKET_ERRORS.search(report)
    socket_errors = sum(int(g) for g in socket_match.groups()) if socket_match else 0
    return WrkResult(
        calls_per_s=(requests - non_2xx) / duration_s,
        requests=requests,
        non_2xx=non_2xx,
        socket_errors=socket_errors,
        duration_s=duration_s,
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
    )


def lua_script(body_path: Path, headers: Mapping[str, str]) -> str:
    """A wrk script that POSTs the file's bytes with these headers on every request."""
    lines = [
        'wrk.method = "POST"',
        f'local f = assert(io.open("{body_path}", "rb"))',
        'wrk.body = f:read("*a")',
        "f:close()",
    ]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def ensure_installed() -> str:
    """Path of wrk, installing the Debian package first (and saying so) when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it with `apt-get install -y wrk`", file=sys.stderr)
    install = ["apt-get", "install", "-y", "wrk"]
    if subprocess.run(install, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, check=False)
        subprocess.run(install, capture_output=True, check=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is still missing after apt-get install -y wrk")
    return found


def run(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
) -> WrkResult:
    """Drive `url` for `duration_s` with `connections` keep-alive connections."""
    wrk = ensure_installed()
    with tempfile.TemporaryDirectory(prefix="faasd-wrk-") as scratch:
        body_path = Path(scratch) / "body"
        body_path.write_bytes(body)
        script = Path(scratch) / "post.lua"
        script.write_text(lua_script(body_path, headers))
        argv = [
            wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s",
            "--timeout", "5s", "--latency", "-s", str(script), url,
        ]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + 30, check=True
        )
    return parse(done.stdout)
