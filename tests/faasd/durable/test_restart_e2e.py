"""`kill -9` of a real `faasd up` with async calls to functions and workflows queued and
running, then a restart on the same state directory: every accepted call completes, exactly
once; a call cut short whose function, or a stage of whose workflow, says `idempotent: false`
fails with the reason instead of running again."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.faasd.builders import TEXT_HANDLER, expected_y, make_function
from tests.faasd.daemon_process import DaemonProcess, start_daemon
from tests.faasd.workflows.builders import workflow_dir, write_op_model

pytestmark = pytest.mark.slow

CALLS = 8  # to a function, and as many again to a workflow
T = TypeVar("T")


def _workflow(root: Path, name: str, first: str) -> None:
    """`name`: the function `first` (y = x @ W) then incy (z = y + 1)."""
    workflow_dir(root, name, f"""
        slo_ms: 10000
        functions: [{first}, incy]
        edges: [{{from: {first}, to: incy}}]
    """)


def _incy(functions: Path) -> None:
    write_op_model(functions / "incy" / "model.onnx", ["y"], "z", "Add", 1.0, width=3)


def _running_of_both_kinds(state_dir: Path) -> bool:
    kinds = {k for k, s, _ in _kinds(state_dir).values() if s == "running"}
    return kinds == {"function", "workflow"}


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


def _kinds(state_dir: Path) -> dict[str, tuple[str, str, int]]:
    """Every recorded call: id -> (kind, state, attempts)."""
    db = sqlite3.connect(state_dir / "invocations.sqlite")
    try:
        return {i: (k, s, a) for i, k, s, a in
                db.execute("SELECT id, kind, state, attempts FROM invocations")}
    finally:
        db.close()


def _states(state_dir: Path) -> dict[str, tuple[str, int]]:
    return {i: (s, a) for i, (_, s, a) in _kinds(state_dir).items()}


def _dispatched(state_dir: Path) -> set[str]:
    """The calls a run handed to a sandbox (recorded for targets that must not run twice)."""
    db = sqlite3.connect(state_dir / "invocations.sqlite")
    try:
        return {i for (i,) in db.execute(
            "SELECT id FROM invocations WHERE dispatched_s IS NOT NULL")}
    finally:
        db.close()


def _kill_9_after(daemon: DaemonProcess, send: Callable[[], T],
                  ready: Callable[[], bool]) -> T:
    """`send()` to `daemon`, then SIGKILL it as soon as `ready()` holds (within 30 s); what
    `send` returned."""
    try:
        sent = send()
        deadline = time.monotonic() + 30
        while not ready():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.02)
        return sent
    finally:
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)


def _all_done(state_dir: Path) -> bool:
    return all(s in ("succeeded", "failed") for s, _ in _states(state_dir).values())


def test_kill_9_with_calls_in_flight_loses_none(tmp_path: Path) -> None:
    functions, workflows = tmp_path / "functions", tmp_path / "workflows"
    make_function(functions, "texty", "timeout_s: 10\n", TEXT_HANDLER)
    _incy(functions)
    _workflow(workflows, "slow", "texty")
    first = start_daemon(tmp_path, functions, "--workflows", str(workflows))

    def send() -> tuple[list[str], list[str]]:
        ids, workflow_ids = [], []
        for _ in range(CALLS):  # alternately, so that calls of both kinds run at the kill
            ids.append(_post(f"{first.url}/async-function/texty", b"sleep:0.5"))
            workflow_ids.append(_post(f"{first.url}/async-workflow/slow", b"sleep:0.5"))
        return ids, workflow_ids

    ids, workflow_ids = _kill_9_after(first, send,
                                      lambda: _running_of_both_kinds(tmp_path / "state"))
    ids += workflow_ids
    before = _states(tmp_path / "state")
    assert set(before) == set(ids)  # every 202 was on disk
    cut_short = {i for i, (s, _) in before.items() if s == "running"}
    waiting = {i for i, (s, _) in before.items() if s == "queued"}
    assert cut_short & set(workflow_ids) and cut_short - set(workflow_ids)
    assert len(cut_short) + len(waiting) + sum(
        1 for s, _ in before.values() if s == "succeeded") == 2 * CALLS

    (tmp_path / "port").unlink()
    second = start_daemon(tmp_path, functions, "--workflows", str(workflows))
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
        for call_id in workflow_ids:  # the workflow's answer: z = x @ W + 1
            doc = _get(f"{second.url}/system/invocations/{call_id}")
            assert doc["kind"] == "workflow" and doc["workflow"] == "slow"
            assert doc["result"]["z"][0] == pytest.approx(
                [y + 1 for y in expected_y([1, 2, 3, 4])], rel=1e-5)
        assert "taking up" in second.log()
    finally:
        assert second.stop() == 0, second.log()


def test_kill_9_fails_a_non_idempotent_call_it_cut_short(tmp_path: Path) -> None:
    functions, workflows = tmp_path / "functions", tmp_path / "workflows"
    make_function(functions, "once", "timeout_s: 10\nidempotent: false\n", TEXT_HANDLER)
    _incy(functions)
    _workflow(workflows, "onceflow", "once")
    first = start_daemon(tmp_path, functions, "--workflows", str(workflows))
    ids: list[str] = []
    workflow_ids: list[str] = []

    def send() -> None:
        for _ in range(4):
            ids.append(_post(f"{first.url}/async-function/once", b"sleep:0.5"))
            workflow_ids.append(_post(f"{first.url}/async-workflow/onceflow", b"sleep:0.5"))

    def both_kinds_dispatched() -> bool:
        dispatched = _dispatched(tmp_path / "state")
        return bool(dispatched & set(workflow_ids) and dispatched - set(workflow_ids))

    _kill_9_after(first, send, both_kinds_dispatched)
    ids += workflow_ids
    before = _states(tmp_path / "state")
    cut_short = {i for i, (s, _) in before.items() if s == "running"} & _dispatched(
        tmp_path / "state")
    assert cut_short & set(workflow_ids) and cut_short - set(workflow_ids)
    (tmp_path / "port").unlink()
    second = start_daemon(tmp_path, functions, "--workflows", str(workflows))
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
                assert doc["attempts"] == before[call_id][1] + 1  # the refusal, recorded
                if call_id in workflow_ids:
                    assert "workflow 'onceflow' has stage(s) once" in str(doc["error"])
            elif before[call_id][0] != "succeeded":
                assert doc["status"] == "succeeded", doc
    finally:
        assert second.stop() == 0, second.log()


def test_kill_9_runs_a_non_idempotent_call_that_never_reached_a_sandbox(tmp_path: Path) -> None:
    """`once` takes one call at a time, so of the calls the async workers hold, one is in a
    sandbox and the others wait in the scheduler's queue: only the first was cut short."""
    functions = tmp_path / "functions"
    make_function(functions, "once", "timeout_s: 10\nidempotent: false\nmax_instances: 1\n",
                  TEXT_HANDLER)
    first = start_daemon(tmp_path, functions)
    ids = _kill_9_after(
        first, lambda: [_post(f"{first.url}/async-function/once", b"sleep:2") for _ in range(4)],
        lambda: bool(_dispatched(tmp_path / "state")))
    before = _states(tmp_path / "state")
    in_sandbox = _dispatched(tmp_path / "state")
    waiting = {i for i, (s, _) in before.items() if s == "running"} - in_sandbox
    assert len(in_sandbox) == 1 and waiting, before  # the workers held more than one
    (tmp_path / "port").unlink()
    second = start_daemon(tmp_path, functions)
    try:
        deadline = time.monotonic() + 60
        while not _all_done(tmp_path / "state"):
            assert time.monotonic() < deadline, second.log()
            time.sleep(0.05)
        states = {i: str(_get(f"{second.url}/system/invocations/{i}")["status"]) for i in ids}
        assert [states[i] for i in in_sandbox] == ["failed"]
        assert all(s == "succeeded" for i, s in states.items() if i not in in_sandbox), states
    finally:
        assert second.stop() == 0, second.log()
