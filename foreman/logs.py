"""Log output: human-readable lines by default, or one JSON object a line.

Every line about a job names it (`job <id>` in the text); the JSON form also carries it
as `job_id`, taken from the record's `job_id` extra or from the message itself. Secrets
never reach a log line: keys are logged by name only, and bodies not at all.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from foreman.timefmt import rfc3339

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# a job id (a ULID) named in a message
_JOB = re.compile(r"\bjob ([0-9A-HJKMNP-TV-Z]{26})\b")
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        job_id = getattr(record, "job_id", None)
        if job_id is None:
            found = _JOB.search(message)
            job_id = found.group(1) if found else None
        if job_id is not None:
            out["job_id"] = job_id
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in out and name != "job_id":
                out[name] = value if isinstance(value, str | int | float | bool) else repr(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # the access log is foreman's own (foreman.access); httpx's request lines are noise
    logging.getLogger("httpx").setLevel(logging.WARNING)
