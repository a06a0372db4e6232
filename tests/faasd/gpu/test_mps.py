"""The MPS control daemon's supervision, against a stand-in `nvidia-cuda-mps-control` on PATH.

The stand-in behaves as the real one does at its interface: `-d` daemonises (the command
returns at once, a background process keeps running) and writes its pid file into
`CUDA_MPS_PIPE_DIRECTORY`; `quit` on stdin stops it. It also logs into
`CUDA_MPS_LOG_DIRECTORY/control.log`, so a test can see which directories it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from faasd.gpu.mps import PID_FILE, MpsControl, MpsError, _alive

STAND_IN = """\
#!/bin/sh
pipe="$CUDA_MPS_PIPE_DIRECTORY"
if [ "$1" = "-d" ]; then
  echo "start pipe=$pipe" >> "$CUDA_MPS_LOG_DIRECTORY/control.log"
  sleep 600 </dev/null >/dev/null 2>&1 &
  echo $! > "$pipe/nvidia-cuda-mps-control.pid"
  exit 0
fi
read cmd
echo "$cmd" >> "$CUDA_MPS_LOG_DIRECTORY/control.log"
if [ "$cmd" = "quit" ]; then kill "$(cat "$pipe/nvidia-cuda-mps-control.pid")"; fi
"""


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-cuda-mps-control"
    exe.write_text(textwrap.dedent(STAND_IN))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield tmp_path
    for pid_file in tmp_path.rglob(PID_FILE):  # never leave a stand-in behind
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


async def test_starts_restarts_and_stops_its_own_daemon(stand_in: Path) -> None:
    control = MpsControl(stand_in / "mps" / "pipe", stand_in / "mps" / "log")
    await control.ensure()
    first = control.pid()
    assert first is not None and control.owned
    log = (stand_in / "mps" / "log" / "control.log").read_text()
    assert f"start pipe={stand_in / 'mps' / 'pipe'}" in log
    assert not await control.check()  # alive: nothing to do
    os.kill(first, signal.SIGKILL)
    while _alive(first):
        await asyncio.sleep(0.01)
    assert await control.check()
    second = control.pid()
    assert second is not None and second != first and control.restarts == 1
    await control.stop()
    assert not _alive(second) and not control.owned
    assert "quit" in (stand_in / "mps" / "log" / "control.log").read_text()


async def test_uses_a_running_daemon_and_leaves_it_running(stand_in: Path) -> None:
    ours = MpsControl(stand_in / "pipe", stand_in / "log")
    await ours.ensure()
    theirs = MpsControl(stand_in / "pipe", stand_in / "log")
    await theirs.ensure()
    assert not theirs.owned and theirs.pid() == ours.pid()
    await theirs.stop()
    assert ours.pid() is not None
    await ours.stop()


async def test_a_missing_executable_names_the_fix(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MpsError, match=r"not on PATH.*gpu\.mode to timeslice"):
        await MpsControl(tmp_path / "pipe", tmp_path / "log").ensure()
