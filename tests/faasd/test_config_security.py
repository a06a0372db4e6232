"""The security settings of faasd.yaml: allow_unconfined (a boolean) and metrics_access."""

from __future__ import annotations

from pathlib import Path

import pytest

from faasd.config import ConfigError, load_config


@pytest.mark.parametrize(("raw", "value"), [
    ("true", True), ("false", False), ("1", True), ("no", False), ("TRUE", True),
])
def test_allow_unconfined_from_the_environment(raw: str, value: bool) -> None:
    assert load_config(env={"FAASD_ALLOW_UNCONFINED": raw}).allow_unconfined is value


def test_allow_unconfined_from_yaml_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "faasd.yaml"
    path.write_text("allow_unconfined: true\nmetrics_access: open\n")
    config = load_config(path, env={})
    assert config.allow_unconfined is True and config.metrics_access == "open"
    assert load_config(env={}).allow_unconfined is False  # confined unless said otherwise
    path.write_text("allow_unconfined: maybe\n")
    with pytest.raises(ConfigError, match="allow_unconfined must be true or false"):
        load_config(path, env={})
    path.write_text("metrics_access: everyone\n")
    with pytest.raises(ConfigError, match="metrics_access must be admin, invoke or open"):
        load_config(path, env={})


def test_allow_unconfined_under_a_sandbox_section(tmp_path: Path) -> None:
    """`sandbox.allow_unconfined`, as the shipped faasd.yaml writes it."""
    path = tmp_path / "faasd.yaml"
    path.write_text("sandbox:\n  allow_unconfined: true\n")
    assert load_config(path, env={}).allow_unconfined is True
    shipped = Path(__file__).resolve().parents[2] / "configs" / "faasd.yaml"
    assert load_config(shipped, env={}).allow_unconfined is False
    for text, message in (
        ("sandbox: true\n", "sandbox must be a mapping"),
        ("sandbox: {network: true}\n", "unknown key.* under sandbox: network"),
        ("allow_unconfined: true\nsandbox: {allow_unconfined: false}\n", "both at the top"),
        ("sandbox: {allow_unconfined: maybe}\n", "allow_unconfined must be true or false"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(path, env={})
