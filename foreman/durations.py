"""Go's duration strings ("30m", "1h30m", "-1.5s"), which Ollama reads for keep_alive.

Pure. The one reader of them in foreman: the configuration checks `FOREMAN_KEEP_ALIVE`
with it, and a request whose keep_alive amounts to zero is an unload command.
"""

from __future__ import annotations

import re

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?:ns|us|µs|ms|s|m|h)"
_DURATION = re.compile(rf"[-+]?(?:0|(?:{_NUMBER}{_UNIT})+)")
_PART = re.compile(rf"({_NUMBER})({_UNIT})")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_seconds(text: str) -> float | None:
    """The seconds `text` stands for, or None when it is not a Go duration.

    As Go's `time.ParseDuration` reads it: an optional sign, then numbers each with a
    unit; "0" alone needs none. Nothing around it is ignored, white space included.
    """
    if not _DURATION.fullmatch(text):
        return None
    seconds = sum(float(number) * _SECONDS[unit] for number, unit in _PART.findall(text))
    return -seconds if text.startswith("-") else seconds
