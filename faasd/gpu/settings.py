"""The `gpu:` section of faasd.yaml, checked. Pure.

```yaml
gpu:
  mode: auto          # auto | mig | mps | timeslice | off
  fake: null          # a fake NVML machine (tests, demos): a100-40gb-mig, ...
  memory_fraction: 0.8              # onnxruntime's CUDA arena limit, share of the slice
  arena_extend_strategy: kSameAsRequested   # or kNextPowerOfTwo
  cudnn_conv_algo_search: HEURISTIC         # or EXHAUSTIVE, DEFAULT
  mps_pipe_dir: null  # null = STATE_DIR/mps/pipe (the MPS control daemon faasd starts)
  mps_log_dir: null   # null = STATE_DIR/mps/log
  health_interval_s: 5              # how often NVML is asked whether each GPU is still there
```

`FAASD_GPU_MODE` and `FAASD_GPU_FAKE` override the file (the rest is file only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from faasd.gpu.slices import MODES

ARENA_STRATEGIES = ("kSameAsRequested", "kNextPowerOfTwo")
CONV_SEARCHES = ("HEURISTIC", "EXHAUSTIVE", "DEFAULT")


@dataclass(frozen=True)
class GpuSettings:
    mode: str = "auto"
    fake: str | None = None
    memory_fraction: float = 0.8
    arena_extend_strategy: str = "kSameAsRequested"
    cudnn_conv_algo_search: str = "HEURISTIC"
    mps_pipe_dir: Path | None = None
    mps_log_dir: Path | None = None
    health_interval_s: float = 5.0

    def validate(self) -> GpuSettings:
        """ValueError naming the key and the values it takes."""
        if self.mode not in MODES:
            raise ValueError(f"gpu.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 < self.memory_fraction <= 1:
            raise ValueError(f"gpu.memory_fraction must be in (0, 1], got {self.memory_fraction}")
        if self.arena_extend_strategy not in ARENA_STRATEGIES:
            raise ValueError(f"gpu.arena_extend_strategy must be one of "
                             f"{', '.join(ARENA_STRATEGIES)}, got {self.arena_extend_strategy!r}")
        if self.cudnn_conv_algo_search not in CONV_SEARCHES:
            raise ValueError(f"gpu.cudnn_conv_algo_search must be one of "
                             f"{', '.join(CONV_SEARCHES)}, got {self.cudnn_conv_algo_search!r}")
        if self.health_interval_s <= 0:
            raise ValueError(f"gpu.health_interval_s must be > 0, got {self.health_interval_s}")
        return self


_KEYS = {f.name: f for f in fields(GpuSettings)}


def parse_gpu(value: Any, env: Mapping[str, str] | None = None) -> GpuSettings:
    """`value` (the YAML mapping, None, or GpuSettings) with FAASD_GPU_MODE / FAASD_GPU_FAKE
    from `env` on top. ValueError with the key and the fix."""
    if isinstance(value, GpuSettings):
        settings = value
    elif value is None:
        settings = GpuSettings()
    elif isinstance(value, dict):
        unknown = sorted(set(value) - set(_KEYS))
        if unknown:
            raise ValueError(f"unknown gpu key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(_KEYS))}")
        settings = GpuSettings(**{k: _coerce(k, v) for k, v in value.items()})
    else:
        raise ValueError(f"gpu must be a mapping (mode: auto, ...), got {value!r}")
    env = env or {}
    if env.get("FAASD_GPU_MODE"):
        settings = replace(settings, mode=env["FAASD_GPU_MODE"])
    if env.get("FAASD_GPU_FAKE"):
        settings = replace(settings, fake=env["FAASD_GPU_FAKE"])
    return settings.validate()


def _coerce(key: str, value: Any) -> Any:
    if value is None:
        if _KEYS[key].default is None:
            return None
        raise ValueError(f"gpu.{key} needs a value")
    if key in ("mps_pipe_dir", "mps_log_dir"):
        return Path(str(value)).expanduser()
    if key in ("memory_fraction", "health_interval_s"):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"gpu.{key} must be a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"gpu.{key} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"gpu.{key} must be a finite number, got {value!r}")
        return number
    if not isinstance(value, str):
        raise ValueError(f"gpu.{key} must be text, got {value!r}")
    return value
