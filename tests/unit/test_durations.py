"""Go's duration strings, read once for the configuration and for unload requests."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.config import parse_keep_alive
from foreman.durations import go_duration_seconds

SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("-0", 0.0),
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("-1m", -60.0),
        ("+1.5s", 1.5),
        (".5h", 1800.0),
        ("1.m", 60.0),
        ("250ms", 0.25),
        ("2µs", 2e-6),
    ],
)
def test_a_go_duration_is_read_as_seconds(text: str, seconds: float) -> None:
    value = go_duration_seconds(text)
    assert value is not None
    assert math.isclose(value, seconds)


@pytest.mark.parametrize(
    "text", ["", "5", "-", "m", "30 m", " 30m", "30m ", "1h-5m", "--1m", ".m", "1d", "0x", "00"]
)
def test_what_go_would_refuse_is_not_a_duration(text: str) -> None:
    assert go_duration_seconds(text) is None


numbers = st.one_of(
    st.from_regex(r"\d{1,6}", fullmatch=True),
    st.from_regex(r"\d{1,6}\.\d{0,3}", fullmatch=True),
    st.from_regex(r"\.\d{1,3}", fullmatch=True),
)


@given(
    st.sampled_from(["", "+", "-"]),
    st.lists(st.tuples(numbers, st.sampled_from(sorted(SECONDS))), min_size=1, max_size=4),
)
def test_every_part_counts_and_the_sign_applies_to_the_whole(
    sign: str, parts: list[tuple[str, str]]
) -> None:
    text = sign + "".join(number + unit for number, unit in parts)
    expected = sum(float(number) * SECONDS[unit] for number, unit in parts)
    value = go_duration_seconds(text)
    assert value is not None
    assert math.isclose(value, -expected if sign == "-" else expected)


@pytest.mark.parametrize("text", ["+30m", ".5h", "1.h"])
def test_the_keep_alive_setting_takes_every_duration_ollama_reads(text: str) -> None:
    assert parse_keep_alive(text) == text
