"""The daemon's GPUs: discovery at start, the slice table, MPS supervision, health checks.

The thin shell around `discover` and `SliceTable`. `async with GpuService(settings, state_dir)`
loads NVML (or the fake named in the settings), reads the inventory once, logs one line about
what it found (or why there is nothing: no library, no GPU, mode off), starts the MPS control
daemon where MPS GPUs need one, and watches every `health_interval_s` that each GPU still
answers NVML: a GPU that stops answering (GpuIsLost, or any NVML error) is withdrawn — its
units leave the views and the sandboxes bound to it are killed (`on_lost`), so the pool
replaces them like any crashed sandbox. A dead MPS daemon faasd started is restarted and the
sandboxes of its GPUs are killed too: an MPS server failure is reported to all its clients.

Sandboxes bind through `bind` (called by the spawner before the fork) and `release` (when the
sandbox's process has exited).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from esg.policy import GpuView
from faasd.errors import GpuUnavailable
from faasd.gpu import binding
from faasd.gpu.discovery import Inventory, describe_error, discover
from faasd.gpu.mps import MpsControl, MpsError
from faasd.gpu.nvml import NvmlUnavailable, load
from faasd.gpu.settings import GpuSettings
from faasd.gpu.slices import Slice, SliceTable, resolve_modes

log = logging.getLogger("faasd.gpu")


@dataclass(frozen=True)
class Binding:
    """What the spawner hands a sandbox bound to `slice`: its environment, onnxruntime's CUDA
    options, the `X-Faasd-Device` label, and whether the slice is a fake one (then the sandbox
    runs on the CPU provider, bound exactly as on real hardware)."""

    slice: Slice
    env: dict[str, str]
    cuda_options: dict[str, Any]
    label: str
    fake: bool


@dataclass
class _Holder:
    function: str
    pid: int | None = None


@dataclass
class GpuService:
    settings: GpuSettings = field(default_factory=GpuSettings)
    state_dir: Path = Path("state")
    #: an NVML binding to use instead of loading one (tests inject a fake machine object)
    nvml: Any = None

    def __post_init__(self) -> None:
        self.inventory = Inventory()
        self.table = SliceTable(())
        self.fake = bool(self.settings.fake) or self.nvml is not None
        self.mps: MpsControl | None = None
        self._holders: dict[str, _Holder] = {}
        self._on_lost: list[Callable[[list[str]], None]] = []
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GpuService:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Discover and build the table. ValueError for an unknown fake machine name."""
        if self.settings.mode == "off":
            log.info("GPUs off (gpu.mode: off): this node offers 0 GPU units")
            return
        if self.nvml is None:
            try:
                self.nvml = load(self.settings.fake)
            except NvmlUnavailable as exc:
                log.info("no GPU: %s; this node offers 0 GPU units", exc)
                return
        self.inventory = discover(self.nvml)
        for problem in self.inventory.problems:
            log.info("GPU discovery: %s", problem)
        slots, skipped = resolve_modes(self.inventory, self.settings.mode)
        for line in skipped:
            log.warning("%s", line)
        if any(g.mode == "mps" for g in slots):
            slots = await self._start_mps(slots)
        self.table = SliceTable(slots)
        log.info("%s", self.summary())
        if slots:
            self._watcher = asyncio.create_task(self._watch(), name="gpu-health")

    async def _start_mps(self, slots: list[Any]) -> list[Any]:
        root = self.state_dir / "mps"
        self.mps = MpsControl(self.settings.mps_pipe_dir or root / "pipe",
                              self.settings.mps_log_dir or root / "log")
        if self.inventory.mps_server:  # the fake machine says one runs: nothing to start
            return slots
        try:
            await self.mps.ensure()
        except MpsError as exc:
            log.error("MPS GPUs left unused: %s", exc)
            return [g for g in slots if g.mode != "mps"]
        return slots

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self.mps is not None:
            await self.mps.stop()
        if self.nvml is not None and self.inventory.driver is not None:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()

    def summary(self) -> str:
        gpus = self.table.gpus
        if not gpus:
            return "no usable GPU: this node offers 0 GPU units"
        fake = f" (fake NVML machine {self.settings.fake or 'injected'})" if self.fake else ""
        parts = []
        for g in gpus:
            if g.mode == "mig":
                cut = " + ".join(i.profile for i in g.instances)
                parts.append(f"GPU {g.index} {g.name} mig [{cut}]")
            else:
                parts.append(f"GPU {g.index} {g.name} {g.mode}")
        units = sum(g.total_units for g in gpus)
        return f"{'; '.join(parts)}: {units} GPU units{fake}"

    # --- binding sandboxes -------------------------------------------------------------------

    def bind(self, owner: str, function: str, units: int, memory_mb: int = 0) -> Binding:
        """A slice of `units` (with `memory_mb` of device memory; 0: the slice's own) for
        sandbox `owner`, with what the sandbox needs to use it. GpuUnavailable(busy=True) if
        every such slice is held now; GpuUnavailable if this node has none at all."""
        sizes = self.table.sizes()
        if units not in sizes:
            have = ", ".join(map(str, sorted(sizes))) or "none"
            raise GpuUnavailable(
                f"{function} asks for a GPU slice of {units} unit(s) but this node offers "
                f"slices of: {have}; set resources.vgpu in its faasd.yaml to one of them"
            )
        if not self.table.can_ever(units, memory_mb):
            raise GpuUnavailable(
                f"{function} asks for {memory_mb} MB of device memory, more than any GPU slice "
                f"of {units} unit(s) on this node has; lower resources.gpu_memory_mb or raise "
                "resources.vgpu in its faasd.yaml"
            )
        found = self.table.acquire(owner, units, memory_mb=memory_mb)
        if found is None:
            shares = any(g.mode != "mig" for g in self.table.gpus)
            raise GpuUnavailable(
                f"every GPU slice of {units} unit(s) is in use; retry shortly", busy=True,
                freed_by=frozenset(range(1, 8)) if shares else frozenset({units}),
            )
        self._holders[owner] = _Holder(function)
        pipe = self.mps.pipe_dir if self.mps is not None and found.mode == "mps" else None
        return Binding(
            slice=found,
            env=binding.sandbox_env(found, pipe),
            cuda_options=binding.cuda_options(found, self.settings),
            label=binding.device_label(found, self.fake),
            fake=self.fake,
        )

    def started(self, owner: str, pid: int) -> None:
        """`owner`'s process is `pid` (known at its fork, then again once it has loaded)."""
        holder = self._holders.get(owner)
        if holder is not None:
            holder.pid = pid

    def release(self, owner: str) -> None:
        """The sandbox's process is gone: its slice is free again."""
        self._holders.pop(owner, None)
        self.table.release(owner)

    def bound(self) -> list[tuple[str, str, int | None, Slice]]:
        """(sandbox id, function, pid, slice) of every sandbox holding a slice."""
        held = self.table.held()
        return [(o, h.function, h.pid, held[o]) for o, h in self._holders.items() if o in held]

    def on_lost(self, callback: Callable[[list[str]], None]) -> None:
        """Call `callback(owners)` when sandboxes must stop because their GPU failed."""
        self._on_lost.append(callback)

    # --- views -------------------------------------------------------------------------------

    def views(self) -> tuple[GpuView, ...]:
        return self.table.views()

    def sizes(self) -> frozenset[int]:
        return self.table.sizes()

    def describe(self) -> list[dict[str, Any]]:
        return self.table.describe()

    def memory_used(self) -> dict[str, int]:
        """Device memory (bytes) NVML sees each bound function's sandboxes use, summed."""
        used: dict[str, int] = {}
        if self.nvml is None:
            return used
        by_pid = {h.pid: h.function for h in self._holders.values() if h.pid is not None}
        devices = {s.device_uuid for s in self.table.held().values()}
        for device in sorted(devices):
            try:
                handle = self.nvml.nvmlDeviceGetHandleByUUID(device)
                processes = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except self.nvml.NVMLError:
                continue
            for process in processes:
                function = by_pid.get(int(process.pid))
                if function is not None:
                    used[function] = used.get(function, 0) + int(process.usedGpuMemory or 0)
        return used

    # --- health ------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            try:
                await self.check()
            except Exception:
                log.exception("checking the GPUs failed")

    async def check(self) -> list[str]:
        """One health round (see the module docstring); the owners told to stop."""
        doomed: list[str] = []
        for gpu in self.table.gpus:
            if not gpu.healthy:
                continue
            try:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(gpu.index)
                self.nvml.nvmlDeviceGetMemoryInfo(handle)
            except self.nvml.NVMLError as exc:
                log.error("GPU %d (%s) failed: %s; its %d units are withdrawn and its "
                          "sandboxes stopped", gpu.index, gpu.uuid, describe_error(exc),
                          gpu.total_units)
                doomed += self.table.withdraw(gpu.index)
        if self.mps is not None and await self.mps.check():
            doomed += [o for o, s in self.table.held().items() if s.mode == "mps"]
        if doomed:
            for callback in self._on_lost:
                callback(doomed)
        return doomed
