"""Members as faasd sees them: Serf's member maps decoded, with faasd's tags given names.

Tags are what every node gossips about itself (Serf caps a node's tags at 512 bytes, so only
small, slow-changing facts): `role` (`voter` or `worker`), `http` (the daemon's HTTP address,
HOST:PORT), `vcpu` (cores it offers) and, on voters, `etcd` (its etcd client URL, which lets
a node that joins find the election).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

TAG_ROLE = "role"
TAG_HTTP = "http"
TAG_VCPU = "vcpu"
TAG_ETCD = "etcd"


class Role(StrEnum):
    VOTER = "voter"
    WORKER = "worker"


class Status(StrEnum):
    """Serf's member states ("leaving" is shown as it comes; anything unknown as "failed")."""

    ALIVE = "alive"
    LEAVING = "leaving"
    LEFT = "left"
    FAILED = "failed"
    SUSPECT = "suspect"


@dataclass(frozen=True)
class Member:
    """One node as its agent gossips it: `address` is Serf's gossip HOST:PORT."""

    name: str
    address: str
    status: Status
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def role(self) -> str:
        return self.tags.get(TAG_ROLE, Role.WORKER.value)

    @property
    def http(self) -> str | None:
        return self.tags.get(TAG_HTTP)

    @property
    def etcd_url(self) -> str | None:
        return self.tags.get(TAG_ETCD)

    @property
    def alive(self) -> bool:
        return self.status is Status.ALIVE


def member_from_wire(raw: dict[str, Any]) -> Member:
    """A member map from `members` or a stream event (`Addr` is raw 4- or 16-byte IP)."""
    addr = raw.get("Addr", b"")
    host = str(ipaddress.ip_address(bytes(addr))) if addr else "?"
    port = int(raw.get("Port", 0))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        status = Status(str(raw.get("Status", "failed")))
    except ValueError:
        status = Status.FAILED
    tags = {str(k): str(v) for k, v in (raw.get("Tags") or {}).items()}
    return Member(name=str(raw["Name"]), address=address, status=status, tags=tags)
