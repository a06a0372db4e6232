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
        ("port: eighty\n", "faasd.yaml: port must be a whole number, got 'eighty'"),
        ("scheduler: magic\n", "faasd.yaml: scheduler 'magic' is unknown; choose one of"),
        ("function_defaults: {timeout: 3}\n", "unknown function_defaults key(s) timeout"),
        ("port: [1\n", "faasd.yaml line 2: not valid YAML"),
        ("- 1\n", "must hold a mapping"),
        # a function's faasd.yaml rules hold for the defaults every function starts from
        ("function_defaults: {max_batch_size: 0}\n",
         "function_defaults: max_batch_size must be a whole number >= 1"),
        ("function_defaults: {timeout_s: -1}\n", "timeout_s must be a positive number"),
        ("function_defaults: {env: [a]}\n", "env must be a mapping NAME: value"),
        ("function_defaults: {min_instances: 3, max_instances: 2}\n",
         "min_instances (3) is larger than max_instances (2)"),
        # no silent conversions
        ("max_body_mb: 1.5\n", "max_body_mb must be a whole number, got 1.5"),
        ("max_sandboxes: true\n", "max_sandboxes must be a whole number, got True"),
        ("host: 12\n", "host must be text, got 12"),
        ("log_level: verbose\n", "log_level must be one of debug, info, warning, error"),
        ("max_body_mb: -1\n", "faasd.yaml: max_body_mb must be >= 1, got -1"),
        # every number finite: NaN passed every range check (nan < 0 is false)
        ("drain_timeout_s: .nan\n", "faasd.yaml: drain_timeout_s must be a finite number"),
        ("idle_timeout_s: .inf\n", "idle_timeout_s must be a finite number"),
        ("drain_timeout_s: 1" + "0" * 400 + "\n", "drain_timeout_s must be a finite number"),
        ("limits: {timeout_s: .inf}\n", "limits.timeout_s must be a finite number"),
        ("gpu: {health_interval_s: .nan}\n", "gpu.health_interval_s must be a finite number"),
        ("function_defaults: {slo_ms: .inf}\n",
         "function_defaults: slo_ms must be a finite number"),
        ("function_defaults: {keep_alive_s: .nan}\n", "keep_alive_s must be a finite number"),
    ],
)
def test_bad_files_are_errors_that_name_the_problem(tmp_path: Path, text: str,
                                                    fragment: str) -> None:
    file = tmp_path / "faasd.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(file, env={})
    assert fragment in str(info.value)


def test_a_bad_environment_variable_is_named() -> None:
    cases = [
        ({"FAASD_PORT": "abc"}, {},
         "environment variable FAASD_PORT: port must be a whole number, got 'abc'"),
        ({"FAASD_LOG_LEVEL": "verbose"}, {},
         "environment variable FAASD_LOG_LEVEL: log_level must be one of debug, info, warning, "
         "error, got 'verbose'"),
        ({}, {"port": 70000}, "the command line: port must be in 0..65535, got 70000"),
        ({"FAASD_DRAIN_TIMEOUT_S": "nan"}, {},
         "environment variable FAASD_DRAIN_TIMEOUT_S: drain_timeout_s must be a finite number, "
         "got 'nan' (.inf, nan and the like are not)"),
    ]
    for env, overrides, message in cases:
        with pytest.raises(ConfigError) as info:
            load_config(None, env=env, overrides=overrides)
        assert str(info.value) == message


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", env={})


def test_vcpu_capacity_defaults_to_the_usable_cores() -> None:
    assert DaemonConfig().vcpu_capacity >= 1
    assert DaemonConfig(node_vcpu=3).vcpu_capacity == 3


async def test_a_missing_functions_directory_fails_before_anything_starts(
    tmp_path: Path,
) -> None:
    from faasd.daemon import Daemon

    config = DaemonConfig(port=0, state_dir=tmp_path / "state",
                          functions_dir=tmp_path / "no-such-dir")
    with pytest.raises(ConfigError, match="no-such-dir does not exist; check --functions"):
        async with Daemon(config):
            pass
    assert not (tmp_path / "state").exists()  # not even the state directory was made
