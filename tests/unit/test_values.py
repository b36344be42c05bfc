"""values: the cheap path that answers most events agrees with the exact rule."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings, strategies as st

from ralph_monitor.values import RULES, check, number

NUMBER_FIELDS = [name for name, rule in RULES.items() if rule.kind in ("count", "amount")]
BOUNDS = [rule.maximum for rule in RULES.values() if rule.kind in ("count", "amount")]
EDGES = [v for b in BOUNDS for v in (int(b), int(b) - 1, int(b) + 1, float(b), float(b) * (1 + 1e-15),
                                     float(b) * (1 - 1e-15))]


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(NUMBER_FIELDS),
       value=st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(EDGES),
                       st.booleans(), st.text(max_size=5), st.decimals(allow_nan=False)))
def test_check_agrees_with_number(field: str, value: object) -> None:
    assert (check(field, value) is None) == (number(field, value)[1] is None)


def test_bounds_themselves() -> None:
    for field in NUMBER_FIELDS:
        bound = RULES[field].maximum
        assert check(field, int(bound)) is None and check(field, int(bound) + 1) is not None
        assert check(field, Decimal(bound)) is None
        assert check(field, -1) is not None and check(field, 0) is None
