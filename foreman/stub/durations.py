"""keep_alive decoding, exactly as Ollama's Go server decodes it.

Ollama accepts a JSON number (seconds) or a Go duration string; anything else, and a string Go's
`time.ParseDuration` rejects, is a 400 whose text clients may show to users, so the messages here
copy Go's word for word. Durations are float seconds; `math.inf` means "keep loaded forever".
"""

from __future__ import annotations

import math
import re

_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_UNIT = re.compile(r"[^0-9.]*")

FOREVER = math.inf


class DurationError(ValueError):
    """A keep_alive value Ollama would reject with HTTP 400; str() is Ollama's message."""


def go_quote(text: str) -> str:
    """Quote like Go's %q for the plain strings that appear in error messages."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_go_duration(text: str) -> float:
    """Parse a Go duration string ("1h30m", "-5m", "300ms", "0") into seconds.

    Raises DurationError with Go's own message for the strings Go rejects, including a bare
    number such as "300", which Go refuses for lack of a unit.
    """
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise DurationError(f"time: invalid duration {go_quote(text)}")
    total = 0.0
    while rest:
        number = _NUMBER.match(rest)
        assert number is not None  # the pattern also matches the empty string
        whole, fraction = number.group(1), number.group(2)
        if not whole and not fraction:
            raise DurationError(f"time: invalid duration {go_quote(text)}")
        rest = rest[number.end() :]
        unit_match = _UNIT.match(rest)
        unit = unit_match.group(0) if unit_match else ""
        if not unit:
            raise DurationError(f"time: missing unit in duration {go_quote(text)}")
        if unit not in _UNITS:
            raise DurationError(f"time: unknown unit {go_quote(unit)} in duration {go_quote(text)}")
        rest = rest[len(unit) :]
        total += float(f"{whole or '0'}.{fraction or '0'}") * _UNITS[unit]
    return -total if negative else total


def _go_type_name(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return type(value).__name__


def parse_keep_alive(value: object) -> float | None:
    """Decode a request's keep_alive: None when unspecified, else seconds (inf = forever).

    Any negative value means forever, as in Ollama.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DurationError(f"Unsupported type: '{_go_type_name(value)}'")
    seconds = parse_go_duration(value) if isinstance(value, str) else float(value)
    if math.isnan(seconds):
        raise DurationError(f"Unsupported type: '{_go_type_name(value)}'")
    return FOREVER if seconds < 0 else seconds


def is_zero_keep_alive(value: object) -> bool:
    """True when the raw keep_alive is a valid zero: the marker of an unload request."""
    try:
        return parse_keep_alive(value) == 0.0
    except DurationError:
        return False
