"""Node-wide ceilings on what a function may ask for (`limits:` in the daemon's faasd.yaml).

A function's faasd.yaml declares its own resources; without a ceiling, `memory_mb: 4000000`
would be written into a cgroup and `timeout_s: 86400` would let one call hold a sandbox for a
day. `check_limits` compares the settings with the ceilings and with what other functions
have already reserved (`min_instances` keeps sandboxes warm for good). Pure: values in, a
DeployError (400) naming the key, the value and the cap, or None, out.
"""

from __future__ import annotations

from dataclasses import dataclass

from faasd.errors import DeployError
from faasd.functions.spec import FunctionSettings

#: The default ceiling of `timeout_s` (an hour): a node has no natural one.
DEFAULT_MAX_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class NodeLimits:
    """Ceilings per function (`memory_mb`, `vcpu`, `timeout_s`, `max_instances`) and on the
    sum of every function's `min_instances`. 0 means "what the node has" (`resolved`)."""

    memory_mb: int = 0
    vcpu: int = 0
    timeout_s: float = DEFAULT_MAX_TIMEOUT_S
    max_instances: int = 0
    min_instances_total: int = 0

    def resolved(self, memory_mb: int, vcpu: int, sandboxes: int) -> NodeLimits:
        """These limits with each 0 replaced by the node's own figure: its memory, its vCPUs,
        and the pool's `max_sandboxes` (for both instance counts)."""
        return NodeLimits(
            memory_mb=self.memory_mb or memory_mb,
            vcpu=self.vcpu or vcpu,
            timeout_s=self.timeout_s or DEFAULT_MAX_TIMEOUT_S,
            max_instances=self.max_instances or sandboxes,
            min_instances_total=self.min_instances_total or sandboxes,
        )


_WHERE = {"memory_mb": "resources.memory_mb", "vcpu": "resources.vcpu",
          "timeout_s": "timeout_s", "max_instances": "scale.max_instances"}


def check_limits(name: str, settings: FunctionSettings, limits: NodeLimits,
                 reserved_by_others: int) -> DeployError | None:
    """The error for the first setting of `name` over a ceiling of `limits` (resolved), or
    None. `reserved_by_others` is the sum of the other functions' `min_instances`."""
    for key, where in _WHERE.items():
        value, cap = getattr(settings, key), getattr(limits, key)
        if value > cap:
            return DeployError(
                f"{name} asks for {key} {_text(value)}, over this node's cap of {_text(cap)} "
                f"(limits.{key} in the daemon's configuration); lower {where} in faasd.yaml",
                file="faasd.yaml", key=key, value=value, cap=cap,
            )
    total = reserved_by_others + settings.min_instances
    if settings.min_instances and total > limits.min_instances_total:
        return DeployError(
            f"{name} asks for min_instances {settings.min_instances}, but other functions "
            f"already keep {reserved_by_others} warm and this node's cap is "
            f"{limits.min_instances_total} (limits.min_instances_total); lower "
            "scale.min_instances in faasd.yaml",
            file="faasd.yaml", key="min_instances", value=settings.min_instances,
            cap=limits.min_instances_total,
        )
    return None


def _text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def node_memory_mb() -> int:
    """The node's memory in MiB (MemTotal), or 0 when /proc/meminfo cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
