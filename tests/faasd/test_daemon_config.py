"""Configuration: defaults → file → env → overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from faasd.config import ConfigError, DaemonConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_file_documents_exactly_the_defaults() -> None:
    assert load_config(REPO / "configs" / "faasd.yaml", env={}) == DaemonConfig()


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    file = tmp_path / "faasd.yaml"
    file.write_text("port: 9001\nscheduler: fcfs\nfunction_defaults: {timeout_s: 5}\n")
    config = load_config(file, env={"FAASD_PORT": "9002", "FAASD_MAX_BODY_MB": "8"},
                         overrides={"port": 9003, "host": None})
    assert config.port == 9003
    assert config.max_body_bytes == 8 * 1024 * 1024
    assert config.host == "127.0.0.1"  # a None override is an unset flag
    assert config.function_defaults.timeout_s == 5.0
    assert load_config(file, env={"FAASD_PORT": "9002"}).port == 9002


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prot: 80\n", "unknown key(s) prot"),
        ("port: eighty\n", "port must be a int"),
        ("scheduler: magic\n", "unknown scheduler 'magic'"),
        ("function_defaults: {timeout: 3}\n", "unknown function_defaults key(s) timeout"),
        ("port: [1\n", "not valid YAML"),
        ("- 1\n", "must hold a mapping"),
    ],
)
def test_bad_files_are_errors_that_name_the_problem(tmp_path: Path, text: str,
                                                    fragment: str) -> None:
    file = tmp_path / "faasd.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(file, env={})
    assert fragment in str(info.value)


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", env={})


def test_vcpu_capacity_defaults_to_the_usable_cores() -> None:
    assert DaemonConfig().vcpu_capacity >= 1
    assert DaemonConfig(node_vcpu=3).vcpu_capacity == 3
