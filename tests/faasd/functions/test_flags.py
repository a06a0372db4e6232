"""The true-or-false keys of a function's faasd.yaml: network and idempotent."""

from __future__ import annotations

import pytest

from faasd.errors import DeployError
from faasd.functions.settings import merge_settings, parse_settings
from faasd.functions.spec import FunctionSettings


def _settings(text: str) -> FunctionSettings:
    parsed = parse_settings(text)
    return merge_settings(FunctionSettings(), {k: v for k, (v, _) in parsed.items()})


def test_defaults_and_values() -> None:
    assert (FunctionSettings().network, FunctionSettings().idempotent) == (False, True)
    settings = _settings("network: true\nidempotent: false\n")
    assert (settings.network, settings.idempotent) == (True, False)


@pytest.mark.parametrize(("text", "fragment"), [
    ("network: 1\n", "network must be true or false, got 1"),
    ("idempotent: 'no way'\n", "idempotent must be true or false"),
])
def test_a_flag_that_is_not_a_boolean_is_a_deploy_error(text: str, fragment: str) -> None:
    with pytest.raises(DeployError, match=fragment):
        parse_settings(text)
