"""`faasd plan WORKFLOW`: the explanation of ESG's plan, worked by hand, and through the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from esg.model import Profile, Workflow
from esg.pricing import Pricing
from esg.profiles import Capacity
from faasd.daemon import Daemon
from faasd.workflows.plan import explain
from tests.faasd.workflows.builders import workflow_dir
from tests.faasd.workflows.conftest import daemon_config
from tests.faasd.workflows.test_esg_live import TABLE, FixedProfiles

PRICING = Pricing(cpu_per_s=1.0, gpu_per_s=10.0)  # $1 per vCPU-second: costs read as vCPU-s


def test_the_chosen_plan_and_why_the_cheaper_ones_lost() -> None:
    # src -> inc, SLO 45 ms. Per function: (b1, 1 vCPU) 30 ms, $0.030; (b1, 2 vCPU) 20 ms,
    # $0.040. Only both at 2 vCPUs (40 ms, $0.080) fit 45 ms; both at 1 (60 ms, $0.060) and
    # one at each (50 ms, $0.070) are cheaper and too slow.
    workflow = Workflow("pair", ("src", "inc"), (("src", "inc"),), 0.045)
    profiles = {f: Profile(f, TABLE) for f in ("src", "inc")}
    doc = explain(workflow, profiles, {"src": 4, "inc": 4}, PRICING, Capacity(2, frozenset({0})))
    assert doc["feasible"] and doc["unprofiled"] == []
    (group,) = doc["groups"]
    assert group["functions"] == ["src", "inc"] and group["budget_ms"] == 45.0
    chosen, *lost = group["plans"]
    assert chosen["feasible"] and chosen["why_not"] is None
    assert chosen["latency_ms"] == 40.0 and chosen["cost_per_request"] == pytest.approx(0.080)
    assert {f: c["vcpu"] for f, c in chosen["configs"].items()} == {"src": 2, "inc": 2}
    assert [p["latency_ms"] for p in lost] == [60.0, 50.0, 50.0]
    assert [round(p["cost_per_request"], 3) for p in lost] == [0.060, 0.070, 0.070]
    assert all(not p["feasible"] and "exceeds the group's budget 45 ms" in p["why_not"]
               for p in lost)


def test_unprofiled_functions_are_named() -> None:
    workflow = Workflow("pair", ("src", "inc"), (("src", "inc"),), 0.045)
    capacity = Capacity(2, frozenset({0}))
    doc = explain(workflow, {"src": Profile("src", TABLE)}, {}, PRICING, capacity)
    assert doc["unprofiled"] == ["inc"]
    assert [c["vcpu"] for c in doc["groups"][0]["plans"][0]["configs"].values()] == [1]


@pytest.mark.slow
async def test_faasd_plan_prints_the_plan_of_a_deployed_workflow(
    tmp_path: Path, functions_dir: Path
) -> None:
    workflow_dir(tmp_path / "wf", "pair", """
        slo_ms: 45
        functions: [src, inc]
        edges: [{from: src, to: inc}]
    """)
    config = daemon_config(tmp_path, functions_dir, tmp_path / "wf", "esg")
    async with Daemon(config, profiles=FixedProfiles()) as daemon:
        run = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "faasd.cli", "plan", "pair", "-g", daemon.url],
            capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "workflow pair: SLO 45 ms (feasible); scheduler esg"
    assert lines[1].startswith("group 1: src inc: budget 45 ms")
    assert "chosen: src batch 1 x 2 vCPU 20 ms, inc batch 1 x 2 vCPU 20 ms; 40 ms" in lines[2]
    assert "lost: its predicted latency 60 ms exceeds the group's budget 45 ms" in lines[3]
