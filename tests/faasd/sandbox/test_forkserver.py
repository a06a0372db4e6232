"""The fork server's fork keeps the parent's objects out of the child's garbage collector."""

from __future__ import annotations

import gc
import os

from faasd.sandbox.forkserver import fork_sharing_memory


def test_a_forked_child_collects_without_touching_what_it_inherited() -> None:
    inherited = [object() for _ in range(1000)]  # tracked objects alive at the fork
    read, write = os.pipe()
    pid = fork_sharing_memory()
    if pid == 0:  # the child: report what its collector sees, then leave at once
        try:
            frozen = gc.get_freeze_count()
            gc.collect()
            os.write(write, f"{frozen} {gc.is_tracked(inherited)}".encode())
        finally:
            os._exit(0)
    try:
        os.close(write)
        frozen, tracked = os.read(read, 100).decode().split()
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(read)
        gc.unfreeze()  # give this test process its collector back as it was
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(frozen) >= len(inherited)
    assert tracked == "True"  # still an ordinary object, only moved out of the collections
