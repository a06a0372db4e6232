"""Show a forked sandbox's real environment in /proc/PID/environ (and so in `ps e`).

A worker is forked, not exec'd: the kernel's record of its environment is still the fork
server's block, and the variables the worker sets after the fork (its GPU slice's
`CUDA_VISIBLE_DEVICES`, its function's env) live only in libc's `environ`, which is what CUDA
reads but not what an operator sees. `publish()` writes the current environment into a new
block and points the kernel's `env_start`/`env_end` at it with `prctl(PR_SET_MM, PR_SET_MM_MAP)`
(the interface CRIU restores processes with; unprivileged on kernels built with
CONFIG_CHECKPOINT_RESTORE). Where the kernel refuses, nothing changes and False is returned:
the environment the process runs with is the same either way.
"""

from __future__ import annotations

import ctypes
import os

_PR_SET_MM = 35
_PR_SET_MM_MAP = 14
_KEEP_EXE = 0xFFFFFFFF

#: The published block must outlive the call: the kernel reads it whenever /proc is read.
_published: list[ctypes.Array[ctypes.c_char]] = []


class _MmMap(ctypes.Structure):
    """`struct prctl_mm_map` (linux/prctl.h)."""

    _fields_ = [
        *((name, ctypes.c_uint64) for name in (
            "start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
            "start_stack", "arg_start", "arg_end", "env_start", "env_end", "auxv",
        )),
        ("auxv_size", ctypes.c_uint32),
        ("exe_fd", ctypes.c_uint32),
    ]


def _stat_fields() -> list[int]:
    """/proc/self/stat after the command name, as numbers: field n (1-based) is [n - 3]."""
    with open("/proc/self/stat") as f:
        rest = f.read().rpartition(")")[2].split()
    return [int(v) if v.lstrip("-").isdigit() else 0 for v in rest]


def publish() -> bool:
    """Make /proc/self/environ show `os.environ`; False where the kernel does not allow it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        stat = _stat_fields()
        with open("/proc/self/auxv", "rb") as f:
            auxv = f.read()
    except OSError:
        return False
    block = b"".join(f"{k}={v}".encode("utf-8", "surrogateescape") + b"\0"
                     for k, v in os.environ.items())
    env = ctypes.create_string_buffer(block, len(block))
    aux = ctypes.create_string_buffer(auxv, len(auxv))
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_long]

    def field(n: int) -> int:  # proc(5) numbers the fields from 1
        return stat[n - 3]

    mm = _MmMap(
        start_code=field(26), end_code=field(27), start_data=field(45), end_data=field(46),
        start_brk=field(47), brk=libc.sbrk(0) or 0, start_stack=field(28),
        arg_start=field(48), arg_end=field(49),
        env_start=ctypes.addressof(env), env_end=ctypes.addressof(env) + len(block),
        auxv=ctypes.addressof(aux), auxv_size=len(auxv), exe_fd=_KEEP_EXE,
    )
    if libc.prctl(_PR_SET_MM, _PR_SET_MM_MAP, ctypes.byref(mm), ctypes.sizeof(mm), 0) != 0:
        return False
    _published[:] = [env, aux]
    return True
