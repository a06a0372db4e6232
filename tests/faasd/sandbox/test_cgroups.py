"""Finding the daemon's cgroups (pure parsing) and creating real sandbox groups (as root)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from faasd.sandbox.cgroups import (
    Backend,
    Confinement,
    Limits,
    group_dir,
    parse_mounts,
    parse_own_groups,
    pick_cpus,
)

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

HYBRID_CGROUP = """\
4:memory:/docker/abc/session
3:cpuset:/
2:cpu,cpuacct:/user.slice
0::/user.slice/session-1.scope
"""


def test_mounts_and_own_groups_are_parsed_per_controller() -> None:
    mounts = parse_mounts(HYBRID_MOUNTINFO)
    assert mounts["cpu"] == (Path("/sys/fs/cgroup/cpu,cpuacct"), "/")
    assert mounts["memory"] == (Path("/sys/fs/cgroup/memory"), "/docker/abc")
    assert mounts["unified"] == (Path("/sys/fs/cgroup/unified"), "/")
    own = parse_own_groups(HYBRID_CGROUP)
    assert own == {
        "memory": "/docker/abc/session",
        "cpuset": "/",
        "cpu": "/user.slice",
        "unified": "/user.slice/session-1.scope",
    }
    # A mount whose root is our container's group: paths are relative to that root.
    assert group_dir(mounts["memory"], own["memory"]) == Path("/sys/fs/cgroup/memory/session")
    assert group_dir(mounts["cpu"], own["cpu"]) == Path("/sys/fs/cgroup/cpu,cpuacct/user.slice")


@pytest.mark.parametrize(
    ("allowed", "load", "count", "expected"),
    [
        ([0, 1, 2, 3], {}, 2, (0, 1)),
        ([0, 1, 2, 3], {0: 2, 1: 1}, 2, (2, 3)),  # the idle cores first
        ([0, 1], {0: 1, 1: 1}, 1, (0,)),  # a tie goes to the lowest number
        ([0, 1], {}, 4, (0, 1)),  # never more than there are
        ([5], {5: 9}, 1, (5,)),
    ],
)
def test_pick_cpus_spreads_sandboxes(
    allowed: list[int], load: dict[int, int], count: int, expected: tuple[int, ...]
) -> None:
    assert pick_cpus(allowed, load, count) == expected


def test_pick_cpus_breaks_ties_by_the_second_load() -> None:
    # no batch runs anywhere: the core holding fewer sandboxes wins the tie
    assert pick_cpus([0, 1, 2], {}, 1, tiebreak={0: 3, 1: 1, 2: 2}) == (1,)
    # a core running a batch loses, whatever the tie-break says
    assert pick_cpus([0, 1], {1: 1}, 1, tiebreak={0: 5}) == (0,)


@pytest.fixture
def confinement() -> Iterator[Confinement]:
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root (or systemd Delegate=yes)")
    found = Confinement.detect(f"faasd-test-{uuid.uuid4().hex[:8]}")
    if found.backend is Backend.NONE:
        pytest.skip("no writable cgroup hierarchy with cpu, cpuset and memory on this host")
    yield found
    found.close()


def test_real_groups_carry_the_limits_and_are_removed(confinement: Confinement) -> None:
    cpu = min(os.sched_getaffinity(0))
    groups = confinement.create("sbx-1", Limits(vcpu=1, cpus=(cpu,), memory_mb=300))
    assert groups is not None
    try:
        files = {p.name: p for d in groups.dirs for p in d.iterdir()}
        if confinement.backend is Backend.V1:
            assert files["cpu.cfs_quota_us"].read_text().strip() == "100000"
            assert files["cpuset.cpus"].read_text().strip() == str(cpu)
            assert int(files["memory.limit_in_bytes"].read_text()) == 300 * 2**20
        else:
            assert files["cpu.max"].read_text().split() == ["100000", "100000"]
            assert int(files["memory.max"].read_text()) == 300 * 2**20
        assert not groups.oom_killed()
        assert all(Path(f).exists() for f in groups.procs_files)
    finally:
        assert groups.remove()
    assert not any(d.exists() for d in groups.dirs)


def test_a_parent_removed_meanwhile_is_made_again(confinement: Confinement) -> None:
    limits = Limits(vcpu=1, cpus=(min(os.sched_getaffinity(0)),), memory_mb=100)
    first = confinement.create("sbx-a", limits)
    assert first is not None and first.remove()
    confinement.close()  # as another pool with the same parent name would, on its way out
    again = confinement.create("sbx-b", limits)
    assert again is not None
    assert all(d.is_dir() for d in again.dirs)
    assert again.remove()


def test_v2_setup_and_limits_on_a_stand_in_tree(tmp_path: Path) -> None:
    """This host has no writable cgroup v2, so the v2 writes are checked on plain files laid
    out like a delegated subtree (what systemd's Delegate=yes hands a service)."""
    home = tmp_path / "system.slice" / "faasd.service"
    home.mkdir(parents=True)
    (home / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mounts = {"unified": (tmp_path, "/")}
    own = {"unified": "/system.slice/faasd.service"}
    parents = Confinement._setup_v2("faasd", mounts, own)
    assert parents == {"unified": home / "faasd"}
    enabled = "+cpu +cpuset +memory +pids"  # pids where the host has it
    assert (home / "cgroup.subtree_control").read_text() == enabled
    assert (home / "faasd" / "cgroup.subtree_control").read_text() == enabled

    groups = Confinement(Backend.V2, parents).create("sbx", Limits(2, (0, 1), 512))
    assert groups is not None
    group = home / "faasd" / "sbx"
    assert (group / "cpu.max").read_text() == "200000 100000"
    assert (group / "cpuset.cpus").read_text() == "0,1"
    assert (group / "memory.max").read_text() == str(512 * 2**20)
    assert groups.procs_files == (str(group / "cgroup.procs"),)
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert groups.oom_killed()


def test_v2_is_skipped_without_the_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")  # a hybrid host's unified tree
    assert Confinement._setup_v2("faasd", {"unified": (tmp_path, "/")}, {"unified": "/"}) is None
