"""`faasd plan WORKFLOW`: what ESG would do with a workflow, given the live profiles.

Pure: the SLO split (`esg.slo`) over the functions' fastest profiled latencies, then per group
the top plans of ESG_1Q (`esg.search`) within the group's budget, as if the call had just
arrived: the first plan is ESG's choice, then the next best, then the cheaper plans that do not
fit the budget, each with the reason it lost (it costs more, or its predicted latency does not
fit). At run time ESG plans again at every stage with the time actually left, adds its latency
margin and the cold start of a stage that has no warm sandbox, and may batch; this is the plan
of a call on an idle node. Functions without a profile are listed apart: they run FCFS-style at
their limits until the profiler has measured them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from esg.model import Config, Profile, Workflow
from esg.pricing import Pricing
from esg.profiles import Capacity, fastest_ms, priced_options
from esg.search import Plan, esg_1q
from esg.slo import split_slo


def explain(
    workflow: Workflow,
    profiles: Mapping[str, Profile],
    max_batch: Mapping[str, int],
    pricing: Pricing,
    capacity: Capacity,
    *,
    group_size: int = 3,
    alternatives: int = 3,
) -> dict[str, Any]:
    """The plan of `workflow` as JSON: split, chosen plan per group, next best and why."""
    profiled = {f: profiles[f] for f in workflow.functions if f in profiles}
    minimum = {f: fastest_ms(p) for f, p in profiled.items()}
    split = split_slo(workflow, minimum, group_size=group_size)
    groups = []
    for group in split.groups:
        members = [f for f in group.functions if f in profiled]
        entry: dict[str, Any] = {
            "functions": list(group.functions),
            "min_latency_ms": group.min_latency_ms,
            "budget_ms": group.budget_ms,
            "deadline_ms": group.deadline_ms,
            "plans": [],
        }
        if members:
            options = {
                f: priced_options(profiled[f], pricing, capacity, max_batch.get(f))
                for f in members
            }
            edges = [(a, b) for a, b in group.edges if a in options and b in options]
            k = 1 + alternatives
            plans = list(esg_1q(members, edges, options, group.budget_ms, k=k).plans)
            if plans[0].feasible:  # cheaper plans that lost on time, to say why
                cheapest = esg_1q(members, edges, options, math.inf, k=k).plans
                plans += [replace(p, feasible=False) for p in cheapest
                          if p.latency_ms > group.budget_ms][:alternatives]
            entry["plans"] = [
                _plan(rank, plan, plans[0], group.budget_ms, profiled, pricing)
                for rank, plan in enumerate(plans, start=1)
            ]
        groups.append(entry)
    return {
        "workflow": workflow.name,
        "slo_ms": split.slo_ms,
        "feasible": split.feasible,
        "groups": groups,
        "unprofiled": [f for f in workflow.functions if f not in profiled],
    }


def _plan(
    rank: int, plan: Plan, best: Plan, budget_ms: float, profiles: Mapping[str, Profile],
    pricing: Pricing,
) -> dict[str, Any]:
    return {
        "rank": rank,
        "cost_per_request": plan.cost,
        "latency_ms": plan.latency_ms,
        "feasible": plan.feasible,
        "configs": {f: _config(f, c, profiles[f], pricing) for f, c in plan.configs.items()},
        "why_not": None if rank == 1 else _why_not(plan, best, budget_ms),
    }


def _config(function: str, config: Config, profile: Profile, pricing: Pricing) -> dict[str, Any]:
    latency = profile.latency_ms[config]
    return {
        "batch": config.batch,
        "vcpu": config.vcpu,
        "vgpu": config.vgpu,
        "latency_ms": latency,
        "cost_per_request": pricing.cost_per_request(config, latency),
    }


def _why_not(plan: Plan, best: Plan, budget_ms: float) -> str:
    if not plan.feasible:
        return (f"its predicted latency {plan.latency_ms:.3g} ms exceeds the group's budget "
                f"{budget_ms:.3g} ms")
    if not best.feasible:  # pragma: no cover - a feasible plan always ranks first
        return "ranked after a faster plan"
    if plan.cost > best.cost:
        extra = (plan.cost / best.cost - 1) * 100 if best.cost > 0 else float("inf")
        return f"it costs {extra:.3g} % more per request than the chosen plan"
    return "it costs the same and is slower (or ties and ranks after by configuration)"
