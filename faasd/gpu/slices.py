"""GPU slice accounting: which slices are free, who holds the others. Pure.

Each GPU offers 7 slice units, a resource beside the node's vCPUs, handed out to sandboxes
(owners) and given back when they stop. How a GPU is cut depends on its mode:

- `mig`: the slices are the MIG instances an administrator created, and only they. A sandbox
  that asks for g units gets one free instance of exactly g units or nothing: instance placement
  makes the 7 units less interchangeable than they look (two free 1g instances are no 2g, and a
  3g instance is not split), so the table counts instances, never a pool of units.
- `mps` and `timeslice`: the 7 units are shares of the whole GPU (MPS: a thread percentage and a
  memory limit per sandbox; time-slicing: admission tokens only, a concurrency cap); any g from
  1 to the GPU's free units can be given.

The table never over-commits: `acquire` gives a slice only from what is free, and a GPU that
was withdrawn (lost) gives nothing. It holds no clock, no NVML and no I/O; `GpuService` is its
shell.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from esg.policy import GpuView
from faasd.gpu.discovery import GPU_UNITS, Gpu, Inventory, MigInstance

MODES = ("auto", "mig", "mps", "timeslice", "off")


@dataclass(frozen=True)
class Slice:
    """What one sandbox was given: `units` of GPU `gpu_index` in `mode`.

    `device_uuid` is what the sandbox's `CUDA_VISIBLE_DEVICES` names: the MIG device (mig) or
    the GPU (mps, timeslice). `memory_mb` is the memory the slice may use.
    """

    gpu_index: int
    gpu_uuid: str
    mode: str
    units: int
    device_uuid: str
    memory_mb: int
    profile: str | None = None


@dataclass(frozen=True)
class GpuSlots:
    """One GPU as the table offers it: its mode, its MIG instances (mig) and its health."""

    index: int
    uuid: str
    name: str
    mode: str
    memory_mb: int
    instances: tuple[MigInstance, ...] = ()
    healthy: bool = True

    @property
    def total_units(self) -> int:
        if self.mode == "mig":
            return sum(i.units for i in self.instances)
        return GPU_UNITS


def resolve_modes(inventory: Inventory, mode: str) -> tuple[list[GpuSlots], list[str]]:
    """The GPUs faasd uses in `mode`, and a line for each one it leaves out (and why).

    `auto`: a GPU in MIG mode is used by its instances; any other GPU by MPS shares when an MPS
    server runs, else by time-slicing. `mig` uses only GPUs in MIG mode; `mps` and `timeslice`
    only GPUs not in MIG mode (MPS on top of MIG instances is not supported here). A GPU with a
    MIG mode change pending is never used. `off`: none."""
    if mode not in MODES:
        raise ValueError(f"gpu mode {mode!r} is unknown; choose one of: {', '.join(MODES)}")
    used: list[GpuSlots] = []
    skipped: list[str] = []
    if mode == "off":
        return used, [f"GPU {g.index} left unused: gpu.mode is off" for g in inventory.gpus]
    for gpu in inventory.gpus:
        if gpu.mig_pending:
            continue  # discovery already said why
        chosen = _mode_of(gpu, mode, inventory.mps_server)
        if chosen is None:
            wanted = "not in MIG mode" if gpu.mig else "in MIG mode"
            skipped.append(f"GPU {gpu.index} ({gpu.name}) left unused: gpu.mode {mode} needs a "
                           f"GPU {wanted} (see the README, GPUs)")
            continue
        instances = gpu.instances if chosen == "mig" else ()
        if chosen == "mig" and not instances:
            skipped.append(f"GPU {gpu.index} is in MIG mode but has no MIG instance; create "
                           "some with nvidia-smi mig -cgi ... -C")
            continue
        used.append(GpuSlots(gpu.index, gpu.uuid, gpu.name, chosen, gpu.memory_mb, instances))
    return used, skipped


def _mode_of(gpu: Gpu, mode: str, mps_server: bool) -> str | None:
    if mode == "auto":
        if gpu.mig:
            return "mig"
        return "mps" if mps_server else "timeslice"
    if mode == "mig":
        return "mig" if gpu.mig else None
    return None if gpu.mig else mode


class SliceTable:
    """Slices of the node's GPUs and their holders (sandbox ids)."""

    def __init__(self, gpus: Iterable[GpuSlots]) -> None:
        self._gpus = {g.index: g for g in gpus}
        #: owner -> the slice it holds
        self._held: dict[str, Slice] = {}

    @property
    def gpus(self) -> tuple[GpuSlots, ...]:
        return tuple(self._gpus.values())

    def held(self) -> Mapping[str, Slice]:
        return dict(self._held)

    # --- what can be given ------------------------------------------------------------------

    def sizes(self) -> frozenset[int]:
        """Every slice size some healthy GPU could give when nothing holds it."""
        sizes: set[int] = set()
        for gpu in self._gpus.values():
            if not gpu.healthy:
                continue
            if gpu.mode == "mig":
                sizes.update(i.units for i in gpu.instances)
            else:
                sizes.update(range(1, GPU_UNITS + 1))
        return frozenset(sizes)

    def can_ever(self, units: int, memory_mb: int = 0) -> bool:
        """Whether some healthy GPU could give `units` with `memory_mb` of device memory
        (0: any) when nothing holds it: a MIG instance of that size with that much memory, or
        a share of a GPU with that much memory."""
        for gpu in self._gpus.values():
            if not gpu.healthy:
                continue
            if gpu.mode == "mig":
                if any(i.units == units and i.memory_mb >= memory_mb for i in gpu.instances):
                    return True
            elif units <= GPU_UNITS and memory_mb <= gpu.memory_mb:
                return True
        return False

    def free_units(self, index: int) -> int:
        gpu = self._gpus[index]
        if not gpu.healthy:
            return 0
        used = sum(s.units for s in self._held.values() if s.gpu_index == index)
        return gpu.total_units - used

    def _free_instances(self, gpu: GpuSlots) -> list[MigInstance]:
        taken = {s.device_uuid for s in self._held.values()}
        return [i for i in gpu.instances if i.uuid not in taken]

    # --- giving and taking back -----------------------------------------------------------

    def acquire(
        self, owner: str, units: int, gpu_index: int | None = None, memory_mb: int = 0
    ) -> Slice | None:
        """A free slice of exactly `units` for `owner` (on GPU `gpu_index` if given) with at
        least `memory_mb` of device memory (0: whatever the slice has), or None.

        Of the GPUs that can give it, the one with the fewest free units, then the lowest index
        (best fit: the rule esg's dispatcher picks a GPU by, so on a node with several GPUs the
        slice usually lands where the policy planned it). On a MIG GPU, the free instance of
        that size with the least memory that suffices (a 1g.5gb before a 1g.10gb); on an MPS or
        time-sliced GPU, a share of a GPU with memory enough, the slice's memory being
        `memory_mb` when given, else the share's g/7 of the GPU's.
        ValueError if `owner` already holds a slice or `units` is outside 1..7."""
        if not 1 <= units <= GPU_UNITS:
            raise ValueError(f"a GPU slice is 1..{GPU_UNITS} units, not {units}")
        if owner in self._held:
            raise ValueError(f"{owner} already holds a GPU slice")
        offers = [
            (self.free_units(g.index), g.index, offer)
            for g in self._gpus.values()
            if g.healthy and (gpu_index is None or g.index == gpu_index)
            for offer in [self._offer(g, units, memory_mb)]
            if offer is not None
        ]
        if not offers:
            return None
        _, _, found = min(offers, key=lambda t: (t[0], t[1]))
        self._held[owner] = found
        return found

    def _offer(self, gpu: GpuSlots, units: int, memory_mb: int) -> Slice | None:
        """The slice `gpu` would give now, or None."""
        if gpu.mode == "mig":
            fitting = [i for i in self._free_instances(gpu)
                       if i.units == units and i.memory_mb >= memory_mb]
            if not fitting:
                return None
            instance = min(fitting, key=lambda i: i.memory_mb)
            return Slice(gpu.index, gpu.uuid, "mig", units, instance.uuid, instance.memory_mb,
                         instance.profile)
        if self.free_units(gpu.index) < units or memory_mb > gpu.memory_mb:
            return None
        memory = memory_mb or gpu.memory_mb * units // GPU_UNITS
        return Slice(gpu.index, gpu.uuid, gpu.mode, units, gpu.uuid, memory)

    def release(self, owner: str) -> Slice | None:
        """Give back what `owner` holds (None if nothing; releasing twice is harmless)."""
        return self._held.pop(owner, None)

    def withdraw(self, index: int) -> list[str]:
        """Mark GPU `index` unhealthy (lost): it gives nothing from now on. Returns the owners
        still holding slices on it (their sandboxes must be stopped)."""
        gpu = self._gpus.get(index)
        if gpu is None:
            return []
        self._gpus[index] = replace(gpu, healthy=False)
        return [o for o, s in self._held.items() if s.gpu_index == index]

    # --- views -----------------------------------------------------------------------------

    def views(self) -> tuple[GpuView, ...]:
        """The GPUs as esg's policies see them. MIG free units are the sum of the free
        instances (esg's GpuView has no instance sizes; the table refuses what is not an
        instance). Time-slicing is offered to esg as `mps` (any share), its accounting too."""
        return tuple(
            GpuView(
                index=g.index,
                free_units=self.free_units(g.index),
                total_units=g.total_units if g.healthy else 0,
                mode="mig" if g.mode == "mig" else "mps",
            )
            for g in sorted(self._gpus.values(), key=lambda g: g.index)
        )

    def describe(self) -> list[dict[str, Any]]:
        """JSON for /system/nodes, /healthz and `faasd nodes` (see the README's API table)."""
        out = []
        for gpu in sorted(self._gpus.values(), key=lambda g: g.index):
            holders = {s.device_uuid: o for o, s in self._held.items() if s.mode == "mig"}
            out.append({
                "index": gpu.index,
                "uuid": gpu.uuid,
                "name": gpu.name,
                "mode": gpu.mode,
                "healthy": gpu.healthy,
                "memory_mb": gpu.memory_mb,
                "total_units": gpu.total_units if gpu.healthy else 0,
                "free_units": self.free_units(gpu.index),
                "instances": [
                    {
                        "uuid": i.uuid,
                        "profile": i.profile,
                        "units": i.units,
                        "memory_mb": i.memory_mb,
                        "in_use": i.uuid in holders,
                    }
                    for i in gpu.instances
                ],
            })
        return out
