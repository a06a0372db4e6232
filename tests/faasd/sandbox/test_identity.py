"""A worker's identity: which mounts below /tmp it binds again on top of its own /tmp, and
which uid it gets, apart from every other daemon's sandboxes (the rest of its confinement
runs in `test_confinement_e2e`)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from esg.model import Config
from faasd.sandbox import bubblewrap
from faasd.sandbox.identity import RANGES, SLOTS, UID_BASE, daemon_range, mounts_below, uid_for
from faasd.sandbox.items import BodyItem
from faasd.sandbox.pool import SandboxPool

from .conftest import MISCHIEF_HANDLER, make_version

MOUNTINFO = """\
100 90 0:40 / / rw,nosuid - tmpfs tmpfs rw
101 100 0:41 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw,size=1024k
102 101 8:1 /work/venv /tmp/ci/venv ro,nosuid - ext4 /dev/sda1 rw
103 102 8:1 /work/venv/lib /tmp/ci/venv/lib ro,nosuid - ext4 /dev/sda1 rw
104 101 0:30 /fn/1 /tmp/state/functions/my\\040fn/1 ro - tmpfs tmpfs rw
105 100 8:1 /usr /usr ro - ext4 /dev/sda1 rw
106 100 8:1 /tmpfoo /tmpfoo ro - ext4 /dev/sda1 rw
"""


def test_only_the_top_mounts_strictly_below_tmp_with_their_escapes_undone() -> None:
    assert mounts_below(MOUNTINFO, "/tmp") == ["/tmp/ci/venv", "/tmp/state/functions/my fn/1"]


def test_nothing_below_is_nothing_to_keep() -> None:
    assert mounts_below(MOUNTINFO, "/srv") == []
    assert mounts_below("", "/tmp") == []


def test_the_uid_range_follows_the_state_directory_not_the_pid(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert daemon_range(one) != daemon_range(two)  # equal with odds of 1 in 8.4 million
    # another process (another pid) on the same directory: the same range
    code = f"from faasd.sandbox.identity import daemon_range; print(daemon_range({str(one)!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=60)
    assert int(other.stdout) == daemon_range(one)


@pytest.mark.slow
@pytest.mark.skipif(bubblewrap.probe() is not None, reason="this host cannot make namespaces")
async def test_two_daemons_with_one_pid_give_their_sandboxes_different_uids(
        tmp_path: Path, function_dir: Callable[..., Path]) -> None:
    """Two pools in this one process stand for two daemons in PID namespaces of their own,
    where both may have the same pid: their sandboxes' uids differ all the same."""
    version = make_version(function_dir(handler=MISCHIEF_HANDLER))
    body = BodyItem(",".join(["1"] * 16).encode(), "text/plain")
    uids = []
    for name in ("one", "two"):
        async with SandboxPool(state_dir=tmp_path / name / "state",
                               cgroup_parent=f"faasd-test-{uuid.uuid4().hex[:8]}",
                               namespaces="on") as pool:
            execution = await pool.run(version, Config(1, 1), [body])
            uids.append(Path(f"/proc/{execution.sandbox_pid}/status").stat().st_uid)
    assert uids[0] != uids[1]
    assert uids == [uid_for(daemon_range(tmp_path / name / "state"), 0) for name in ("one", "two")]


@pytest.mark.parametrize(
    ("daemon", "slot", "uid"),
    [
        (0, 0, UID_BASE),
        (1, 5, UID_BASE + SLOTS + 5),
        (RANGES - 1, SLOTS - 1, 2_147_483_455),  # the last: still below 2**31
    ],
)
def test_uids_stay_in_their_range_below_2_31(daemon: int, slot: int, uid: int) -> None:
    assert uid_for(daemon, slot) == uid < 2**31


@pytest.mark.parametrize(("daemon", "slot"), [(0, SLOTS), (0, -1), (RANGES, 0), (-1, 0)])
def test_a_uid_outside_the_ranges_is_refused(daemon: int, slot: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        uid_for(daemon, slot)
