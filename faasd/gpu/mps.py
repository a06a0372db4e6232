"""The MPS control daemon: find a running one, or start and supervise faasd's own.

`nvidia-cuda-mps-control -d` daemonises and writes `nvidia-cuda-mps-control.pid` into its pipe
directory (`CUDA_MPS_PIPE_DIRECTORY`); `echo quit | nvidia-cuda-mps-control` (same directory)
stops it. faasd gives its daemon its own pipe and log directories, so it never takes over an
MPS daemon someone else runs at the default `/tmp/nvidia-mps`: one found in faasd's pipe
directory at start is used and left running at exit; one faasd started is restarted when it
dies (`check`) and stopped at exit. Sandboxes reach it through `CUDA_MPS_PIPE_DIRECTORY`.

Reconstructed (not in NVIDIA's docs): that the pid file is how a running daemon is recognised;
`nvidia-cuda-mps-control` has no "status" command, and its control pipe outlives a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("faasd.gpu")

EXECUTABLE = "nvidia-cuda-mps-control"
PID_FILE = "nvidia-cuda-mps-control.pid"
START_TIMEOUT_S = 10.0


class MpsError(Exception):
    """The MPS control daemon cannot be started; the message says what to do."""


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped yet does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust the signal
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class MpsControl:
    """One MPS control daemon with its pipe and log directories."""

    def __init__(self, pipe_dir: Path, log_dir: Path, executable: str = EXECUTABLE) -> None:
        self.pipe_dir = pipe_dir
        self.log_dir = log_dir
        self.executable = executable
        #: True when faasd started the daemon (and so supervises and stops it)
        self.owned = False
        self.restarts = 0

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir),
            "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir),
        }

    def pid(self) -> int | None:
        """The running control daemon's pid, from its pid file; None if none runs."""
        try:
            pid = int((self.pipe_dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    async def ensure(self) -> None:
        """Use the daemon running in the pipe directory, or start one (MpsError if it
        cannot be: the executable is missing, it failed, or it wrote no pid file in time)."""
        if self.pid() is not None:
            log.info("using the MPS control daemon [%d] of %s", self.pid(), self.pipe_dir)
            return
        path = shutil.which(self.executable)
        if path is None:
            raise MpsError(f"{self.executable} is not on PATH: install the NVIDIA driver "
                           "utilities, or set gpu.mode to timeslice")
        self.pipe_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Its stderr goes to a file, not a pipe: the daemon it leaves behind may hold the pipe
        # open, and uvloop's communicate() then never returns.
        errors = self.log_dir / "faasd-start.err"
        with errors.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                path, "-d", env=self.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=err,
            )
        code = await process.wait()
        if code != 0:
            said = errors.read_text(errors="replace").strip()
            raise MpsError(f"{self.executable} -d failed (exit {code}): {said}; "
                           f"see {self.log_dir}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while self.pid() is None:
            if loop.time() > deadline:
                raise MpsError(f"{self.executable} wrote no pid file in {self.pipe_dir} within "
                               f"{START_TIMEOUT_S:g} s; see {self.log_dir}/control.log")
            await asyncio.sleep(0.05)
        self.owned = True
        log.info("started the MPS control daemon [%d] (pipe %s, log %s)", self.pid(),
                 self.pipe_dir, self.log_dir)

    async def check(self) -> bool:
        """Restart faasd's own daemon if it died; True if it was restarted."""
        if not self.owned or self.pid() is not None:
            return False
        log.warning("the MPS control daemon died; restarting it (see %s)", self.log_dir)
        self.owned = False
        await self.ensure()
        self.restarts += 1
        return True

    async def stop(self, timeout_s: float = 5.0) -> None:
        """`echo quit | nvidia-cuda-mps-control` for the daemon faasd started (others are
        left alone); SIGKILL if it is still there after `timeout_s`."""
        pid = self.pid()
        if not self.owned or pid is None:
            return
        path = shutil.which(self.executable) or self.executable
        with contextlib.suppress(OSError, TimeoutError):
            process = await asyncio.create_subprocess_exec(
                path, env=self.env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
            if process.stdin is not None:
                process.stdin.write(b"quit\n")
                process.stdin.close()
            await asyncio.wait_for(process.wait(), timeout_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while _alive(pid) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if _alive(pid):
            log.warning("the MPS control daemon [%d] ignored quit; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        self.owned = False
