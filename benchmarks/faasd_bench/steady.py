"""The steady series: a lone client's back-to-back calls against back-to-back in-process runs.

Rounds of one block of `block` in-process runs followed by one block of each call series, in
an order that rotates from round to round so that each series follows the in-process block
equally often. Within a block each series runs back to back, as a lone client's calls do;
alternating blocks keeps the machine's drift out of the differences, and no series runs right
after another's work, whose cache footprint it would pay for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


def steady_rounds(
    run_inproc: Callable[[], object],
    calls: Sequence[Callable[[], float]],
    total: int,
    block: int,
) -> tuple[list[float], list[list[float]]]:
    """Seconds of each in-process run, and of each call of each series (what its callable
    returns), `total` of each (rounded down to whole blocks, at least one block)."""
    inproc: list[float] = []
    series: list[list[float]] = [[] for _ in calls]
    order = list(zip(calls, series, strict=True))
    for round_ in range(max(1, total // block)):
        for _ in range(block):
            started = time.perf_counter()
            run_inproc()
            inproc.append(time.perf_counter() - started)
        turn = round_ % len(order)
        for call, times in order[turn:] + order[:turn]:
            for _ in range(block):
                times.append(call())
    return inproc, series
