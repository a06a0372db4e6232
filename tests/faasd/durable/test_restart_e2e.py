"""`kill -9` of a real `faasd up` with async calls queued and running, then a restart on the
same state directory: every accepted call completes, exactly once."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path

import pytest

from tests.faasd.builders import TEXT_HANDLER, make_function
from tests.faasd.daemon_process import DaemonProcess, start_daemon

pytestmark = pytest.mark.slow

CALLS = 8


def _post(url: str, body: bytes) -> str:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 202
        return str(resp.headers["X-Call-Id"])


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        doc: dict[str, object] = json.loads(resp.read())
        return doc


def _states(state_dir: Path) -> dict[str, tuple[str, int]]:
    db = sqlite3.connect(state_dir / "invocations.sqlite")
    try:
        return {i: (s, a) for i, s, a in db.execute("SELECT id, state, attempts FROM invocations")}
    finally:
        db.close()


def test_kill_9_with_calls_in_flight_loses_none(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "texty", "timeout_s: 10\n", TEXT_HANDLER)
    first: DaemonProcess = start_daemon(tmp_path, functions)
    try:
        ids = [_post(f"{first.url}/async-function/texty", b"sleep:0.5") for _ in range(CALLS)]
        deadline = time.monotonic() + 30
        while not any(s == "running" for s, _ in _states(tmp_path / "state").values()):
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.02)
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
    before = _states(tmp_path / "state")
    assert set(before) == set(ids)  # every 202 was on disk
    cut_short = {i for i, (s, _) in before.items() if s == "running"}
    waiting = {i for i, (s, _) in before.items() if s == "queued"}
    assert cut_short and len(cut_short) + len(waiting) + sum(
        1 for s, _ in before.values() if s == "succeeded") == CALLS

    (tmp_path / "port").unlink()
    second = start_daemon(tmp_path, functions)
    try:
        deadline = time.monotonic() + 60
        while True:
            after = _states(tmp_path / "state")
            if all(s in ("succeeded", "failed") for s, _ in after.values()):
                break
            assert time.monotonic() < deadline, second.log()
            time.sleep(0.05)
        assert {i: s for i, (s, _) in after.items()} == dict.fromkeys(ids, "succeeded")
        for call_id in cut_short:  # run again after the kill: a second attempt
            assert after[call_id][1] == before[call_id][1] + 1
        for call_id in waiting:  # never started before the kill: run once
            assert after[call_id][1] == 1
        doc = _get(f"{second.url}/system/invocations/{ids[0]}")
        assert doc["status"] == "succeeded" and isinstance(doc["result"], dict)
        assert "taking up" in second.log()
    finally:
        assert second.stop() == 0, second.log()


def test_kill_9_fails_a_non_idempotent_call_it_cut_short(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "once", "timeout_s: 10\nidempotent: false\n", TEXT_HANDLER)
    first = start_daemon(tmp_path, functions)
    try:
        ids = [_post(f"{first.url}/async-function/once", b"sleep:0.5") for _ in range(4)]
        deadline = time.monotonic() + 30
        while not any(s == "running" for s, _ in _states(tmp_path / "state").values()):
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.02)
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
    before = _states(tmp_path / "state")
    cut_short = {i for i, (s, _) in before.items() if s == "running"}
    (tmp_path / "port").unlink()
    second = start_daemon(tmp_path, functions)
    try:
        deadline = time.monotonic() + 60
        while not all(s in ("succeeded", "failed") for s, _ in
                      _states(tmp_path / "state").values()):
            assert time.monotonic() < deadline, second.log()
            time.sleep(0.05)
        for call_id in ids:
            doc = _get(f"{second.url}/system/invocations/{call_id}")
            if call_id in cut_short:
                assert doc["status"] == "failed" and doc["status_code"] == 502
                assert "not idempotent" in str(doc["error"])
            elif before[call_id][0] != "succeeded":
                assert doc["status"] == "succeeded", doc
    finally:
        assert second.stop() == 0, second.log()
