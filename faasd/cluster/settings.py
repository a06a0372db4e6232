"""The cluster keys of `faasd up` checked and parsed (pure, apart from reading the key file).

`cluster_addr` HOST[:PORT] is where this node gossips (Serf, port 7946 by default); a voter's
etcd listens on the same host at 2379 (clients) and 2380 (peers). `join` peers are HOST[:PORT]
gossip addresses. Gossip leaves the host unencrypted without a key, so a node that binds or
joins anywhere but loopback refuses to start without `gossip_key_file` (a base64 key of 16, 24
or 32 bytes, as `serf keygen` prints).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SERF_PORT = 7946
RPC_PORT = 7373


class ClusterConfigError(ValueError):
    """A cluster setting that cannot be used; the message says which and how to fix it."""


@dataclass(frozen=True)
class ClusterSettings:
    node: str
    host: str
    port: int
    join: tuple[str, ...] = ()
    voter: bool = False
    etcd: tuple[str, ...] = ()
    gossip_key: str | None = None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def rpc(self) -> tuple[str, int]:
        """Serf's RPC: on the node's own loopback address (tests run one node per
        127.0.0.x), else on 127.0.0.1."""
        return (self.host if self.loopback else "127.0.0.1", RPC_PORT)


def split_hostport(text: str, default_port: int) -> tuple[str, int]:
    """HOST, [V6HOST], HOST:PORT or [V6HOST]:PORT → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ClusterConfigError(f"{text!r} has no host; write HOST or HOST:PORT")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ClusterConfigError(f"{text!r}: the port must be a number") from None
    if not 0 < port < 65536:
        raise ClusterConfigError(f"{text!r}: the port must be in 1..65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def parse_gossip_key(text: str, where: str) -> str:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ClusterConfigError(f"{where}: the gossip key is not base64; create one with "
                                 "`serf keygen > FILE`") from None
    if len(raw) not in (16, 24, 32):
        raise ClusterConfigError(f"{where}: the gossip key has {len(raw)} bytes; it needs 16, "
                                 "24 or 32 (`serf keygen` makes a 32-byte one)")
    return text.strip()


def cluster_settings(
    cluster_addr: str,
    join: Sequence[str] = (),
    voter: bool = False,
    etcd: Sequence[str] = (),
    gossip_key_file: Path | None = None,
    node_name: str | None = None,
) -> ClusterSettings:
    """Checked settings; `ClusterConfigError` with the fix when something cannot work."""
    host, port = split_hostport(cluster_addr, SERF_PORT)
    peers = []
    for peer in join:
        peer_host, peer_port = split_hostport(peer, SERF_PORT)
        peers.append(f"[{peer_host}]:{peer_port}" if ":" in peer_host
                     else f"{peer_host}:{peer_port}")
    for url in etcd:
        if not url.startswith(("http://", "https://")):
            raise ClusterConfigError(f"etcd endpoint {url!r} must be a URL like "
                                     "http://HOST:2379")
    key = None
    if gossip_key_file is not None:
        try:
            text = gossip_key_file.read_text()
        except OSError as exc:
            raise ClusterConfigError(f"cannot read the gossip key file {gossip_key_file}: "
                                     f"{exc.strerror}") from None
        key = parse_gossip_key(text, str(gossip_key_file))
    outside = [h for h in [host, *(split_hostport(p, SERF_PORT)[0] for p in join)]
               if not is_loopback(h)]
    if outside and key is None:
        raise ClusterConfigError(f"refusing to gossip unencrypted with {outside[0]}: pass "
                                 "--gossip-key-file FILE (make one with `serf keygen > FILE`, "
                                 "the same on every node)")
    name = node_name or default_node_name(host)
    return ClusterSettings(node=name, host=host, port=port, join=tuple(peers), voter=voter,
                           etcd=tuple(etcd), gossip_key=key)


def default_node_name(host: str) -> str:
    """The host name; on loopback (several nodes on one machine) the host name plus the
    address, so that each node's name is unique."""
    name = socket.gethostname()
    return f"{name}-{host}" if is_loopback(host) else name
