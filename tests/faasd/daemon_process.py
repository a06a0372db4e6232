"""`faasd up` as a real subprocess on port 0, for the CLI, tritonclient and SIGTERM tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 60.0


@dataclass
class DaemonProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise


def start_daemon(
    tmp: Path, functions: Path | None, *extra: str, env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> DaemonProcess:
    """`faasd up` with stdout and stderr in `tmp`/daemon.log; `pass_fds` stay open in it, as
    descriptors its parent left it would."""
    port_file = tmp / "port"
    log_path = tmp / "daemon.log"
    args = [sys.executable, "-m", "faasd.cli", "up", "--host", "127.0.0.1", "--port", "0",
            "--state-dir", str(tmp / "state"), "--port-file", str(port_file), *extra]
    if functions is not None:
        args += ["--functions", str(functions)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FAASD_", "NOTIFY_"))}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**clean, **(env or {})},
            pass_fds=pass_fds,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not port_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"faasd up exited with {process.returncode}:\n"
                               + log_path.read_text())
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("faasd up did not become ready:\n" + log_path.read_text())
        time.sleep(0.05)
    return DaemonProcess(process, int(port_file.read_text()), log_path)
