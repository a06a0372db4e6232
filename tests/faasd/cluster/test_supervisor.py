"""The engine supervisor with a real child process, and its restart backoff (pure)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from faasd.cluster.errors import EngineFailed, EngineMissing
from faasd.cluster.supervisor import Backoff, Supervisor, find_engine

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.mark.parametrize(("previous", "uptime", "delay"), [
    (None, 0.0, 0.2),   # the first restart
    (0.2, 1.0, 0.4),    # died again soon: double
    (3.2, 1.0, 5.0),    # capped
    (5.0, 10.0, 0.2),   # ran 10 s (stable) before dying: start over
])
def test_backoff(previous: float | None, uptime: float, delay: float) -> None:
    assert Backoff().next_delay(previous, uptime) == delay


@pytest.mark.parametrize(("engine", "package"), [("serf", "serf"), ("etcd", "etcd-server")])
def test_a_missing_engine_names_its_debian_package(
        engine: str, package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EngineMissing, match=f"apt-get install {package}$"):
        find_engine(engine)


async def test_a_killed_child_is_restarted_and_stop_ends_it(tmp_path: Path) -> None:
    sup = Supervisor("sleeper", SLEEPER, tmp_path / "sleeper.log", ready=_no_wait,
                     backoff=Backoff(initial_s=0.05))
    await sup.start()
    first = sup.pid
    assert first is not None and sup.running
    os.kill(first, signal.SIGKILL)
    for _ in range(200):
        if sup.restarts == 1:
            break
        await asyncio.sleep(0.02)
    assert sup.restarts == 1 and sup.pid != first and sup.running
    second = sup.pid
    await sup.stop(grace_s=5)
    assert not sup.running
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)  # type: ignore[arg-type]


async def test_a_child_that_exits_before_ready_names_its_log(tmp_path: Path) -> None:
    sup = Supervisor("quitter", [sys.executable, "-c", "raise SystemExit(3)"],
                     tmp_path / "quitter.log", ready=_never)
    with pytest.raises(EngineFailed, match=r"exited with code 3; its log is .*quitter.log"):
        await sup.start(ready_timeout_s=10)


async def test_a_failed_readiness_check_of_a_dying_child_reports_its_exit(
        tmp_path: Path) -> None:
    # A serf agent whose port is taken exits, but its readiness check may first reach the
    # agent that holds the port (and fail its auth): the exit and the log say what happened.
    dying = [sys.executable, "-c",
             "import time; time.sleep(0.3); print('bind: address already in use'); "
             "raise SystemExit(1)"]

    async def refused() -> None:
        raise ConnectionError("Invalid authentication token")

    sup = Supervisor("dier", dying, tmp_path / "dier.log", ready=refused)
    with pytest.raises(EngineFailed, match=r"exited with code 1 \(bind: address already "
                                           r"in use\); its log is .*dier.log"):
        await sup.start(ready_timeout_s=10)


async def test_a_failed_readiness_check_of_a_live_child_is_raised(tmp_path: Path) -> None:
    async def refused() -> None:
        raise ConnectionError("Invalid authentication token")

    sup = Supervisor("sleeper", SLEEPER, tmp_path / "sleeper.log", ready=refused)
    try:
        with pytest.raises(ConnectionError, match="Invalid authentication token"):
            await sup.start(ready_timeout_s=10)
    finally:
        await sup.stop(grace_s=5)


async def test_a_child_dies_with_its_parent(tmp_path: Path) -> None:
    # faasd killed with SIGKILL must not leave its engines running (PR_SET_PDEATHSIG): a
    # parent process starts a supervised child, prints its pid and is killed.
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from faasd.cluster.supervisor import Supervisor\n"
        "async def ok(): pass\n"
        "async def main():\n"
        f"    s = Supervisor('x', {SLEEPER!r}, Path({str(tmp_path / 'x.log')!r}), ready=ok)\n"
        "    await s.start()\n"
        "    print(s.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", code,
                                                  stdout=asyncio.subprocess.PIPE)
    assert parent.stdout is not None
    child = int(await asyncio.wait_for(parent.stdout.readline(), 30))
    parent.kill()
    await parent.wait()
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.02)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the supervised child outlived its killed parent")


async def _no_wait() -> None:
    return None


async def _never() -> None:
    await asyncio.sleep(3600)
