"""glibc's allocator, told to keep the memory of large request bodies for the next call.

By default glibc serves a block of 128 KB or more with its own `mmap`, or, once it has raised
that threshold, from the top of the heap, which it hands back to the kernel as soon as more
than twice the threshold lies free there. A daemon that reads a 600 KB tensor per call (into
aiohttp's chunks, then one joined body) therefore gets fresh pages from the kernel on every
call and faults each of them in: measured on 2 cores, about 240 page faults and 0.4 ms of CPU
a call for a 600 KB POST to aiohttp, against none and about 0.13 ms with the thresholds below
(`docs/benchmarks.md`, the warm overhead's reading).

`tune` raises both thresholds with `mallopt`: blocks below `MMAP_THRESHOLD_BYTES` come from
the heap, and up to `TRIM_THRESHOLD_BYTES` of free heap is kept for reuse instead of being
returned. The cost is that much resident memory at most after a burst of large calls; the
idle daemon does not grow. Only the daemon does this: sandboxes run under a memory limit,
where memory kept back from the kernel would count against the function.

Settings a user made with glibc's own variables (`MALLOC_TRIM_THRESHOLD_`,
`MALLOC_MMAP_THRESHOLD_`, or `GLIBC_TUNABLES`) win; on a C library other than glibc nothing
happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from collections.abc import Mapping

logger = logging.getLogger("faasd.malloc")

#: mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks below this come from the heap (glibc's own ceiling for its dynamic threshold).
MMAP_THRESHOLD_BYTES = 32 * 2**20
#: Free heap kept for reuse: a few dozen concurrent 600 KB calls' worth of buffers.
TRIM_THRESHOLD_BYTES = 64 * 2**20

USER_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def user_tuned(environ: Mapping[str, str]) -> bool:
    """Whether the environment already sets glibc's malloc thresholds."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return any(name in environ for name in USER_VARIABLES) or (
        "glibc.malloc.trim_threshold" in tunables or "glibc.malloc.mmap_threshold" in tunables
    )


def tune(environ: Mapping[str, str] = os.environ) -> bool:
    """Raise glibc's trim and mmap thresholds in this process; True if it did."""
    if user_tuned(environ):
        return False  # the user tuned the allocator: leave it as they asked
    if platform.libc_ver()[0] != "glibc":
        return False  # musl's mallopt is a stub; other C libraries tune themselves
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False  # no C library to load, or one without mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not done:
        logger.warning("mallopt refused the thresholds: large bodies will fault in fresh pages")
    return done
