"""ESG_Dispatch: map the plans of one AFW queue onto a node, in priority order.

"ESG_Dispatch repeatedly dequeues the priority queue until [a] suitable configuration is found
and assign[s] the task to [an] appropriate machine" (slides). The outer loop is over plans in
priority order, the inner over nodes in preference order; the first (plan, node) that fits
wins. The preference order of nodes (a reconstruction: the slides say home invoker for the first
function, the predecessor's invoker for the others, and the goal "data locality and warm
starts"; a cold start costs far more than moving an input, so warm comes first):

1. nodes holding an idle warm sandbox of the function at that configuration, those holding the
   jobs' inputs first, then in home-progression order;
2. the nodes holding the inputs of the jobs to be taken (most jobs first): data locality;
3. the function's home node (OpenWhisk: hash of the name mod N), then the rest of OpenWhisk's
   progression (home + i · step mod N, the step coprime with N).

A node fits a configuration when it is healthy, has the vCPUs free, and (for vgpu > 0) has a GPU
that can give a slice of that size: MIG instance sizes 1, 2, 3, 4, 7 only, MPS any share, and
never more units than are free (best fit: the GPU with the fewest free units that suffices).
When nothing fits, nothing is returned: the jobs stay queued and the policy retries when a
completion frees resources.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from esg.model import MIG_SIZES, Config, Job
from esg.policy import NodeView
from esg.search import Plan


@functools.lru_cache(maxsize=256)
def pairwise_coprimes(n: int) -> tuple[int, ...]:
    """OpenWhisk's step sizes: 1..n, each coprime with n and with every step kept before it."""
    steps: list[int] = []
    for candidate in range(1, n + 1):
        if math.gcd(candidate, n) == 1 and all(math.gcd(s, candidate) == 1 for s in steps):
            steps.append(candidate)
    return tuple(steps)


def stable_hash(key: str) -> int:
    """A hash that is the same in every process (Python's `hash` of a str is salted)."""
    return zlib.crc32(key.encode("utf-8"))


@functools.lru_cache(maxsize=4096)
def home_progression(key: str, count: int) -> tuple[int, ...]:
    """Node indices in OpenWhisk's probing order for `key`: home, home + step, ... (all of them)."""
    if count < 1:
        return ()
    h = stable_hash(key)
    home = h % count
    steps = pairwise_coprimes(count)
    step = steps[h % len(steps)]
    return tuple((home + i * step) % count for i in range(count))


def slice_is_valid(units: int, mode: str) -> bool:
    """Whether one GPU can give a slice of `units`: MIG only in its instance sizes."""
    return units in MIG_SIZES if mode == "mig" else units >= 1


def gpu_for(node: NodeView, units: int) -> int | None:
    """The GPU of `node` that best fits a slice of `units` (fewest free units that suffice)."""
    fitting = [g for g in node.gpus if g.free_units >= units and slice_is_valid(units, g.mode)]
    if not fitting:
        return None
    return min(fitting, key=lambda g: (g.free_units, g.index)).index


def fits(node: NodeView, config: Config) -> tuple[bool, int | None]:
    """Whether `config` fits on `node` now, and the GPU index it would use."""
    if not node.healthy or node.free_vcpu < config.vcpu:
        return False, None
    if config.vgpu == 0:
        return True, None
    gpu = gpu_for(node, config.vgpu)
    return gpu is not None, gpu


def candidate_nodes(
    nodes: Sequence[NodeView], function: str, config: Config, jobs: Iterable[Job], home_key: str
) -> list[NodeView]:
    """All nodes, in the preference order of the module docstring."""
    inputs = Counter(j.input_node for j in jobs if j.input_node is not None)
    # Most jobs' inputs first; ties by name so that the order is deterministic.
    local = [name for name, _ in sorted(inputs.items(), key=lambda kv: (-kv[1], kv[0]))]
    progression = [nodes[i] for i in home_progression(home_key, len(nodes))]
    warm = {n.name for n in nodes if n.warm.get((function, config), 0) > 0}
    order = [name for name in local if name in warm]
    order += [n.name for n in progression if n.name in warm]
    order += local
    order += [n.name for n in progression]
    by_name = {n.name: n for n in nodes}
    seen: set[str] = set()
    result = []
    for name in order:
        if name in by_name and name not in seen:
            seen.add(name)
            result.append(by_name[name])
    return result


@dataclass(frozen=True)
class Placement:
    """The plan chosen (its index in the priority queue), the node and the GPU for its head."""

    plan_index: int
    plan: Plan
    config: Config
    node: str
    gpu: int | None


def place(
    plans: Sequence[Plan],
    function: str,
    jobs: Sequence[Job],
    nodes: Sequence[NodeView],
    home_key: str,
    *,
    allowance_ms: Sequence[float] | None = None,
    setup_ms: Callable[[NodeView, Config], float] | None = None,
) -> Placement | None:
    """The first plan, in priority order, whose configuration for `function` fits some node.

    `jobs` are the queued jobs (oldest first); the input locations of those a plan would take
    decide the locality preference. With `setup_ms` (the time a node needs before the batch can
    start there: a cold start, moving inputs) and `allowance_ms` (per plan, how much setup its
    budget leaves), a node is taken for a plan only when its setup fits the plan's allowance.
    """
    tried: dict[Config, float] = {}
    for index, plan in enumerate(plans):
        config = plan.configs[function]
        allowance = math.inf if allowance_ms is None else allowance_ms[index]
        if tried.get(config, -math.inf) >= allowance:
            continue  # same head configuration as a plan that fitted nowhere with more room
        tried[config] = allowance
        taken = jobs[: config.batch]
        for node in candidate_nodes(nodes, function, config, taken, home_key):
            ok, gpu = fits(node, config)
            if ok and (setup_ms is None or setup_ms(node, config) <= allowance + 1e-9):
                return Placement(index, plan, config, node.name, gpu)
    return None
