"""The `profile_on_deploy` key: on by default, switched off from the file, env or code."""

from __future__ import annotations

from pathlib import Path

import pytest

from faasd.config import ConfigError, DaemonConfig, load_config


def test_on_by_default_and_off_by_file_or_environment(tmp_path: Path) -> None:
    assert DaemonConfig().profile_on_deploy is True
    config = tmp_path / "faasd.yaml"
    config.write_text("profile_on_deploy: false\n")
    assert load_config(config, env={}).profile_on_deploy is False
    for text, value in (("false", False), ("0", False), ("yes", True), ("TRUE", True)):
        loaded = load_config(None, env={"FAASD_PROFILE_ON_DEPLOY": text})
        assert loaded.profile_on_deploy is value


@pytest.mark.parametrize("bad", ["maybe", 1, "2"])
def test_a_bad_value_names_the_key_and_the_choices(tmp_path: Path, bad: object) -> None:
    config = tmp_path / "faasd.yaml"
    config.write_text(f"profile_on_deploy: {bad}\n")
    with pytest.raises(ConfigError, match="profile_on_deploy must be true or false"):
        load_config(config, env={})
