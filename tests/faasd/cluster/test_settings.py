"""The cluster keys: parsing, the gossip-key rule, and their place in the daemon's config."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from faasd.cluster.settings import ClusterConfigError, cluster_settings, split_hostport
from faasd.config import ConfigError, load_config

KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.2", ("127.0.0.2", 7946)),
    ("127.0.0.2:8000", ("127.0.0.2", 8000)),
    ("node-a", ("node-a", 7946)),
    ("[::1]:7000", ("::1", 7000)),
    ("[::1]", ("::1", 7946)),
    ("::1", ("::1", 7946)),
])
def test_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert split_hostport(text, 7946) == expected


@pytest.mark.parametrize("text", [":80", "a:b", "a:0", "a:70000"])
def test_bad_addresses_say_how_to_write_them(text: str) -> None:
    with pytest.raises(ClusterConfigError, match=r"HOST|port"):
        split_hostport(text, 7946)


def test_loopback_needs_no_key_and_names_nodes_apart() -> None:
    s = cluster_settings("127.0.0.3", join=["127.0.0.2"], voter=True)
    assert (s.host, s.port, s.join, s.voter, s.gossip_key) == (
        "127.0.0.3", 7946, ("127.0.0.2:7946",), True, None)
    assert s.node.endswith("-127.0.0.3")
    assert s.rpc == ("127.0.0.3", 7373)  # RPC stays on this node's own loopback address


@pytest.mark.parametrize(("addr", "join"), [("10.0.0.5", []), ("127.0.0.2", ["10.0.0.6"]),
                                            ("node-a", [])])
def test_gossip_off_loopback_without_a_key_is_refused(addr: str, join: list[str]) -> None:
    with pytest.raises(ClusterConfigError, match="--gossip-key-file"):
        cluster_settings(addr, join=join)


def test_a_key_file_allows_any_address(tmp_path: Path) -> None:
    key = tmp_path / "gossip.key"
    key.write_text(KEY + "\n")
    s = cluster_settings("10.0.0.5:7000", gossip_key_file=key, node_name="a")
    assert (s.gossip_key, s.node, s.rpc) == (KEY, "a", ("127.0.0.1", 7373))


@pytest.mark.parametrize(("content", "problem"), [("not base64!", "not base64"),
                                                  (base64.b64encode(b"short").decode(), "5 bytes")])
def test_a_bad_key_says_how_to_make_one(tmp_path: Path, content: str, problem: str) -> None:
    key = tmp_path / "gossip.key"
    key.write_text(content)
    with pytest.raises(ClusterConfigError, match=problem):
        cluster_settings("127.0.0.2", gossip_key_file=key)
    with pytest.raises(ClusterConfigError, match="cannot read"):
        cluster_settings("127.0.0.2", gossip_key_file=tmp_path / "missing")


def test_etcd_endpoints_must_be_urls() -> None:
    with pytest.raises(ClusterConfigError, match="http://HOST:2379"):
        cluster_settings("127.0.0.2", etcd=["127.0.0.9:2379"])


def test_the_keys_come_from_file_env_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "faasd.yaml"
    path.write_text("cluster_addr: 127.0.0.4\njoin: [127.0.0.2, 127.0.0.3]\nvoter: true\n")
    config = load_config(path, env={})
    assert (config.cluster_addr, config.join, config.voter) == (
        "127.0.0.4", ("127.0.0.2", "127.0.0.3"), True)
    env = {"FAASD_CLUSTER_ADDR": "127.0.0.5", "FAASD_ETCD": "http://127.0.0.2:2379,"
           "http://127.0.0.3:2379", "FAASD_VOTER": "false"}
    config = load_config(path, env=env, overrides={"node_name": "e"})
    assert config.etcd == ("http://127.0.0.2:2379", "http://127.0.0.3:2379")
    assert (config.cluster_addr, config.voter, config.node_name) == ("127.0.0.5", False, "e")
    settings = config.cluster_settings()
    assert settings is not None and settings.node == "e"
    assert load_config(env={}).cluster_settings() is None


@pytest.mark.parametrize(("values", "problem"), [
    ({"cluster_addr": "10.1.2.3"}, "refusing to gossip unencrypted with 10.1.2.3"),
    ({"voter": True}, "need cluster_addr"),
    ({"cluster_addr": "127.0.0.2", "voter": "maybe"}, "voter must be true or false"),
    ({"cluster_addr": "127.0.0.2", "join": 5}, "join must be a list"),
])
def test_config_errors_are_one_line_with_the_fix(values: dict[str, object],
                                                  problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        load_config(env={}, overrides=values)
    assert "\n" not in str(caught.value)
