"""Errors of the scheduling library: one rooted hierarchy with structured attributes.

Expected outcomes (no feasible plan, no free slice) are values, not exceptions; these are for
input that is wrong (a malformed instance or workflow) and for policy bugs the driver catches.
"""

from __future__ import annotations


class EsgError(Exception):
    """Root of every error raised by `esg`."""


class WorkflowError(EsgError):
    """A workflow DAG that cannot be scheduled as given; the message says how to fix it."""

    def __init__(self, workflow: str, detail: str) -> None:
        super().__init__(f"workflow {workflow!r}: {detail}")
        self.workflow = workflow
        self.detail = detail


class InstanceError(EsgError):
    """A malformed planning instance; `field` names the culprit (e.g. `functions[1].configs`)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class PolicyError(EsgError):
    """A policy returned an action the driver cannot carry out (a bug in the policy)."""
