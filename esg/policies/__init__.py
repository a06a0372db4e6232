"""Scheduling policies by name, one module each, all behind `esg.policy.Policy`.

Both drivers pick a policy with `make_policy(name, settings)`: the daemon from `scheduler:` in
faasd.yaml, the simulator from its command line. Imports are lazy so that choosing `fcfs` does
not pay for the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from esg.policy import Policy

#: name -> "module:Class". Every class takes keyword settings only, each with a default.
POLICIES: dict[str, str] = {
    "esg": "esg.policies.esg:EsgPolicy",
    "esg-plus": "esg.policies.esg_plus:EsgPlusPolicy",
    "fcfs": "esg.policies.fcfs:FcfsPolicy",
    "infless": "esg.policies.infless:InflessPolicy",
    "fast-gshare": "esg.policies.fast_gshare:FastGSharePolicy",
    "orion": "esg.policies.orion:OrionPolicy",
    "aquatope": "esg.policies.aquatope:AquatopePolicy",
    "mqfq-sticky": "esg.policies.mqfq_sticky:MqfqStickyPolicy",
    "harmonybatch": "esg.policies.harmonybatch:HarmonyBatchPolicy",
    "inferfair": "esg.policies.inferfair:InferFairPolicy",
    "clockwork": "esg.policies.clockwork:ClockworkPolicy",
}


def policy_class(name: str) -> type[Any]:
    """The class of the policy called `name`; unknown names raise ValueError listing the known
    ones."""
    try:
        target = POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {known}") from None
    module_name, _, class_name = target.partition(":")
    cls: type[Any] = getattr(importlib.import_module(module_name), class_name)
    return cls


def make_policy(name: str, settings: Mapping[str, Any] | None = None) -> Policy:
    """Build the policy called `name`; unknown names raise ValueError listing the known ones."""
    policy: Policy = policy_class(name)(**dict(settings or {}))
    return policy
