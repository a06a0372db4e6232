"""glibc's allocator thresholds: set once by `faasd up`, never against the user's own."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import resource

import pytest

from faasd import malloc


def test_the_users_own_settings_win() -> None:
    assert malloc.user_tuned({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert malloc.user_tuned({"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert malloc.user_tuned({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert not malloc.user_tuned({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"})
    assert not malloc.user_tuned({})
    assert malloc.tune({"MALLOC_TRIM_THRESHOLD_": "0"}) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tuned_large_blocks_are_reused_without_page_faults() -> None:
    """After `tune`, a call's worth of 600 KB blocks (a squeezenet body, its chunks, its copy),
    allocated, touched and freed again and again, takes no fresh pages from the kernel.
    Untuned glibc hands the free heap top back each round: about 420 faults a round here."""
    assert malloc.tune({}) is True
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 600 * 1024

    def churn(rounds: int) -> None:
        for _ in range(rounds):
            blocks = [libc.malloc(size) for _ in range(3)]
            for block in blocks:
                ctypes.memset(block, 1, size)  # touch every page, as a copy into it would
            for block in blocks:
                libc.free(block)

    churn(3)  # the heap grows to hold one round
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn(50)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 50, f"{faults} page faults in 50 rounds: the heap is handed back each time"
