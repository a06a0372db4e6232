"""What the figures were measured on: CPU model, cores, memory, and the versions that matter."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from faasd_bench.peer import MLSERVER_VERSION, VENV


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    return "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    except OSError:
        return "absent"
    text = (out.stdout + out.stderr).split()
    return text[1] if len(text) > 1 and text[0] == "wrk" else "unknown"


def describe() -> dict[str, object]:
    peer_installed = (VENV / ".installed").is_file()
    return {
        "cpu": _lscpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "faasd": _version("faasd"),
        "onnxruntime": _version("onnxruntime"),
        "aiohttp": _version("aiohttp"),
        "uvloop": _version("uvloop"),
        "numpy": _version("numpy"),
        "mlserver": MLSERVER_VERSION if peer_installed else "absent",
        "wrk": _wrk_version(),
    }
