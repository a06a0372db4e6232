"""Errors of the cluster package, rooted in `ClusterError` (a `FaasdError`, so JSON at the API)."""

from __future__ import annotations

from faasd.errors import FaasdError


class ClusterError(FaasdError):
    """Something about the cluster's engines went wrong; the message says what to do."""

    status = 503


class EngineMissing(ClusterError):
    """The `serf` or `etcd` executable is not installed; the message names the package."""


class EngineFailed(ClusterError):
    """An engine child exited or never became ready; the message names its log file."""


class SerfRpcError(ClusterError):
    """The Serf agent answered a request with an error (`Error` in the reply header)."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"serf {command}: {error}", command=command)
        self.command = command
        self.error = error


class EtcdError(ClusterError):
    """etcd answered with an error, or no endpoint could be reached."""


class StaleTerm(ClusterError):
    """A command carried a term older than one this node has seen: a deposed leader sent it."""

    status = 409

    def __init__(self, term: int, seen: int) -> None:
        super().__init__(f"stale term {term}: this node has seen term {seen}; a newer leader "
                         "places this work", reason="stale_term", term=term, seen=seen)


class NotRun(ClusterError):
    """The call did not run (its worker was unreachable, refused it, or lacks the version):
    its entry node places it again."""

    status = 503


class WorkerLost(ClusterError):
    """The node running the call stopped answering mid-run, and the function says
    `idempotent: false`, so it is not run again (it may have run once)."""

    status = 502


class InputLost(ClusterError):
    """A workflow stage's input, kept on the node that produced it, could not be read (that
    node died, or the tensors expired): running the stage again would not bring them back,
    so the workflow runner runs the whole call again (`faasd.workflows.runner`)."""

    status = 502
