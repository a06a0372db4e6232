"""Discovery: what GPUs this node has, read once through NVML at start.

`discover(nvml)` takes anything with `pynvml`'s function surface (the real module or the fake)
and returns an `Inventory` of frozen values; it never raises for a missing library, a missing
driver or a GPU that fails while it is read: those end in an inventory with fewer (or no)
GPUs and a `problems` line per cause, which the daemon logs. faasd never changes MIG mode and
never creates instances: it uses the MIG devices an administrator made (README, "GPUs").

The error handling follows dask's and go-nvlib's discovery: `nvmlDeviceGetMigMode` raising
NotSupported means a GPU without MIG; `nvmlDeviceGetMigDeviceHandleByIndex` raising NotFound
means an empty index (holes are normal); a GPU whose MIG mode is pending a change (a reset is
due) offers no units until an admin resets it. A compute instance smaller than its GPU instance
(e.g. `1c.3g.20gb`) is skipped: CUDA sees the CI, not the GI, and accounting it by the GI's
size would over-promise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Slice units per GPU (MIG compute slices; MPS / time-slicing shares count the same).
GPU_UNITS = 7
#: NVML error codes that mean "no usable NVML on this machine": run with 0 GPU units
#: (LIBRARY_NOT_FOUND, DRIVER_NOT_LOADED, NO_PERMISSION, UNKNOWN).
_NO_NVML = (12, 9, 4, 999)


@dataclass(frozen=True)
class MigInstance:
    """One MIG device: what `CUDA_VISIBLE_DEVICES` takes (`uuid`) and what it is worth."""

    uuid: str
    gpu_index: int
    profile: str
    units: int
    memory_mb: int
    gi_id: int
    ci_id: int
    sms: int


@dataclass(frozen=True)
class Gpu:
    """One physical GPU. `mig` is its current MIG mode; `instances` are its MIG devices."""

    index: int
    uuid: str
    name: str
    memory_mb: int
    mig: bool
    mig_pending: bool = False
    instances: tuple[MigInstance, ...] = ()


@dataclass(frozen=True)
class Inventory:
    """What NVML showed at start. `problems` holds one line per thing that made it smaller."""

    gpus: tuple[Gpu, ...] = ()
    driver: str | None = None
    cuda_driver: int | None = None
    mps_server: bool = False
    problems: tuple[str, ...] = ()


def _text(value: Any) -> str:
    """pynvml returns str today, bytes in older versions (dask and Ray accept both)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def describe_error(exc: Any) -> str:
    """The error's name and code; `str()` of an unknown code needs the library itself."""
    return f"{type(exc).__name__} (NVML error {exc.value})"


def profile_of(name: str) -> str:
    """`NVIDIA A100-SXM4-40GB MIG 1g.5gb` → `1g.5gb` (the name a MIG device reports)."""
    _, found, profile = name.rpartition("MIG ")
    return profile.strip() if found else name


def discover(nvml: Any) -> Inventory:
    """Every GPU and MIG device NVML shows; see the module docstring for what is skipped.

    `nvml` is the `pynvml` module or a stand-in with its names (errors and constants too)."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        if exc.value in _NO_NVML:
            return Inventory(problems=(f"no NVML: {describe_error(exc)}; 0 GPU units",))
        return Inventory(problems=(f"NVML did not start: {describe_error(exc)}; 0 GPU units",))
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as exc:
        return Inventory(problems=(f"NVML could not count GPUs: {describe_error(exc)}",))
    gpus: list[Gpu] = []
    problems: list[str] = []
    for index in range(count):
        try:
            gpus.append(_gpu(nvml, index, problems))
        except nvml.NVMLError as exc:
            problems.append(f"GPU {index} skipped: {describe_error(exc)}")
    if not gpus and not problems:
        problems.append("NVML found no GPU; 0 GPU units")
    return Inventory(
        gpus=tuple(gpus),
        driver=driver,
        cuda_driver=cuda,
        mps_server=bool(getattr(nvml, "mps_server", False)),
        problems=tuple(problems),
    )


def _gpu(nvml: Any, index: int, problems: list[str]) -> Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    uuid = _text(nvml.nvmlDeviceGetUUID(handle))
    name = _text(nvml.nvmlDeviceGetName(handle))
    memory_mb = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20
    try:
        current, pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError_NotSupported:
        return Gpu(index, uuid, name, memory_mb, mig=False)
    mig = current == nvml.NVML_DEVICE_MIG_ENABLE
    if current != pending:
        problems.append(f"GPU {index} ({uuid}) has a MIG mode change pending: reset it "
                        "(nvidia-smi -i N -r) before faasd can use it")
        return Gpu(index, uuid, name, memory_mb, mig=mig, mig_pending=True)
    if not mig:
        return Gpu(index, uuid, name, memory_mb, mig=False)
    instances = []
    for slot in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            device = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError_NotFound:
            continue  # no MIG device at this index
        instance = _instance(nvml, device, index)
        if instance is None:
            problems.append(f"GPU {index}: a MIG compute instance smaller than its GPU "
                            "instance was skipped")
            continue
        instances.append(instance)
    return Gpu(index, uuid, name, memory_mb, mig=True, instances=tuple(instances))


def _instance(nvml: Any, device: Any, gpu_index: int) -> MigInstance | None:
    attributes = nvml.nvmlDeviceGetAttributes(device)
    units = int(attributes.gpuInstanceSliceCount)
    if int(attributes.computeInstanceSliceCount) < units:
        return None
    return MigInstance(
        uuid=_text(nvml.nvmlDeviceGetUUID(device)),
        gpu_index=gpu_index,
        profile=profile_of(_text(nvml.nvmlDeviceGetName(device))),
        units=units,
        memory_mb=int(attributes.memorySizeMB),
        gi_id=int(nvml.nvmlDeviceGetGpuInstanceId(device)),
        ci_id=int(nvml.nvmlDeviceGetComputeInstanceId(device)),
        sms=int(attributes.multiprocessorCount),
    )
