"""The pure part of a worker's confinement: which mounts below /tmp it binds again on top of
its own /tmp (the rest runs in `test_confinement_e2e`)."""

from __future__ import annotations

from faasd.sandbox.identity import mounts_below

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
