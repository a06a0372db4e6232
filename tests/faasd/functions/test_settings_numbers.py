"""Every numeric setting of a function's faasd.yaml is a finite number, or a DeployError that
names the file, the line and the key: whatever number YAML can write."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from faasd.errors import DeployError
from faasd.functions.settings import _RULES, _SECTION_OF, MAX_NUMBER, parse_settings

yaml_numbers = st.one_of(
    st.sampled_from([".nan", ".NaN", ".inf", "-.inf", "+.inf", ".Inf", "1e999", "1.0e999",
                     "-1.0e999", "9" * 400, "-" + "9" * 400, "0", "1", "2.5", "0x10",
                     "1_000"]),
    st.floats().map(repr),
    st.integers(-(10**30), 10**30).map(str),
)


@given(key=st.sampled_from(sorted(_RULES)), number=yaml_numbers)
def test_a_numeric_setting_is_finite_or_refused(key: str, number: str) -> None:
    section = _SECTION_OF.get(key)
    text = f"{section}:\n  {key}: {number}\n" if section else f"{key}: {number}\n"
    try:
        values = parse_settings(text)
    except DeployError as exc:
        assert exc.message.startswith("faasd.yaml line ") and key in exc.message
        assert len(exc.message) < 500
        return
    value, _ = values[key]
    assert value is None or (isinstance(value, int | float) and abs(value) <= MAX_NUMBER
                             and math.isfinite(value)), value
