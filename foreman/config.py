"""Settings: one table that says every knob's flag, environment variable, type and default.

Nothing else in foreman reads `os.environ`. Precedence: command-line flag, then FOREMAN_*
environment variable, then the default. A bad value raises `ConfigError` with one line that
names the setting, which the command line prints instead of a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs


class ConfigError(Exception):
    """A setting has a value foreman cannot run with."""


def default_db_path(env: Mapping[str, str]) -> Path:
    """Under the user's state directory (XDG_STATE_HOME, else ~/.local/state)."""
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "foreman" / "foreman.db"


def parse_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - validates the port number
    except ValueError as exc:
        raise ValueError("has an invalid port") from exc
    return raw.strip().rstrip("/")


def _whole_number(raw: str, reason: str) -> int:
    # int()'s own complaint would be reported as "must be a number", wrong for "1.5"
    try:
        return int(raw)
    except ValueError:
        raise ValueError(reason) from None


def parse_port(raw: str) -> int:
    port = _whole_number(raw, "must be a whole number between 0 and 65535")
    if not 0 <= port <= 65535:
        raise ValueError("must be between 0 and 65535")
    return port


def parse_host(raw: str) -> str:
    host = raw.strip()
    if not host or any(c.isspace() for c in host):
        raise ValueError("must be a host name or IP address")
    return host


def parse_positive_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number")
    return value


def parse_positive_int(raw: str) -> int:
    value = _whole_number(raw, "must be a positive whole number")
    if value < 1:
        raise ValueError("must be a positive whole number")
    return value


_GO_DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def parse_keep_alive(raw: str) -> str:
    """A keep_alive Ollama accepts: a Go duration ("30m", "1h30m", "-1m") or seconds."""
    value = raw.strip()
    if _GO_DURATION.match(value) or re.fullmatch(r"-?\d+", value):
        return value
    raise ValueError('must be a duration such as "30m", "1h" or "-1" (forever)')


def parse_log_level(raw: str) -> str:
    level = raw.strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError("must be one of debug, info, warning, error")
    return level


def parse_path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("must not be empty")
    return Path(raw).expanduser()


@attrs.frozen
class Setting:
    name: str
    flag: str
    env: str
    parse: Callable[[str], Any]
    default: str | None
    help: str

    @property
    def dest(self) -> str:
        return self.name


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "ollama_url",
        "--ollama",
        "FOREMAN_OLLAMA_URL",
        parse_url,
        "http://127.0.0.1:11434",
        "base URL of the Ollama server",
    ),
    Setting("host", "--host", "FOREMAN_HOST", parse_host, "127.0.0.1", "address to listen on"),
    Setting("port", "--port", "FOREMAN_PORT", parse_port, "11435", "port to listen on (0: any)"),
    Setting(
        "db",
        "--db",
        "FOREMAN_DB",
        parse_path,
        None,
        "SQLite database file (default: ~/.local/state/foreman/foreman.db)",
    ),
    Setting(
        "max_wait",
        "--max-wait",
        "FOREMAN_MAX_WAIT",
        parse_positive_float,
        "600",
        "seconds a job may wait before it jumps ahead of the resident model (starvation bound)",
    ),
    Setting(
        "keep_alive",
        "--keep-alive",
        "FOREMAN_KEEP_ALIVE",
        parse_keep_alive,
        "30m",
        "keep_alive sent when foreman loads a model, pinning it while its jobs drain",
    ),
    Setting(
        "retry_backoff",
        "--retry-backoff",
        "FOREMAN_RETRY_BACKOFF",
        parse_positive_float,
        "2",
        "base seconds of the exponential retry backoff (capped at 60)",
    ),
    Setting(
        "max_attempts",
        "--max-attempts",
        "FOREMAN_MAX_ATTEMPTS",
        parse_positive_int,
        "5",
        "attempts before a job that keeps failing transiently fails for good",
    ),
    Setting(
        "retention",
        "--retention",
        "FOREMAN_RETENTION",
        parse_positive_float,
        "604800",
        "seconds a finished job is kept before the janitor purges it (default 7 days)",
    ),
    Setting(
        "log_level",
        "--log-level",
        "FOREMAN_LOG_LEVEL",
        parse_log_level,
        "info",
        "debug, info, warning or error",
    ),
)


@attrs.frozen
class Settings:
    ollama_url: str = "http://127.0.0.1:11434"
    host: str = "127.0.0.1"
    port: int = 11435
    db: Path = attrs.field(factory=lambda: default_db_path(os.environ))
    max_wait: float = 600.0
    keep_alive: str = "30m"
    retry_backoff: float = 2.0
    max_attempts: int = 5
    retention: float = 7 * 24 * 3600.0
    log_level: str = "info"

    @property
    def listen_is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags stay None so the environment can fill them."""
    for s in SETTINGS:
        default = s.default if s.default is not None else "see help"
        parser.add_argument(
            s.flag, dest=s.dest, default=None, help=f"{s.help} [{s.env}, default {default}]"
        )


def resolve(flags: Mapping[str, str | None], env: Mapping[str, str]) -> Settings:
    """Settings from flags over environment over defaults; raises ConfigError."""
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = flags.get(s.dest)
        source = s.flag
        if raw is None:
            raw = env.get(s.env)
            source = s.env
        if raw is None:
            if s.default is None:
                continue
            raw, source = s.default, "default"
        try:
            values[s.name] = s.parse(raw)
        except ValueError as exc:
            reason = str(exc)
            if "invalid literal" in reason or "could not convert" in reason:
                reason = "must be a number"
            raise ConfigError(f"{source}={raw!r}: {reason}") from None
    if "db" not in values:
        values["db"] = default_db_path(env)
    return Settings(**values)
