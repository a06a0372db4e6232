"""What each stage of the example workflows costs in process, one core: the floor under their SLOs.

    .venv/bin/python benchmarks/workflow_stages.py [--calls 50] [--url http://127.0.0.1:8080]

Runs every workflow under workflows/ on its sample.jpg with faasd.workflows.reference (no
daemon, no sandboxes, no queueing), and times each stage's parts separately: the source's
preprocess (decoding the picture), each model's session.run at batch 1, and the sink's
postprocess. Prints p50 and p99 per part and the sum of the stages' p50s along the critical
path (the longest path through the DAG, since the branches of a fork can run side by side).
With --url it then calls each workflow of a running daemon (`faasd up --functions functions
--workflows workflows`), one call after the other, and prints the end-to-end latency clients
see (p50, p90, max) and how many calls met the SLO (X-Faasd-Slo-Met): the same picture
through sandboxes, hops and batching delays, with no queue. The SLOs in workflow.yaml leave
room above both for queueing.
"""

from __future__ import annotations

import argparse
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from faasd.sandbox.batching import conform
from faasd.workflows.reference import LoadedWorkflow, load_workflow

REPO = Path(__file__).resolve().parents[1]


def timed(calls: int, action: Callable[[], Any]) -> list[float]:
    action()  # warm: the first run allocates and plans
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


def stage_times(workflow: LoadedWorkflow, body: bytes, calls: int) -> dict[str, list[float]]:
    """ms per call of each part: '<source> preprocess', '<stage>', '<sink> postprocess'."""
    run = workflow.run(body, "image/jpeg")
    source = workflow.stages[workflow.order[0]]
    preprocess = source.handler.preprocess
    assert preprocess is not None
    times = {f"{source.name} preprocess": timed(calls, lambda: preprocess(body, "image/jpeg"))}
    feeds_of = {source.name: conform(source.model, preprocess(body, "image/jpeg"))}
    for name in workflow.order:
        stage = workflow.stages[name]
        feeds = feeds_of.get(name) or workflow.feeds(name, run.tensors)
        times[name] = timed(calls, lambda s=stage, f=feeds: s.model.run(f))
    for sink, outputs in run.outputs.items():
        post = workflow.stages[sink].handler.postprocess
        if post is not None:
            times[f"{sink} postprocess"] = timed(calls, lambda p=post, o=outputs: p(o))
    return times


def critical_path_ms(workflow: LoadedWorkflow, p50: dict[str, float]) -> float:
    """The longest path's sum of stage p50s, pre/postprocess included."""
    finish: dict[str, float] = {}
    for name in workflow.order:
        before = [finish[source] for source in workflow.spec.predecessors(name)]
        own = p50[name] + p50.get(f"{name} preprocess", 0.0) + p50.get(f"{name} postprocess", 0.0)
        finish[name] = max(before, default=0.0) + own
    return max(finish.values())


def through_daemon(url: str, name: str, body: bytes, calls: int) -> tuple[list[float], int]:
    """ms per call of POST /workflow/NAME, one after the other, and how many met the SLO."""
    request = urllib.request.Request(f"{url}/workflow/{name}", data=body,
                                     headers={"Content-Type": "image/jpeg"})
    urllib.request.urlopen(request, timeout=60).read()  # warm: cold starts are not the point
    samples, met = [], 0
    for _ in range(calls):
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            met += response.headers["X-Faasd-Slo-Met"] == "true"
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples, met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50, help="timed calls per part")
    parser.add_argument("--url", help="also call the workflows of the daemon at this URL")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; batch 1, one intra-op thread; ms per call (p50 / p99)")
    for directory in sorted(p for p in (REPO / "workflows").iterdir()
                            if (p / "workflow.yaml").is_file()):
        workflow = load_workflow(directory)
        body = (directory / "sample.jpg").read_bytes()
        times = stage_times(workflow, body, args.calls)
        p50 = {part: float(np.percentile(t, 50)) for part, t in times.items()}
        print(f"\n{directory.name} (slo_ms {workflow.spec.slo_ms:g})")
        for part, samples in times.items():
            print(f"  {part:24s} {p50[part]:7.2f} / {np.percentile(samples, 99):7.2f}")
        print(f"  {'critical path (p50s)':24s} {critical_path_ms(workflow, p50):7.2f}")
        if args.url:
            samples, met = through_daemon(args.url.rstrip("/"), directory.name, body,
                                          args.calls)
            p50_ms, p90_ms = np.percentile(samples, [50, 90])
            print(f"  {'through the daemon':24s} {p50_ms:7.2f} / p90 {p90_ms:.2f} / max "
                  f"{max(samples):.2f}; SLO met {met}/{len(samples)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
