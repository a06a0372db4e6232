"""`AsyncCalls` on a real record with a scripted `execute`: what it does with 503s and with a
keyed call while the daemon stops."""

from __future__ import annotations

from pathlib import Path

import pytest

from faasd.clock import SystemClock
from faasd.durable.runner import AsyncCalls, Limits, OnDispatch, Outcome
from faasd.durable.store import Call, CallStore, Kind, State
from faasd.errors import Unavailable


def _calls(tmp_path: Path, answers: list[int], **limits: float) -> tuple[AsyncCalls, list[int]]:
    """Calls whose runs answer `answers` in turn (then 200); the statuses given, in order."""
    given: list[int] = []

    async def execute(call: Call, on_dispatch: OnDispatch | None) -> Outcome:
        status = answers.pop(0) if answers else 200
        given.append(status)
        return Outcome(status, "application/json", b'{"error": "no leader"}'
                       if status >= 400 else b"{}")

    return AsyncCalls(CallStore(tmp_path), execute, SystemClock(),
                      Limits(busy_retry_s=0.01, **limits)), given  # type: ignore[arg-type]


async def _run_one(calls: AsyncCalls) -> Call:
    await calls.start()
    try:
        call, _ = await calls.accept(Kind.FUNCTION, "f", b"{}", "application/json", None, None,
                                     None)
        return await calls.wait(call.id)
    finally:
        await calls.stop()


async def test_a_503_is_tried_again(tmp_path: Path) -> None:
    """No leader for a moment, say: the call waits, without using a run."""
    calls, given = _calls(tmp_path, [503, 503], unavailable_retry_s=1.0)
    done = await _run_one(calls)
    assert (done.state, done.status_code, done.attempts) == (State.SUCCEEDED, 200, 1)
    assert given == [503, 503, 200]


async def test_a_503_for_longer_than_the_retry_time_is_the_answer(tmp_path: Path) -> None:
    calls, given = _calls(tmp_path, [503] * 100, unavailable_retry_s=0.05)
    done = await _run_one(calls)
    assert (done.state, done.status_code) == (State.FAILED, 503)
    assert 5 <= len(given) <= 8  # 0.05 s of 0.01 s waits


async def test_a_keyed_call_while_stopping_is_503_and_stays_recorded(tmp_path: Path) -> None:
    calls, given = _calls(tmp_path, [])
    await calls.start()
    calls.stop_taking()
    call, _ = await calls.accept(Kind.FUNCTION, "f", b"{}", "application/json", None, None,
                                 "key", queued=False)
    with pytest.raises(Unavailable, match="same Idempotency-Key"):
        calls.run_now(call.id)
    await calls.stop()
    assert given == []
    assert [c.id for c in CallStore(tmp_path).open_calls()] == [call.id]
