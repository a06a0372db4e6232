"""A fake NVML: the subset of `pynvml` faasd calls, answering like a real driver would.

Selected by name (`gpu: {fake: NAME}` in faasd.yaml, or `FAASD_GPU_FAKE=NAME`) and injected
where faasd would import `pynvml` (`faasd.gpu.nvml.load`); the discovery code then runs
unchanged against it. It re-exports nothing of its own for errors: every failure raises
`pynvml.NVMLError(code)`, which `pynvml` turns into the same subclass (`NVMLError_NotFound`,
`NVMLError_GpuIsLost`, ...) the real library raises, and structures are `pynvml`'s own ctypes
structs. So `nvidia-ml-py` (pure Python, no driver needed) must be installed.

The machines (`MACHINES`) follow the MIG profile and placement tables of NVIDIA's go-nvml mock
and the MIG user guide (reference: the A100-40GB and H100-80GB rows; memory sizes are the
mock's `MemorySizeMB`). Placements are in memory slices (8 per GPU), as on real hardware.
UUIDs are deterministic (uuid5 of the machine's name and the slot), lower case, 8-4-4-4-12.
MIG devices are listed at the indices of their GPU instance ids minus one, leaving holes where
no instance exists, as `nvmlDeviceGetMigDeviceHandleByIndex` does (NotFound at a hole).

What is reconstructed, not copied from a driver: the order MIG devices are enumerated in, and
the fake's own process table (`attach`), which a real driver fills from the CUDA contexts.
"""

from __future__ import annotations

import ctypes
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pynvml

_NAMESPACE = uuid.UUID("5f4c3a2e-8b61-4d0e-9a57-6e1b0c2d9f10")


@dataclass(frozen=True)
class MigProfile:
    """A GPU instance profile: compute slices, memory slices, memory, SMs."""

    name: str
    units: int
    memory_slices: int
    memory_mb: int
    sms: int


@dataclass(frozen=True)
class GpuModel:
    name: str
    memory_mb: int
    sms: int
    profiles: tuple[MigProfile, ...]

    def profile(self, name: str) -> MigProfile:
        for profile in self.profiles:
            if profile.name == name:
                return profile
        raise ValueError(f"{self.name} has no MIG profile {name!r}")


A100_40GB = GpuModel(
    "NVIDIA A100-SXM4-40GB", 40960, 108,
    (
        MigProfile("1g.5gb", 1, 1, 4864, 14),
        MigProfile("1g.10gb", 1, 2, 9856, 14),
        MigProfile("2g.10gb", 2, 2, 9856, 28),
        MigProfile("3g.20gb", 3, 4, 19968, 42),
        MigProfile("4g.20gb", 4, 4, 19968, 56),
        MigProfile("7g.40gb", 7, 8, 40192, 98),
    ),
)
H100_80GB = GpuModel(
    "NVIDIA H100 80GB HBM3", 81559, 132,
    (
        MigProfile("1g.10gb", 1, 1, 10240, 16),
        MigProfile("1g.20gb", 1, 2, 20480, 16),
        MigProfile("2g.20gb", 2, 2, 20480, 32),
        MigProfile("3g.40gb", 3, 4, 40960, 48),
        MigProfile("4g.40gb", 4, 4, 40960, 64),
        MigProfile("7g.80gb", 7, 8, 81920, 112),
    ),
)

#: Valid memory-slice starts per profile size, shared by A100 and H100 (MIG user guide).
_STARTS = {1: range(7), 2: (0, 2, 4, 6), 4: (0, 4), 8: (0,)}
#: 4g profiles use 4 memory slices but may only start at 0 (the placement table).
_STARTS_4G = (0,)


def valid_start(profile: MigProfile, start: int) -> bool:
    """Whether `profile` may be placed at memory slice `start` (the go-nvml placement table)."""
    starts = _STARTS_4G if profile.units == 4 else _STARTS[profile.memory_slices]
    return start in starts


@dataclass
class _Gpu:
    index: int
    model: GpuModel
    uuid: str
    mig: bool
    mig_pending: bool = False
    instances: list[_Mig] = field(default_factory=list)
    lost: bool = False


@dataclass
class _Mig:
    parent: _Gpu
    gi_id: int
    profile: MigProfile
    start: int
    uuid: str


@dataclass
class _Process:
    pid: int
    used_bytes: int
    gi_id: int
    ci_id: int


def _uuid(prefix: str, *parts: object) -> str:
    return f"{prefix}-{uuid.uuid5(_NAMESPACE, '/'.join(map(str, parts)))}"


def _check_layout(model: GpuModel, layout: Sequence[tuple[str, int]]) -> None:
    used: set[int] = set()
    units = 0
    for name, start in layout:
        profile = model.profile(name)
        if not valid_start(profile, start):
            raise ValueError(f"{name} cannot start at memory slice {start} on {model.name}")
        span = set(range(start, start + profile.memory_slices))
        if span & used:
            raise ValueError(f"{name}@{start} overlaps another instance")
        used |= span
        units += profile.units
    if units > 7:
        raise ValueError(f"the layout uses {units} compute slices; a GPU has 7")


class FakeNvml:
    """Drop-in for the `pynvml` module: `nvmlInit`, `nvmlDeviceGet*`, MIG enumeration.

    Handles are the fake's own objects (a real handle is an opaque pointer too). Failure
    switches: `library_missing` (nvmlInit raises LibraryNotFound, as on a machine without the
    driver), `lose(index)` (every call on that GPU raises GpuIsLost from then on).
    `mps_server` tells discovery that an MPS control daemon is (fakely) running. `gi_ids`
    gives each GPU's instances their GPU instance ids (default 1, 2, ...); ids with gaps leave
    holes in the MIG device indices, as instances destroyed and made again do.
    """

    def __init__(
        self,
        name: str,
        gpus: Sequence[tuple[GpuModel, Sequence[tuple[str, int]] | None]],
        *,
        library_missing: bool = False,
        mps_server: bool = False,
        gi_ids: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.name = name
        self.library_missing = library_missing
        self.mps_server = mps_server
        self._initialised = 0
        self._gpus: list[_Gpu] = []
        self._processes: dict[str, list[_Process]] = {}
        for index, (model, layout) in enumerate(gpus):
            gpu = _Gpu(index, model, _uuid("GPU", name, index), mig=layout is not None)
            if layout is not None:
                _check_layout(model, layout)
                ids = gi_ids[index] if gi_ids is not None else range(1, len(layout) + 1)
                for gi_id, (profile_name, start) in zip(ids, layout, strict=True):
                    mig_uuid = _uuid("MIG", name, index, gi_id)
                    gpu.instances.append(
                        _Mig(gpu, gi_id, model.profile(profile_name), start, mig_uuid)
                    )
            self._gpus.append(gpu)

    def __getattr__(self, name: str) -> Any:
        """`pynvml`'s own error classes and constants (`NVMLError_NotFound`, `NVML_ERROR_*`,
        `NVML_DEVICE_MIG_ENABLE`), so `except nvml.NVMLError_NotFound` means the same."""
        if name.startswith(("NVML", "nvmlErrorString")):
            return getattr(pynvml, name)
        raise AttributeError(f"the fake NVML does not implement {name}")

    # --- switches a test turns ---------------------------------------------------------------

    def lose(self, index: int) -> None:
        """The GPU falls off the bus: every later call on it raises GpuIsLost."""
        self._gpus[index].lost = True

    def attach(self, pid: int, device_uuid: str, used_bytes: int) -> None:
        """Record a process using `used_bytes` on a GPU or MIG device (what CUDA would do)."""
        for gpu in self._gpus:
            for mig in gpu.instances:
                if mig.uuid == device_uuid:
                    self._processes.setdefault(gpu.uuid, []).append(
                        _Process(pid, used_bytes, mig.gi_id, 0)
                    )
                    return
            if gpu.uuid == device_uuid:
                self._processes.setdefault(gpu.uuid, []).append(
                    _Process(pid, used_bytes, 0xFFFFFFFF, 0xFFFFFFFF)
                )
                return
        raise ValueError(f"no device {device_uuid}")

    # --- library --------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        if self.library_missing:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        self._initialised += 1

    def nvmlShutdown(self) -> None:
        self._ready()
        self._initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._ready()
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._ready()
        return 12040

    def _ready(self) -> None:
        if self._initialised <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: Any) -> _Gpu:
        self._ready()
        gpu = handle.parent if isinstance(handle, _Mig) else handle
        if not isinstance(gpu, _Gpu):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if gpu.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    # --- devices --------------------------------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:
        self._ready()
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Gpu:
        self._ready()
        if not 0 <= index < len(self._gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(self._gpus[index])

    def nvmlDeviceGetHandleByUUID(self, device_uuid: str) -> _Gpu | _Mig:
        self._ready()
        for gpu in self._gpus:
            if gpu.uuid == device_uuid:
                return self._gpu(gpu)
            for mig in gpu.instances:
                if mig.uuid == device_uuid:
                    self._gpu(mig)
                    return mig
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetName(self, handle: _Gpu | _Mig) -> str:
        gpu = self._gpu(handle)
        if isinstance(handle, _Mig):
            return f"{gpu.model.name} MIG {handle.profile.name}"
        return gpu.model.name

    def nvmlDeviceGetUUID(self, handle: _Gpu | _Mig) -> str:
        self._gpu(handle)
        return handle.uuid

    def nvmlDeviceGetIndex(self, handle: _Gpu) -> int:
        return self._gpu(handle).index

    def nvmlDeviceGetMemoryInfo(self, handle: _Gpu | _Mig) -> Any:
        gpu = self._gpu(handle)
        if isinstance(handle, _Mig):
            total = handle.profile.memory_mb * 2**20
            used = sum(p.used_bytes for p in self._processes.get(gpu.uuid, [])
                       if p.gi_id == handle.gi_id)
        else:
            total = gpu.model.memory_mb * 2**20
            used = sum(p.used_bytes for p in self._processes.get(gpu.uuid, []))
        return pynvml.c_nvmlMemory_t(total=total, free=total - used, used=used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Gpu | _Mig) -> list[Any]:
        gpu = self._gpu(handle)
        found = []
        for process in self._processes.get(gpu.uuid, []):
            if isinstance(handle, _Mig) and process.gi_id != handle.gi_id:
                continue
            info = pynvml.c_nvmlProcessInfo_v3_t(
                pid=process.pid, usedGpuMemory=process.used_bytes,
                gpuInstanceId=process.gi_id, computeInstanceId=process.ci_id,
            )
            found.append(info)
        return found

    # --- MIG --------------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle: _Gpu) -> list[int]:
        gpu = self._gpu(handle)
        current = pynvml.NVML_DEVICE_MIG_ENABLE if gpu.mig else pynvml.NVML_DEVICE_MIG_DISABLE
        pending = current
        if gpu.mig_pending:
            pending = 1 - current
        return [current, pending]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Gpu) -> int:
        gpu = self._gpu(handle)
        return 7 if gpu.mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Gpu, index: int) -> _Mig:
        gpu = self._gpu(handle)
        if not gpu.mig or not 0 <= index < 7:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        for mig in gpu.instances:
            if mig.gi_id - 1 == index:
                return mig
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceIsMigDeviceHandle(self, handle: _Gpu | _Mig) -> ctypes.c_uint:
        self._gpu(handle)
        return ctypes.c_uint(1 if isinstance(handle, _Mig) else 0)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: _Mig) -> _Gpu:
        if not isinstance(handle, _Mig):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(handle)

    def nvmlDeviceGetGpuInstanceId(self, handle: _Mig) -> int:
        self._gpu(handle)
        if not isinstance(handle, _Mig):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle.gi_id

    def nvmlDeviceGetComputeInstanceId(self, handle: _Mig) -> int:
        self._gpu(handle)
        if not isinstance(handle, _Mig):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return 0

    def nvmlDeviceGetAttributes(self, handle: _Gpu | _Mig) -> Any:
        gpu = self._gpu(handle)
        if not isinstance(handle, _Mig):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        profile = handle.profile
        del gpu
        return pynvml.c_nvmlDeviceAttributes(
            multiprocessorCount=profile.sms,
            gpuInstanceSliceCount=profile.units,
            computeInstanceSliceCount=profile.units,
            memorySizeMB=profile.memory_mb,
        )


def _a100_mig() -> FakeNvml:
    return FakeNvml("a100-40gb-mig", [(A100_40GB, [("1g.5gb", s) for s in range(7)])])


def _h100_mixed() -> FakeNvml:
    # 2g@0 + 1g@2 + 1g@3 + 3g@4: the "balanced" layout (mig-parted), in a valid order. The
    # instances are listed 3g first, as an admin creating the largest first would have them.
    # Their GPU instance ids have gaps (2 and 4 were destroyed), so MIG device indices 1 and 3
    # are holes: discovery must skip them, not stop there.
    layout = [("3g.40gb", 4), ("2g.20gb", 0), ("1g.10gb", 2), ("1g.10gb", 3)]
    return FakeNvml("h100-80gb-mig-mixed", [(H100_80GB, layout)], gi_ids=[[1, 3, 5, 6]])


def _a100_mps() -> FakeNvml:
    return FakeNvml("a100-40gb-mps", [(A100_40GB, None)], mps_server=True)


def _a100_plain() -> FakeNvml:
    """MIG off and no MPS server running: `auto` time-slices it; `mps` starts a daemon."""
    return FakeNvml("a100-40gb", [(A100_40GB, None)])


def _no_library() -> FakeNvml:
    return FakeNvml("no-nvml", [], library_missing=True)


def _no_gpu() -> FakeNvml:
    return FakeNvml("no-gpu", [])


MACHINES = {
    "a100-40gb-mig": _a100_mig,
    "h100-80gb-mig-mixed": _h100_mixed,
    "a100-40gb-mps": _a100_mps,
    "a100-40gb": _a100_plain,
    "no-nvml": _no_library,
    "no-gpu": _no_gpu,
}


def machine(name: str) -> FakeNvml:
    """A fresh fake machine by name; ValueError listing the names if unknown."""
    try:
        return MACHINES[name]()
    except KeyError:
        known = ", ".join(sorted(MACHINES))
        raise ValueError(f"no fake GPU machine {name!r}; choose one of: {known}") from None
