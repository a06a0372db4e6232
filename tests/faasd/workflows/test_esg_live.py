"""ESG in the real daemon: the configuration its plan names is the one the sandbox gets.

The profiles are given (a fixed table, as the profiler would store it) so the plan is known by
hand: chain src -> inc, SLO 45 ms, each function 30 ms at 1 vCPU (cost 30 vCPU-ms) and 20 ms at
2 vCPUs (cost 40). Both at 1 vCPU take 60 ms and one at 2 takes 50: only both at 2 (40 ms, 44
with ESG's 10 % margin) meet the SLO, so the source's batch must run with 2 vCPUs: a CPU quota
of two periods in its cgroup. FCFS runs it at the function's own `resources.vcpu` (1).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import aiohttp
import pytest

from esg.model import Config, Profile
from faasd.daemon import Daemon
from faasd.sandbox.cgroups import CFS_PERIOD_US
from tests.faasd.workflows.builders import workflow_dir
from tests.faasd.workflows.conftest import daemon_config

pytestmark = pytest.mark.slow

TABLE = {Config(1, 1): 30.0, Config(1, 2): 20.0}


class FixedProfiles:
    def profiles(self) -> Mapping[str, Profile]:
        return {f: Profile(f, TABLE, version=1) for f in ("src", "inc")}

    def cold_starts_ms(self) -> Mapping[str, float]:
        return {}


def quotas(parent: str, function: str) -> list[int]:
    """The CPU quota (in CFS periods) of every sandbox group of `function` under `parent`."""
    v1 = sorted(Path(f"/sys/fs/cgroup/cpu/{parent}").glob(f"{function}-v*"))
    if v1:
        return [int((g / "cpu.cfs_quota_us").read_text()) // CFS_PERIOD_US for g in v1]
    v2 = sorted(Path(f"/sys/fs/cgroup/{parent}").glob(f"{function}-v*"))
    return [int((g / "cpu.max").read_text().split()[0]) // CFS_PERIOD_US for g in v2]


@pytest.mark.parametrize(("scheduler", "vcpu"), [("esg", 2), ("fcfs", 1)])
async def test_the_sandbox_gets_the_configuration_the_plan_names(
    tmp_path: Path, functions_dir: Path, scheduler: str, vcpu: int
) -> None:
    workflow_dir(tmp_path / "wf", "pair", """
        slo_ms: 45
        functions: [src, inc]
        edges: [{from: src, to: inc}]
    """)
    config = daemon_config(tmp_path, functions_dir, tmp_path / "wf", scheduler)
    parent = f"faasd-test-esg-{tmp_path.name[-12:]}"
    config = type(config)(**{**config.__dict__, "cgroup_parent": parent, "node_vcpu": 2})
    async with Daemon(config, profiles=FixedProfiles()) as daemon:
        if daemon.services.pool_stats()["cgroups"] == "none":
            pytest.skip("no writable cgroups here (needs root)")
        async with aiohttp.ClientSession() as s, s.post(
            f"{daemon.url}/workflow/pair", data=b"1,2,3,4"
        ) as resp:
            assert resp.status == 200, await resp.text()
        assert quotas(parent, "src") == [vcpu]
