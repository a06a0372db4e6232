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
