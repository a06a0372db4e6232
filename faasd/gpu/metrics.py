"""The GPU gauges, read from the slice table when /metrics is scraped.

`faasd_gpu_units_total{gpu,mode}` and `faasd_gpu_units_free{gpu,mode}` per GPU (a withdrawn
GPU shows 0 and 0), and `faasd_gpu_memory_used_bytes{function_name}`: the device memory NVML
sees the sandboxes bound to slices use, per function.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from faasd.gpu.service import GpuService


class GpuGauges(Collector):
    def __init__(self, gpus: GpuService) -> None:
        self._gpus = gpus

    def collect(self) -> Iterator[GaugeMetricFamily]:
        total = GaugeMetricFamily(
            "faasd_gpu_units_total", "GPU slice units this node offers, per GPU.",
            labels=["gpu", "mode"],
        )
        free = GaugeMetricFamily(
            "faasd_gpu_units_free", "GPU slice units no sandbox holds, per GPU.",
            labels=["gpu", "mode"],
        )
        for gpu in self._gpus.describe():
            labels = [str(gpu["index"]), gpu["mode"]]
            total.add_metric(labels, gpu["total_units"])
            free.add_metric(labels, gpu["free_units"])
        memory = GaugeMetricFamily(
            "faasd_gpu_memory_used_bytes",
            "Device memory used by the sandboxes bound to GPU slices (NVML), per function.",
            labels=["function_name"],
        )
        for function, used in sorted(self._gpus.memory_used().items()):
            memory.add_metric([function], used)
        yield total
        yield free
        yield memory

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
