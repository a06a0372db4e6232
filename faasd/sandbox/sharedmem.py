"""Shared-memory areas through which large tensors cross between the daemon and a sandbox.

Each sandbox has two memfds, created by the daemon and handed to the worker at spawn with its
socketpair: the request area (the daemon writes, the worker reads) and the response area (the
worker writes, the daemon reads). A frame names a tensor placed in an area by (dtype, shape,
offset, size) instead of carrying its bytes (see `faasd.sandbox.framing`), so a 600 KB input
costs one `memcpy` and a small `sendmsg` instead of a large `sendmsg` that the kernel cuts into
skbs, waking the worker for each.

Only one batch is in flight per sandbox, so each area holds one frame's tensors and is
overwritten by the next frame: the writer starts every frame at offset 0. The reader must be
done with a frame's tensors before it lets the next frame come, hence:

- the worker reads inputs as views of the mapping (no copy): a request's tensors never outlive
  the request (the same contract as `channel.Receiver`);
- the daemon copies outputs out of the mapping as it decodes them: results outlive the batch.

An area starts empty (no memory until a large tensor needs it) and grows by `ftruncate`; the
other side maps the larger file when a frame points past its mapping. A superseded mapping is
not closed but dropped, so views still alive keep it valid. Growth stops at `cap_bytes`: a
tensor that does not fit travels in the frame as before.

Memory is charged to the memory cgroup of the process that first touches a page: the response
area to the worker (its outputs count against its limit), the request area to the daemon
(bounded by the cap, and the request body sits in the daemon anyway).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from typing import Any

import numpy as np

#: Tensors at least this large go through shared memory; smaller ones ride in the frame, where
#: one more `memcpy` and a mapping check cost more than the socket copy they would save.
THRESHOLD_BYTES = 64 * 2**10
#: An area is never grown past this share of the sandbox's memory limit ...
CAP_SHARE_OF_MEMORY = 0.25
#: ... nor past this.
MAX_CAP_BYTES = 256 * 2**20
#: After each batch the daemon frees an area's pages past this, so that one large batch does
#: not pin its memory (the request area's in the daemon, the response area's in the sandbox's
#: cgroup) for the rest of the sandbox's life; below it pages stay, sparing page faults.
KEEP_BYTES = 16 * 2**20
_PAGE = mmap.PAGESIZE
_ALIGN = 64


def cap_for_memory(memory_mb: int) -> int:
    """The largest an area may grow for a sandbox limited to `memory_mb`."""
    return min(MAX_CAP_BYTES, int(memory_mb * 2**20 * CAP_SHARE_OF_MEMORY))


def create_fd(name: str) -> int:
    """A new, empty memfd (close-on-exec: only the fork server's SCM_RIGHTS passes it on).

    Sealed against shrinking: a worker that truncated an area under the daemon's mapping would
    make the daemon's next access to it a SIGBUS."""
    fd = os.memfd_create(f"faasd-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    return fd


class SharedArea:
    """One side's mapping of one area. The writer places tensors, the reader views them."""

    def __init__(self, fd: int, cap_bytes: int, threshold_bytes: int = THRESHOLD_BYTES) -> None:
        self.fd = fd
        self.cap_bytes = cap_bytes
        self.threshold_bytes = threshold_bytes
        self.map: mmap.mmap | None = None
        self.cursor = 0

    @property
    def mapped_bytes(self) -> int:
        return len(self.map) if self.map is not None else 0

    # --- writer ------------------------------------------------------------------------------

    def begin_frame(self) -> None:
        """The previous frame has been consumed: its space may be reused."""
        self.cursor = 0

    def place(self, array: np.ndarray[Any, Any]) -> int | None:
        """Copy a C-contiguous `array` into the area; its offset, or None where it should ride
        in the frame (too small to be worth it, or past the cap)."""
        nbytes = array.nbytes
        if nbytes < self.threshold_bytes:
            return None
        offset = self.cursor
        end = offset + nbytes
        if end > self.cap_bytes:
            return None
        if end > self.mapped_bytes and not self._grow(end):
            return None
        assert self.map is not None
        self.map[offset:end] = array.reshape(-1).view(np.uint8).data
        self.cursor = end + (-end % _ALIGN)
        return offset

    def _grow(self, needed: int) -> bool:
        """Make the area at least `needed` bytes; False where memory is short (the tensor then
        rides in the frame, and a real shortage shows there as a MemoryError)."""
        size = min(self.cap_bytes, max(needed, 2 * self.mapped_bytes))
        size += -size % _PAGE
        try:
            if os.fstat(self.fd).st_size < size:
                os.ftruncate(self.fd, size)
            self._remap(size)
        except OSError as exc:
            if exc.errno in (errno.ENOMEM, errno.ENOSPC, errno.EFBIG):
                return False
            raise
        return True

    def trim(self, keep_bytes: int = KEEP_BYTES) -> None:
        """Free the pages past `keep_bytes` (they read as zeros, the file keeps its size).
        Only between frames: neither side may be using them."""
        if self.map is not None and self.mapped_bytes > keep_bytes:
            keep = keep_bytes + -keep_bytes % _PAGE
            self.map.madvise(mmap.MADV_REMOVE, keep, self.mapped_bytes - keep)

    # --- reader ------------------------------------------------------------------------------

    def view(self, dtype: np.dtype[Any], offset: int, nbytes: int) -> np.ndarray[Any, Any]:
        """The flat array of `nbytes` at `offset`, a view of the mapping (valid until the
        writer's next frame). ValueError if the area does not hold that range."""
        end = offset + nbytes
        if end > self.mapped_bytes:
            # never map more than the cap, whatever size the other side set the file to
            size = min(os.fstat(self.fd).st_size, self.cap_bytes + -self.cap_bytes % _PAGE)
            if end > size:
                raise ValueError(f"shared tensor at {offset}+{nbytes} runs past the area ({size})")
            self._remap(size)
        assert self.map is not None
        return np.frombuffer(self.map, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)

    def _remap(self, size: int) -> None:
        # Not close(): numpy views of the old mapping may still be alive; they keep it mapped.
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def close(self) -> None:
        """Drop the mapping and the fd (views still alive keep their pages until they go)."""
        self.map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SharedPair:
    """One side's two areas: where it writes (`out`) and where it reads (`into`).

    `copy_in` says whether decoded tensors are copied out of the mapping (the daemon, whose
    results outlive the batch) or left as views (the worker).
    """

    def __init__(self, out: SharedArea, into: SharedArea, copy_in: bool) -> None:
        self.out = out
        self.into = into
        self.copy_in = copy_in

    def read(self, dtype: np.dtype[Any], offset: int, nbytes: int) -> np.ndarray[Any, Any]:
        flat = self.into.view(dtype, offset, nbytes)
        return flat.copy() if self.copy_in else flat

    def trim(self) -> None:
        self.out.trim()
        self.into.trim()

    def close(self) -> None:
        self.out.close()
        self.into.close()
