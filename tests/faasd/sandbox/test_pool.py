"""The pool with real fork server, real worker processes and (as root) real cgroups."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from esg.model import Config
from faasd.clock import ManualClock
from faasd.errors import DeployError, SandboxCrashed, SandboxTimeout
from faasd.functions.spec import FunctionVersion
from faasd.sandbox import pool as pool_module
from faasd.sandbox.cgroups import Backend
from faasd.sandbox.items import BodyItem, BodyResult, ItemFailure, TensorItem, TensorResult
from faasd.sandbox.pool import SandboxPool

from .conftest import (
    MISCHIEF_HANDLER,
    group_dirs,
    make_version,
    process_exists,
    reference_output,
)

CONFIG = Config(batch=4, vcpu=1)
GOOD_BODY = ",".join(["1"] * 16).encode()


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


async def test_warm_sandbox_is_reused_and_batches_match_onnxruntime(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    version = make_version(function_dir(), max_batch_size=4)
    inputs = [rows(1, 1), rows(3, 2)]
    first = await pool.run(version, CONFIG, [TensorItem({"x": x}) for x in inputs])
    second = await pool.run(version, CONFIG, [TensorItem({"x": inputs[0]})])

    assert first.cold_start and not second.cold_start
    assert first.sandbox_pid == second.sandbox_pid != os.getpid()
    for x, result in zip(inputs, first.results, strict=True):
        assert isinstance(result, TensorResult)
        np.testing.assert_allclose(result.tensors["y"], reference_output(x), rtol=1e-5, atol=1e-5)
    assert first.exec_s > 0
    # the sandbox's shape is its vCPUs and slice: it is warm for every batch size up to 4
    assert pool.warm_counts() == {("tiny", Config(b, 1)): 1 for b in (1, 2, 3, 4)}
    third = await pool.run(version, Config(batch=2, vcpu=1), [TensorItem({"x": inputs[1]})])
    assert not third.cold_start and third.sandbox_pid == first.sandbox_pid
    other = await pool.run(version, Config(batch=2, vcpu=2), [TensorItem({"x": inputs[1]})])
    assert other.cold_start and other.sandbox_pid != first.sandbox_pid
    stats = pool.stats()
    assert (stats.alive, stats.idle, stats.cold_starts) == ({"tiny": 2}, {"tiny": 2}, 2)


async def test_sandbox_is_confined_to_its_cgroups(
    pool: SandboxPool, function_dir: Callable[..., Path], cgroup_parent: str
) -> None:
    if pool.backend is Backend.NONE:
        pytest.skip("no writable cgroups here (needs root): the rlimit fallback is tested apart")
    version = make_version(function_dir(), memory_mb=256, max_pids=40)
    execution = await pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
    lines = Path(f"/proc/{execution.sandbox_pid}/cgroup").read_text().splitlines()
    wanted = {"memory", "cpu", "cpuset"} if pool.backend is Backend.V1 else {""}
    groups = [line.split(":", 2)[2] for line in lines if line.split(":")[1] in wanted]
    assert len(groups) == len(wanted) and all(f"/{cgroup_parent}/tiny-v1-" in g for g in groups)
    pids = [line.split(":", 2)[2] for line in lines if line.split(":")[1] == "pids"]
    if pool.backend is Backend.V1 and Path("/sys/fs/cgroup/pids").is_dir():  # host has it
        assert Path(f"/sys/fs/cgroup/pids{pids[0]}/pids.max").read_text().strip() == "40"
    if Path(f"/proc/{execution.sandbox_pid}").stat().st_uid != 0:  # confined: its uid's too
        limits = Path(f"/proc/{execution.sandbox_pid}/limits").read_text().splitlines()
        (nproc,) = [line.split()[2:4] for line in limits if line.startswith("Max processes")]
        assert nproc == ["40", "40"]
    await pool.retire("tiny")
    assert pool.stats().alive == {}


def _python_fork_server(pid: int) -> int:
    """The fork server itself, below the bubblewrap processes that start it in a box."""
    while Path(f"/proc/{pid}/comm").read_text().strip() == "bwrap":
        (pid,) = map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    return pid


def _own_pid(host_pid: int) -> int:
    """The pid a process sees for itself: in a box (its own PID namespace) not the host's."""
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return host_pid


async def test_handler_bodies_go_through_preprocess_and_postprocess(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    version = make_version(function_dir(handler=MISCHIEF_HANDLER), max_batch_size=4)
    execution = await pool.run(
        version, CONFIG, [BodyItem(GOOD_BODY, "text/plain"), BodyItem(b"1,2", "text/plain")]
    )
    ok, bad = execution.results
    assert isinstance(ok, BodyResult) and ok.content_type == "application/json"
    answer = json.loads(ok.body)
    expected = reference_output(np.ones((1, 16), dtype=np.float32)).sum()
    assert answer["rows"] == 1 and answer["sum"] == pytest.approx(float(expected), rel=1e-5)
    # a confined sandbox is pid 2 of its own PID namespace, below that namespace's init
    assert answer["pid"] == _own_pid(execution.sandbox_pid) == 2
    assert isinstance(bad, ItemFailure) and bad.status == 400  # 2 numbers where 16 are needed


async def test_handler_bug_is_a_502_item_and_the_sandbox_lives_on(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    version = make_version(function_dir(handler=MISCHIEF_HANDLER))
    first = await pool.run(version, Config(1, 1), [BodyItem(b"bug", "text/plain")])
    assert first.results == [ItemFailure(502, "handler raised KeyError: 'oops'")]
    second = await pool.run(version, Config(1, 1), [BodyItem(GOOD_BODY, "text/plain")])
    assert isinstance(second.results[0], BodyResult)
    assert second.sandbox_pid == first.sandbox_pid


async def test_crash_raises_sandbox_crashed_and_the_next_call_works(
    pool: SandboxPool, function_dir: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="faasd.sandbox")
    version = make_version(function_dir(handler=MISCHIEF_HANDLER))
    warm = await pool.run(version, Config(1, 1), [BodyItem(GOOD_BODY, "text/plain")])
    with pytest.raises(SandboxCrashed, match="exited with code 3") as crashed:
        await pool.run(version, Config(1, 1), [BodyItem(b"crash", "text/plain")])
    assert crashed.value.status == 502
    assert str(warm.sandbox_pid) in crashed.value.message
    assert any(
        str(warm.sandbox_pid) in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    )
    after = await pool.run(version, Config(1, 1), [BodyItem(GOOD_BODY, "text/plain")])
    assert after.cold_start and after.sandbox_pid != warm.sandbox_pid
    assert isinstance(after.results[0], BodyResult)
    assert pool.stats().crashes == 1 and pool.stats().alive == {"tiny": 1}


@pytest.mark.slow
async def test_hang_raises_sandbox_timeout_within_the_timeout(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    version = make_version(function_dir(handler=MISCHIEF_HANDLER), timeout_s=1.0)
    warm = await pool.run(version, Config(1, 1), [BodyItem(GOOD_BODY, "text/plain")])
    started = time.monotonic()
    with pytest.raises(SandboxTimeout, match="timeout of 1 s") as timed_out:
        await pool.run(version, Config(1, 1), [BodyItem(b"hang", "text/plain")])
    assert time.monotonic() - started < 1.0 + 2.0  # the timeout plus killing and joining
    assert timed_out.value.status == 504
    assert not process_exists(warm.sandbox_pid)
    after = await pool.run(version, Config(1, 1), [BodyItem(GOOD_BODY, "text/plain")])
    assert after.cold_start and isinstance(after.results[0], BodyResult)
    assert pool.stats().timeouts == 1


async def test_out_of_memory_is_a_crash_that_says_so(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    if pool.backend is Backend.NONE:
        pytest.skip("a memory cgroup is needed to OOM-kill at memory_mb (needs root)")
    version = make_version(function_dir(handler=MISCHIEF_HANDLER), memory_mb=200)
    with pytest.raises(SandboxCrashed, match="out of memory") as crashed:
        await pool.run(version, Config(1, 1), [BodyItem(b"oom:600", "text/plain")])
    assert "200 MB" in crashed.value.message
    after = await pool.run(version, Config(1, 1), [BodyItem(GOOD_BODY, "text/plain")])
    assert isinstance(after.results[0], BodyResult)


async def test_rlimit_fallback_confines_without_cgroups(
    tmp_path: Path, function_dir: Callable[..., Path]
) -> None:
    version = make_version(function_dir(handler=MISCHIEF_HANDLER), memory_mb=100)
    async with SandboxPool(state_dir=tmp_path / "s", confinement="none") as pool:
        assert pool.backend is Backend.NONE
        ok = await pool.run(version, Config(1, 1), [BodyItem(GOOD_BODY, "text/plain")])
        assert len(os.sched_getaffinity(ok.sandbox_pid)) == 1
        with pytest.raises(SandboxCrashed, match="out of memory"):  # past the address-space cap
            await pool.run(version, Config(1, 1), [BodyItem(b"oom:8192", "text/plain")])


async def test_idle_sandboxes_expire_after_keep_alive(
    tmp_path: Path, function_dir: Callable[..., Path], cgroup_parent: str
) -> None:
    clock = ManualClock()
    version = make_version(function_dir(), keep_alive_s=60.0)
    async with SandboxPool(
        state_dir=tmp_path / "s", cgroup_parent=cgroup_parent, clock=clock, reap_interval_s=3600
    ) as pool:
        execution = await pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
        clock.advance(59.0)
        await pool.reap()
        assert pool.warm_counts() == {("tiny", Config(1, 1)): 1}
        clock.advance(2.0)
        await pool.reap()
        assert pool.warm_counts() == {} and pool.stats().alive == {}
        assert not process_exists(execution.sandbox_pid)
        again = await pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
        assert again.cold_start


async def test_reaping_spares_a_sandbox_a_call_took_while_it_stopped_another(
    tmp_path: Path, function_dir: Callable[..., Path], cgroup_parent: str
) -> None:
    """reap() stops expired sandboxes one after another; a call may take one of the later ones
    while an earlier one stops. That one is no longer idle and must be left to its call."""
    clock = ManualClock()
    slow = MISCHIEF_HANDLER.replace(
        'if text == "bug":', 'if text == "slow":\n        time.sleep(0.5)\n    if text == "bug":'
    )
    version = make_version(function_dir(handler=slow), keep_alive_s=60.0, max_instances=2)
    async with SandboxPool(
        state_dir=tmp_path / "s", cgroup_parent=cgroup_parent, clock=clock, reap_interval_s=3600
    ) as pool:
        await pool.prewarm(version, Config(1, 1), 2)
        clock.advance(61.0)
        reaping = asyncio.create_task(pool.reap())
        await asyncio.sleep(0)  # reap() is stopping the first expired sandbox
        execution = await pool.run(version, Config(1, 1), [BodyItem(b"slow", "text/plain")])
        await reaping
        assert isinstance(execution.results[0], ItemFailure)  # "slow" is not 16 numbers: a 400
        assert execution.results[0].status == 400 and not execution.cold_start
        assert pool.stats().alive == {"tiny": 1}


async def test_min_instances_are_kept_past_keep_alive(
    tmp_path: Path, function_dir: Callable[..., Path], cgroup_parent: str
) -> None:
    clock = ManualClock()
    version = make_version(function_dir(), keep_alive_s=1.0, min_instances=1)
    async with SandboxPool(
        state_dir=tmp_path / "s", cgroup_parent=cgroup_parent, clock=clock, reap_interval_s=3600
    ) as pool:
        await pool.prewarm(version, Config(1, 1), 1)
        clock.advance(10.0)
        await pool.reap()
        assert pool.warm_counts() == {("tiny", Config(1, 1)): 1}
        execution = await pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
        assert not execution.cold_start


async def test_retire_stops_old_versions_and_keeps_the_new_one(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    directory = function_dir()
    old, new = make_version(directory, 1), make_version(directory, 2)
    old_run = await pool.run(old, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
    new_run = await pool.run(new, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
    await pool.retire("tiny", through_version=1)
    assert not process_exists(old_run.sandbox_pid)
    assert process_exists(new_run.sandbox_pid)
    assert pool.stats().alive == {"tiny": 1}
    await pool.retire("tiny")
    assert pool.stats().alive == {}


async def test_retiring_an_old_version_spares_every_later_one(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    """v1's retirement waits for v1's calls to end, so it may come after v3 was deployed:
    it must stop v1 only (it once stopped everything but v2, v3's sandbox mid-call included)."""
    directory = function_dir()
    runs = [
        await pool.run(make_version(directory, n), Config(1, 1), [TensorItem({"x": rows(1, 0)})])
        for n in (1, 2, 3)
    ]
    await pool.retire("tiny", through_version=1)
    assert [process_exists(run.sandbox_pid) for run in runs] == [False, True, True]
    assert pool.stats().alive == {"tiny": 2}


async def test_a_call_that_takes_an_idle_sandbox_as_it_is_retired_is_not_lost(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    """retire() takes idle sandboxes off the books before it awaits anything: a call in the
    same turn of the loop cannot be handed one that is about to stop."""
    old = make_version(function_dir(), 1)
    first = await pool.run(old, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
    retiring = asyncio.create_task(pool.retire("tiny", through_version=1))
    await asyncio.sleep(0)  # retire() runs up to its first await, then this call comes
    execution = await pool.run(old, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
    await retiring
    assert isinstance(execution.results[0], TensorResult)
    assert execution.cold_start and execution.sandbox_pid != first.sandbox_pid
    assert not process_exists(first.sandbox_pid)


async def test_a_stop_cut_short_by_cancellation_still_cleans_up(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    """A retirement cancelled while it stops a sandbox (the daemon shutting down) must not
    leave its process, cgroups or files behind: the stop goes on as the pool's own task."""
    version = make_version(function_dir())
    execution = await pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
    confined = pool.backend is not Backend.NONE
    dirs = list(group_dirs(execution.sandbox_pid, pool.backend).values()) if confined else []
    assert all(d.is_dir() for d in dirs) and (dirs or not confined)
    retiring = asyncio.create_task(pool.retire("tiny"))
    await asyncio.sleep(0)  # retire() took it off the books and is stopping it
    retiring.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await retiring
    for _ in range(200):
        if not process_exists(execution.sandbox_pid) and not any(d.exists() for d in dirs):
            break
        await asyncio.sleep(0.02)
    assert not process_exists(execution.sandbox_pid)
    assert [d for d in dirs if d.exists()] == []


async def test_two_pools_in_one_process_name_their_sandboxes_apart(
    tmp_path: Path, function_dir: Callable[..., Path], cgroup_parent: str
) -> None:
    """Pools of one process share the parent group: a group one of them left behind must not
    be the name of the next one's sandbox (it was: pid and counter alone, 'File exists')."""
    version = make_version(function_dir())
    names = []
    for n in range(2):
        async with SandboxPool(state_dir=tmp_path / f"s{n}", cgroup_parent=cgroup_parent) as pool:
            if pool.backend is Backend.NONE:
                pytest.skip("no writable cgroups here (needs root)")
            execution = await pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
            names.append({d.name for d in group_dirs(execution.sandbox_pid, pool.backend).values()})
    assert names[0] and names[1] and names[0].isdisjoint(names[1])


async def test_busy_sandbox_of_a_retired_version_stops_when_it_finishes(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    slow = MISCHIEF_HANDLER.replace(
        'if text == "bug":', 'if text == "slow":\n        time.sleep(0.5)\n    if text == "bug":'
    )
    version = make_version(function_dir(handler=slow))
    call = asyncio.create_task(pool.run(version, Config(1, 1), [BodyItem(b"slow", "text/plain")]))
    while not pool.stats().alive:
        await asyncio.sleep(0.01)
    await pool.retire("tiny")
    execution = await call  # the call in flight is not lost
    assert isinstance(execution.results[0], ItemFailure)  # "slow" is not 16 numbers: a 400
    for _ in range(100):
        if not process_exists(execution.sandbox_pid):
            break
        await asyncio.sleep(0.02)
    assert not process_exists(execution.sandbox_pid)


async def test_per_function_cap_makes_calls_share_a_sandbox(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    version = make_version(function_dir(), max_instances=1)
    calls = [pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, i)})]) for i in range(4)]
    executions = await asyncio.gather(*calls)
    assert {e.sandbox_pid for e in executions} == {executions[0].sandbox_pid}
    assert sum(e.cold_start for e in executions) == 1
    # A call of another shape (vCPUs) evicts the idle one instead of exceeding the cap.
    other = await pool.run(version, Config(1, 2), [TensorItem({"x": rows(1, 0)})])
    assert other.cold_start and pool.stats().alive == {"tiny": 1}


async def test_worker_output_reaches_the_log_with_function_and_pid_while_it_runs(
    pool: SandboxPool, function_dir: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="faasd.sandbox")
    version = make_version(function_dir(handler=MISCHIEF_HANDLER))
    execution = await pool.run(version, Config(1, 1), [BodyItem(b"shout", "text/plain")])
    lines: list[str] = []
    for _ in range(100):  # the sandbox stays alive: its output arrives line by line
        lines = [
            r.getMessage() for r in caplog.records if "hello from the handler" in r.getMessage()
        ]
        if lines:
            break
        await asyncio.sleep(0.02)
    assert lines and f"tiny v1 [{execution.sandbox_pid}]" in lines[0]
    assert process_exists(execution.sandbox_pid)


async def test_pool_survives_the_fork_server_dying(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    version = make_version(function_dir())
    first = await pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
    (fork_server,) = pool.fork_server_pids
    os.kill(fork_server, signal.SIGKILL)
    for _ in range(200):  # its workers die with it (parent-death signal)
        if not process_exists(first.sandbox_pid):
            break
        await asyncio.sleep(0.01)
    after = await pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
    assert after.cold_start and after.sandbox_pid != first.sandbox_pid
    assert fork_server not in pool.fork_server_pids


async def test_inspect_reports_model_info(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    info = await pool.inspect(
        make_version(function_dir(handler=MISCHIEF_HANDLER), max_batch_size=8)
    )
    assert info.batched and info.has_preprocess and info.has_postprocess
    assert [(s.name, s.datatype, s.shape) for s in info.inputs] == [("x", "FP32", (-1, 16))]
    assert pool.stats().alive == {}  # the throwaway sandbox is gone


async def test_inspect_names_a_corrupt_model(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    directory = function_dir()
    (directory / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(DeployError, match="cannot be loaded by onnxruntime") as failed:
        await pool.inspect(make_version(directory))
    assert failed.value.file == "model.onnx"


async def test_inspect_names_a_handler_that_fails_to_import(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    directory = function_dir(handler="import numpy\nimport no_such_module_here\n")
    with pytest.raises(DeployError, match="no_such_module_here") as failed:
        await pool.inspect(make_version(directory))
    assert failed.value.file == "handler.py"
    assert "line 2" in failed.value.message


async def test_inspect_refuses_a_batch_size_the_model_cannot_take(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    directory = function_dir(batch_dim=1)
    with pytest.raises(DeployError, match="max_batch_size is 4") as failed:
        await pool.inspect(make_version(directory, max_batch_size=4))
    assert failed.value.file == "faasd.yaml"
    assert "[1, 16]" in failed.value.message
    info = await pool.inspect(make_version(directory, max_batch_size=1))
    assert not info.batched


async def test_closing_the_pool_stops_every_sandbox_and_cleans_up(
    tmp_path: Path, function_dir: Callable[..., Path], cgroup_parent: str
) -> None:
    version = make_version(function_dir())
    async with SandboxPool(state_dir=tmp_path / "s", cgroup_parent=cgroup_parent) as pool:
        runs = await asyncio.gather(
            *(pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, i)})]) for i in range(2))
        )
        (fork_server,) = pool.fork_server_pids
        backend = pool.backend
    assert not process_exists(fork_server)
    assert not any(process_exists(r.sandbox_pid) for r in runs)
    assert not any((tmp_path / "s" / "sandboxes").iterdir())
    if backend is Backend.V1:
        assert not Path(f"/sys/fs/cgroup/cpu/{cgroup_parent}").exists()


async def test_a_call_cancelled_during_its_cold_start_leaves_no_sandbox(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    slow_import = "import time\ntime.sleep(0.5)\n"  # the handler's import keeps it loading
    version = make_version(function_dir(handler=slow_import))
    call = asyncio.create_task(pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})]))
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    fork_server = _python_fork_server(*pool.fork_server_pids)
    children = Path(f"/proc/{fork_server}/task/{fork_server}/children")
    for _ in range(100):
        if not children.read_text().split():
            break
        await asyncio.sleep(0.02)
    assert children.read_text().split() == []
    assert pool.stats().alive == {}


async def test_pool_cap_evicts_another_functions_idle_sandbox(
    tmp_path: Path, function_dir: Callable[..., Path], cgroup_parent: str
) -> None:
    one, two = make_version(function_dir("one")), make_version(function_dir("two"))
    async with SandboxPool(
        state_dir=tmp_path / "s", cgroup_parent=cgroup_parent, max_sandboxes=1
    ) as pool:
        first = await pool.run(one, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
        second = await pool.run(two, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
        assert second.cold_start
        assert pool.stats().alive == {"two": 1}
        assert not process_exists(first.sandbox_pid)


async def test_a_sandbox_retired_while_it_was_starting_stops_after_its_call(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    version = make_version(function_dir(handler="import time\ntime.sleep(0.3)\n"))
    call = asyncio.create_task(pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})]))
    await asyncio.sleep(0.1)  # the sandbox is loading: not yet in the pool's books
    await pool.retire("tiny", through_version=1)
    execution = await call
    assert execution.cold_start and isinstance(execution.results[0], TensorResult)
    for _ in range(100):
        if not process_exists(execution.sandbox_pid):
            break
        await asyncio.sleep(0.02)
    assert not process_exists(execution.sandbox_pid)
    assert pool.warm_counts() == {}


async def test_a_bad_item_in_a_pooled_batch_fails_alone(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    version = make_version(function_dir(), max_batch_size=4)
    good = rows(2, 1)
    execution = await pool.run(
        version, CONFIG, [TensorItem({"x": good}), TensorItem({"x": rows(1, 2)[:, :5]})]
    )
    ok, bad = execution.results
    assert isinstance(ok, TensorResult)
    np.testing.assert_allclose(ok.tensors["y"], reference_output(good), rtol=1e-5, atol=1e-5)
    assert isinstance(bad, ItemFailure) and bad.status == 400 and "x" in bad.message


async def test_idle_sandboxes_are_pinged_and_a_silent_one_is_killed(
    tmp_path: Path,
    function_dir: Callable[..., Path],
    cgroup_parent: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "PING_TIMEOUT_S", 1.0)
    clock = ManualClock()
    version = make_version(function_dir(), keep_alive_s=600.0)
    async with SandboxPool(
        state_dir=tmp_path / "s", cgroup_parent=cgroup_parent, clock=clock, reap_interval_s=3600
    ) as pool:
        first = await pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
        clock.advance(pool_module.PING_INTERVAL_S + 1)
        await pool.reap()  # answers its ping: kept
        again = await pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
        assert again.sandbox_pid == first.sandbox_pid and not again.cold_start
        os.kill(first.sandbox_pid, signal.SIGSTOP)  # frozen: it can no longer answer
        clock.advance(pool_module.PING_INTERVAL_S + 1)
        await pool.reap()
        assert pool.stats().alive == {}
        assert not process_exists(first.sandbox_pid)


async def test_batch_error_names_config_pbtxt_when_it_set_the_batch(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    directory = function_dir(batch_dim=1)
    (directory / "config.pbtxt").write_text('name: "tiny"\nmax_batch_size: 8\n')
    with pytest.raises(DeployError) as failed:
        await pool.inspect(make_version(directory, max_batch_size=8))
    assert failed.value.file == "config.pbtxt"
    assert "Set max_batch_size to 1 in config.pbtxt" in failed.value.message


async def test_a_gpu_share_without_cuda_runs_on_cpu_and_says_so(
    pool: SandboxPool, function_dir: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host has CUDA: the CPU fallback is not taken")
    caplog.set_level(logging.INFO, logger="faasd.sandbox")
    version = make_version(function_dir(), vgpu=1)
    execution = await pool.run(version, Config(1, 1, vgpu=1), [TensorItem({"x": rows(1, 0)})])
    assert isinstance(execution.results[0], TensorResult)
    await pool.retire("tiny")  # its stderr is drained into the log as it stops
    assert any("no CUDA here" in r.getMessage() for r in caplog.records)


WHERE_HANDLER = """
import os
import time

import numpy as np


def preprocess(body, content_type):
    time.sleep(float(body.decode()))
    return {"x": np.ones((1, 16), dtype=np.float32)}


def postprocess(outputs):
    return {"cpus": sorted(os.sched_getaffinity(0))}
"""


async def test_a_batch_runs_on_cores_no_other_running_batch_holds(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    """Sandboxes get their cores when they start, but run whenever they are dispatched: two
    warm sandboxes started on one core and dispatched together must not share it while
    another core idles (the scheduler counts each its own vCPU)."""
    if pool.backend is Backend.NONE:
        pytest.skip("moving a sandbox between cores needs writable cgroups (root)")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    one = Config(1, 1)
    a, b, c = (make_version(function_dir(name, handler=WHERE_HANDLER)) for name in "abc")
    for version in (a, b, c):  # one idle sandbox each: a and c start on the same core
        await pool.prewarm(version, one, 1)

    async def where(version: FunctionVersion) -> set[int]:
        execution = await pool.run(version, one, [BodyItem(b"0.5", "text/plain")])
        result = execution.results[0]
        assert isinstance(result, BodyResult) and not execution.cold_start
        return set(json.loads(result.body)["cpus"])

    first, second = await asyncio.gather(where(a), where(c))
    assert len(first) == len(second) == 1 and not first & second
