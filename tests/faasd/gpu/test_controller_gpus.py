"""The controller with a node's GPU slices: the snapshot, the limits, the dispatch checks."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from esg.errors import PolicyError
from esg.model import Config, Profile
from esg.policies import make_policy
from esg.policy import Action, Dispatch, Event, GpuView, Snapshot
from faasd.clock import SystemClock
from faasd.controller import BatchOutcome, Controller
from faasd.errors import FaasdError, GpuUnavailable
from faasd.functions.spec import FunctionSettings, FunctionVersion
from faasd.gateway import CallResult, Invocation
from faasd.gpu.service import GpuService
from faasd.gpu.settings import GpuSettings
from faasd.sandbox.items import TensorItem, TensorResult


def version(vgpu: int) -> FunctionVersion:
    return FunctionVersion("f", 1, Path("/nonexistent"), Path("/nonexistent/model.onnx"),
                           FunctionSettings(vgpu=vgpu), batched=True)


def call(n: int, v: FunctionVersion) -> Invocation:
    now = SystemClock().now()
    return Invocation(str(n), v.name, v, TensorItem({"x": np.zeros((1, 1))}), now, float("inf"))


class Record:
    def __init__(self) -> None:
        self.configs: list[Config] = []

    async def execute(self, config: Config, invocations: list[Invocation],
                      now_s: float) -> BatchOutcome:
        self.configs.append(config)
        results: list[CallResult | FaasdError] = [
            CallResult(TensorResult({"y": np.zeros(1)}), False, 0.0, 0.0, 1) for _ in invocations
        ]
        return BatchOutcome(results, 0.0, False, True)


async def gpus(fake: str) -> GpuService:
    service = GpuService(GpuSettings(fake=fake, health_interval_s=3600))
    await service.start()
    return service


def controller(executor: Record, gpu_source: GpuService, policy: str = "fcfs") -> Controller:
    return Controller(policy=make_policy(policy), executor=executor, clock=SystemClock(),
                      vcpu_capacity=2, gpus=gpu_source)


async def test_the_snapshot_carries_each_gpu_and_a_gpu_function_runs_at_its_share() -> None:
    service = await gpus("h100-80gb-mig-mixed")
    try:
        record = Record()
        c = controller(record, service)
        assert c.snapshot().nodes[0].gpus == (GpuView(0, 7, 7, "mig"),)
        await asyncio.wait_for(c.submit(call(1, version(vgpu=2))), 5)
        assert record.configs == [Config(batch=1, vcpu=1, vgpu=2)]
        assert service.table.acquire("x", 3) is not None  # the table's holders show up
        assert c.snapshot().nodes[0].gpus == (GpuView(0, 4, 7, "mig"),)
    finally:
        await service.stop()


async def test_a_size_the_node_has_no_slice_of_is_refused_at_once() -> None:
    service = await gpus("a100-40gb-mig")
    try:
        c = controller(Record(), service)
        with pytest.raises(GpuUnavailable, match="slices of: 1") as refused:
            c.submit(call(1, version(vgpu=2)))
        assert refused.value.extra["code"] == "gpu_unavailable" and not refused.value.busy
    finally:
        await service.stop()


async def test_no_gpu_units_run_a_gpu_function_on_the_cpu() -> None:
    service = await gpus("no-gpu")
    record = Record()
    c = controller(record, service)
    await asyncio.wait_for(c.submit(call(1, version(vgpu=1))), 5)
    assert record.configs == [Config(batch=1, vcpu=1, vgpu=0)]


class NamesGpu9:
    name: ClassVar[str] = "bad"

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        jobs = [j for q in snapshot.queues.values() for j in q]
        if not jobs:
            return []
        job = jobs[0]
        return [Dispatch(job.app, job.function, (job.id,), Config(1, 1, 1), "local", gpu=9)]


async def test_a_dispatch_to_a_gpu_the_node_lacks_is_a_policy_bug() -> None:
    service = await gpus("a100-40gb-mig")
    try:
        c = Controller(policy=NamesGpu9(), executor=Record(), clock=SystemClock(),  # type: ignore[arg-type]
                       vcpu_capacity=2, gpus=service)
        with pytest.raises(PolicyError, match="names GPU 9"):
            c.submit(call(1, version(vgpu=1)))
    finally:
        await service.stop()


class Profiles:
    def __init__(self, table: dict[str, dict[Config, float]]) -> None:
        self.table = table

    def profiles(self) -> dict[str, Profile]:
        return {f: Profile(f, t, version=1) for f, t in self.table.items()}

    def cold_starts_ms(self) -> Mapping[str, float]:
        return {}


async def test_the_policy_sees_only_configurations_a_slice_can_run() -> None:
    service = await gpus("h100-80gb-mig-mixed")  # slices of 3, 2 and 1 units
    try:
        source = Profiles({
            "cpu": {Config(1, 1): 5.0},
            "mixed": {Config(1, 1): 9.0, Config(1, 1, 2): 3.0, Config(1, 1, 4): 1.0},
            "big": {Config(1, 1, 7): 1.0},
        })
        c = Controller(policy=make_policy("fcfs"), executor=Record(), clock=SystemClock(),
                       vcpu_capacity=2, gpus=service, profiles=source)
        seen = c.snapshot().profiles
        assert set(seen) == {"cpu", "mixed"}  # "big" can run nowhere here: left to FCFS
        assert seen["cpu"].version == 1
        assert dict(seen["mixed"].latency_ms) == {Config(1, 1): 9.0, Config(1, 1, 2): 3.0}
        assert seen["mixed"].version != 1  # a trimmed table is a table of its own
        service.table.withdraw(0)  # the GPU is lost: only the CPU configurations are left
        assert dict(c.snapshot().profiles["mixed"].latency_ms) == {Config(1, 1): 9.0}
    finally:
        await service.stop()
