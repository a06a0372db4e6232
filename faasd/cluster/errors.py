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
