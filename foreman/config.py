"""Settings: one table that says every knob's flag, environment variable, type and default.

Nothing else in foreman reads `os.environ`. Precedence: command-line flag, then FOREMAN_*
environment variable, then the configuration file (foreman.toml, named by --config or
FOREMAN_CONFIG; its keys are the settings' names), then the default. A bad value or an
unknown key raises `ConfigError` with one line that names the setting, which the command
line prints instead of a traceback.

A renamed setting keeps its old spellings (flag, variable, key) for one release as an
`Alias`: each one used is reported in `Resolved.deprecations`, which `foreman serve` logs
once at start. Within one source the new spelling wins over the old; between sources the
usual precedence holds, whichever the spelling.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from foreman.durations import go_duration_seconds
from foreman.retry import BACKOFF_CAP
from foreman.upstream_specs import (
    BadURL,
    UpstreamSpec,
    parse_upstream_tables,
    parse_url_list,
    specs_from_urls,
)


class ConfigError(Exception):
    """A setting has a value foreman cannot run with."""


def default_db_path(env: Mapping[str, str]) -> Path:
    """Under the user's state directory (XDG_STATE_HOME, else ~/.local/state)."""
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "foreman" / "foreman.db"


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


def parse_keep_alive(raw: str) -> str:
    """A keep_alive Ollama accepts: a Go duration ("30m", "1h30m", "-1m") or seconds."""
    value = raw.strip()
    if go_duration_seconds(value) is not None or re.fullmatch(r"-?\d+", value):
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


# the URL schemes that select PostgreSQL (libpq's); anything else names a SQLite file
DATABASE_URL_SCHEMES = ("postgresql", "postgres")
# what a database URL's password is shown as
MASK = "***"


def is_database_url(db: str | Path) -> bool:
    """Whether `--db` names a PostgreSQL database rather than a SQLite file. A URL that
    went through `Path` has lost one of its slashes, so the scheme alone decides."""
    text = str(db).strip()
    return ":" in text and text.partition(":")[0].lower() in DATABASE_URL_SCHEMES


def parse_db(raw: str) -> Path | str:
    """A SQLite file's path, or a PostgreSQL URL (kept as given, checked for its shape
    only: whether the server answers is checked at start)."""
    if not is_database_url(raw):
        return parse_path(raw)
    url = raw.strip()
    if any(c.isspace() for c in url):
        raise ValueError("a database URL has no spaces")
    try:
        urllib.parse.urlsplit(url).port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError("the database URL's port must be a number") from None
    return url


def mask_password(url: str) -> str:
    """`url` with its password (in the user part or a `password=` parameter) replaced by
    `***`; the rest is kept, so the operator still sees which server and database."""
    try:
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError:  # not even a URL: show its scheme alone
        return f"{url.partition(':')[0]}://{MASK}"
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        url = url.replace(netloc, f"{user.partition(':')[0]}:{MASK}@{host}", 1)
    return re.sub(r"(?i)([?&]password=)[^&#]*", rf"\1{MASK}", url)


def parse_non_negative_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a number, zero or more")
    return value


_SIZE = re.compile(r"^(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?$")
_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(raw: str) -> int:
    """Bytes: a whole number, or with a binary unit ("32MiB", "512k")."""
    found = _SIZE.match(raw.strip().lower())
    if not found:
        raise ValueError('must be a size in bytes, such as "33554432" or "32MiB"')
    unit = found.group(2) or "b"
    value = int(found.group(1)) * _SIZE_UNITS.get(unit[0], 1)
    if value < 1:
        raise ValueError("must be at least one byte")
    return value


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def parse_log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("text", "json"):
        raise ValueError("must be text or json")
    return value


def parse_secret(raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("must be a non-empty token without white space")
    return value


@attrs.frozen
class Alias:
    """A setting's old spellings, still read for one release after a rename."""

    # the foreman.toml key, which is also the flag's argparse destination
    name: str
    flag: str
    env: str


@attrs.frozen
class Setting:
    name: str
    flag: str
    env: str
    parse: Callable[[str], Any]
    default: str | None
    help: str
    # printed as <redacted> by `foreman config`; never logged
    secret: bool = False
    # old spellings that still work, with a deprecation warning at start
    aliases: tuple[Alias, ...] = ()

    @property
    def dest(self) -> str:
        return self.name


# quoted in days by the help text
_RETENTION_DAYS = 7

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "ollama_url",
        "--ollama",
        "FOREMAN_OLLAMA_URL",
        parse_url_list,
        "http://127.0.0.1:11434",
        "base URL of an Ollama server; repeat the flag (or separate URLs by commas) for several",
    ),
    Setting("host", "--host", "FOREMAN_HOST", parse_host, "127.0.0.1", "address to listen on"),
    Setting("port", "--port", "FOREMAN_PORT", parse_port, "11435", "port to listen on (0: any)"),
    Setting(
        "db",
        "--db",
        "FOREMAN_DB",
        parse_db,
        None,
        "SQLite database file (default: ~/.local/state/foreman/foreman.db), or a"
        " postgresql:// URL: replicas sharing one queue (docs/operations.md)",
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
        f"base seconds of the exponential retry backoff (capped at {BACKOFF_CAP:g})",
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
        str(_RETENTION_DAYS * 24 * 3600),
        "seconds a finished job is kept before the janitor purges it"
        f" (default {_RETENTION_DAYS} days)",
    ),
    Setting(
        "log_level",
        "--log-level",
        "FOREMAN_LOG_LEVEL",
        parse_log_level,
        "info",
        "debug, info, warning or error",
    ),
    Setting(
        "log_format",
        "--log-format",
        "FOREMAN_LOG_FORMAT",
        parse_log_format,
        "text",
        "text (for people) or json (one JSON object a line)",
    ),
    Setting(
        "api_keys_file",
        "--api-keys-file",
        "FOREMAN_API_KEYS_FILE",
        parse_path,
        None,
        "file of API keys, one `NAME KEY SCOPE[,SCOPE]` a line (default: none, open access)",
    ),
    Setting(
        "metrics_token",
        "--metrics-token",
        "FOREMAN_METRICS_TOKEN",
        parse_secret,
        None,
        "bearer token that may read /metrics (besides admin keys)",
        secret=True,
    ),
    Setting(
        "max_queue",
        "--max-queue",
        "FOREMAN_MAX_QUEUE",
        parse_positive_int,
        "10000",
        "queued jobs beyond which new jobs are refused with 503 and Retry-After",
    ),
    Setting(
        "max_batch",
        "--max-batch",
        "FOREMAN_MAX_BATCH",
        parse_positive_int,
        "1000",
        "jobs one POST /jobs/batch may carry (413 beyond it)",
    ),
    Setting(
        "max_streams",
        "--max-streams",
        "FOREMAN_MAX_STREAMS",
        parse_positive_int,
        "256",
        "event streams (/jobs/events, /jobs/{id}/events, /queue/events) open at once;"
        " the next is refused with 503 and Retry-After",
    ),
    Setting(
        "max_streams_per_key",
        "--max-streams-per-key",
        "FOREMAN_MAX_STREAMS_PER_KEY",
        parse_positive_int,
        "32",
        "event streams one API key may hold open; its next is refused with 429 and Retry-After",
    ),
    Setting(
        "max_body",
        "--max-body",
        "FOREMAN_MAX_BODY",
        parse_size,
        "32MiB",
        "largest request body accepted (413 beyond it)",
    ),
    Setting(
        "read_timeout",
        "--read-timeout",
        "FOREMAN_READ_TIMEOUT",
        parse_positive_float,
        "300",
        "seconds of silence foreman accepts from Ollama inside a streamed job or a small call",
    ),
    Setting(
        "job_timeout",
        "--job-timeout",
        "FOREMAN_JOB_TIMEOUT",
        parse_positive_float,
        "3600",
        "seconds one attempt of a job may run, load included (then it is a transient failure)",
    ),
    Setting(
        "shutdown_grace",
        "--shutdown-grace",
        "FOREMAN_SHUTDOWN_GRACE",
        parse_non_negative_float,
        "30",
        "seconds the running jobs may finish after SIGTERM before they go back to the queue",
    ),
    # the tunnel heartbeat; once named keepalive, one underscore from Ollama's keep_alive
    Setting(
        "heartbeat",
        "--heartbeat",
        "FOREMAN_HEARTBEAT",
        parse_non_negative_float,
        "30",
        "seconds of waiting after which a streamed request gets heartbeat bytes (0: never)",
        aliases=(Alias("keepalive", "--keepalive", "FOREMAN_KEEPALIVE"),),
    ),
    Setting(
        "heartbeat_unstreamed",
        "--heartbeat-unstreamed",
        "FOREMAN_HEARTBEAT_UNSTREAMED",
        parse_bool,
        "false",
        "also send heartbeats to non-streamed requests (early headers, whitespace before the JSON)",
        aliases=(
            Alias("keepalive_unstreamed", "--keepalive-unstreamed", "FOREMAN_KEEPALIVE_UNSTREAMED"),
        ),
    ),
    Setting(
        "max_connections",
        "--max-connections",
        "FOREMAN_MAX_CONNECTIONS",
        parse_positive_int,
        None,
        "client connections held at once; beyond it a new one gets 503 and is closed "
        "(default: what the open-file limit leaves after a reserve, at most 4096)",
    ),
    Setting(
        "header_timeout",
        "--header-timeout",
        "FOREMAN_HEADER_TIMEOUT",
        parse_positive_float,
        "10",
        "seconds a new connection has to send its first request's head before it is closed",
    ),
)

SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
# foreman.toml's array of tables, one per upstream (see foreman.upstream_specs)
UPSTREAM_KEY = "upstream"
# the settings each old foreman.toml key still names
ALIASES: dict[str, tuple[Setting, Alias]] = {a.name: (s, a) for s in SETTINGS for a in s.aliases}


def default_of(name: str) -> Any:
    """A setting's default value: its table text, parsed (None when it has none).

    The table is the one place a default is written; `Settings` and the parts that take
    their own settings object (the worker's) read their defaults from here.
    """
    setting = SETTINGS_BY_NAME[name]
    return None if setting.default is None else setting.parse(setting.default)


@attrs.frozen
class Settings:
    """The resolved settings. Each field's default is the table's (see `default_of`)."""

    ollama_url: str = default_of("ollama_url")
    host: str = default_of("host")
    port: int = default_of("port")
    # the table has none: it depends on the environment, read when Settings is made
    db: Path = attrs.field(factory=lambda: default_db_path(os.environ))
    # a postgresql:// URL given as `db`: this foreman is a replica on that database, and
    # `db` (a SQLite file) is not used
    database_url: str | None = attrs.field(default=None, repr=False)
    max_wait: float = default_of("max_wait")
    keep_alive: str = default_of("keep_alive")
    retry_backoff: float = default_of("retry_backoff")
    max_attempts: int = default_of("max_attempts")
    retention: float = default_of("retention")
    log_level: str = default_of("log_level")
    log_format: str = default_of("log_format")
    api_keys_file: Path | None = default_of("api_keys_file")  # noqa: RUF009 - None
    metrics_token: str | None = attrs.field(default=default_of("metrics_token"), repr=False)
    max_queue: int = default_of("max_queue")
    max_batch: int = default_of("max_batch")
    max_streams: int = default_of("max_streams")
    max_streams_per_key: int = default_of("max_streams_per_key")
    max_body: int = default_of("max_body")
    read_timeout: float = default_of("read_timeout")
    job_timeout: float = default_of("job_timeout")
    shutdown_grace: float = default_of("shutdown_grace")
    heartbeat: float = default_of("heartbeat")
    heartbeat_unstreamed: bool = default_of("heartbeat_unstreamed")
    # None: derived at start from the open-file limit (foreman.connections)
    max_connections: int | None = default_of("max_connections")
    header_timeout: float = default_of("header_timeout")
    # the Ollama servers foreman drives; without `[[upstream]]` tables, one per URL of
    # `ollama_url` (comma-separated), one slot each
    upstreams: tuple[UpstreamSpec, ...] = attrs.field(
        default=attrs.Factory(lambda self: specs_from_urls(self.ollama_url), takes_self=True)
    )

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
    parser.add_argument(
        "--config",
        dest="config",
        default=None,
        help="configuration file (TOML; keys are the settings' names) [FOREMAN_CONFIG]",
    )
    for s in SETTINGS:
        default = s.default if s.default is not None else "see help"
        parser.add_argument(
            s.flag,
            dest=s.dest,
            default=None,
            # several upstreams: each --ollama adds one (resolve joins them by commas)
            action="append" if s.name == "ollama_url" else "store",
            help=f"{s.help} [{s.env}, default {default}]",
        )
        for alias in s.aliases:
            parser.add_argument(
                alias.flag,
                dest=alias.name,
                default=None,
                help=f"deprecated: the old name of {s.flag} [{alias.env}]",
            )


# what argparse gives: a flag's text, a repeated flag's texts (--ollama), or None
Flags = Mapping[str, str | list[str] | None]


@attrs.frozen
class Resolved:
    """The settings' values, where each came from, and the old spellings that were used."""

    values: dict[str, Any]
    # a flag, a variable, `file:key`, or "default"
    sources: dict[str, str]
    # one line per old spelling given (see `Alias`), for the log at start
    deprecations: tuple[str, ...] = ()

    @property
    def settings(self) -> Settings:
        return Settings(**self.values)


def resolve(flags: Flags, env: Mapping[str, str]) -> Settings:
    """Settings from flags over environment over file over defaults; raises ConfigError."""
    return resolve_all(flags, env).settings


def resolve_with_sources(
    flags: Flags, env: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each setting's value and where it came from (a flag, a variable, the file, default)."""
    resolved = resolve_all(flags, env)
    return resolved.values, resolved.sources


def resolve_all(flags: Flags, env: Mapping[str, str]) -> Resolved:
    """Each setting's value, its source, and the deprecated spellings given."""
    # a repeated flag (--ollama) reads as one comma-separated list, as its variable does
    flag_texts = {k: ",".join(v) if isinstance(v, list) else v for k, v in flags.items()}
    file_path = flag_texts.get("config") or env.get("FOREMAN_CONFIG")
    config_file = read_config_file(parse_path(file_path)) if file_path else ConfigFile({})
    from_file = config_file.values
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    deprecations: list[str] = []
    for s in SETTINGS:
        # each source in precedence order: (what it holds, the setting's spellings in it)
        layers = (
            (flag_texts, [(s.dest, s.flag)] + [(a.name, a.flag) for a in s.aliases]),
            (env, [(s.env, s.env)] + [(a.env, a.env) for a in s.aliases]),
            (
                from_file,
                [(s.name, f"{file_path}:{s.name}")]
                + [(a.name, f"{file_path}:{a.name}") for a in s.aliases],
            ),
        )
        raw: str | None = None
        source = "default"
        for given, spellings in layers:
            found, notes = _lookup(given, spellings)
            deprecations += notes
            if raw is None and found is not None:
                raw, source = found
        if raw is None:
            if s.default is None:
                continue
            raw = s.default
        try:
            values[s.name] = s.parse(raw)
        except ValueError as exc:
            reason = str(exc)
            if "invalid literal" in reason or "could not convert" in reason:
                reason = "must be a number"
            # one URL of a list is named alone
            shown = exc.part if isinstance(exc, BadURL) else raw
            raise ConfigError(f"{source}={shown!r}: {reason}") from None
        sources[s.name] = source
    if "db" not in values:
        values["db"] = default_db_path(env)
        sources["db"] = "default"
    elif isinstance(values["db"], str):
        values["database_url"] = values["db"]
        values["db"] = default_db_path(env)
    _resolve_upstreams(values, sources, config_file, file_path)
    return Resolved(values, sources, tuple(deprecations))


def _resolve_upstreams(
    values: dict[str, Any], sources: dict[str, str], config: ConfigFile, file_path: str | None
) -> None:
    """The upstreams: URLs from a flag or the environment replace the file's tables;
    without them, the file's tables, else `ollama_url` (the file's or the default).
    `ollama_url` stays their URLs joined by commas. Each upstream's source is recorded
    as `upstream N` (from 1) for `render`."""
    from_tables = config.upstreams and sources["ollama_url"] == "default"
    if from_tables:
        upstreams = config.upstreams
        values["ollama_url"] = ",".join(u.url for u in upstreams)
        sources["ollama_url"] = f"{file_path}:upstream"
    else:
        upstreams = specs_from_urls(values["ollama_url"])
    values["upstreams"] = upstreams
    for i, _ in enumerate(upstreams, 1):
        sources[f"upstream {i}"] = (
            f"{file_path}:upstream {i}" if from_tables else sources["ollama_url"]
        )


def _lookup(
    given: Mapping[str, str | None], spellings: list[tuple[str, str]]
) -> tuple[tuple[str, str] | None, list[str]]:
    """A setting in one source: (its text, where it came from) by the first of `spellings`
    (key, where) given, the new one first; and a deprecation line per old one given."""
    found: tuple[str, str] | None = None
    notes: list[str] = []
    new = spellings[0][1]
    for i, (key, where) in enumerate(spellings):
        raw = given.get(key)
        if raw is None:
            continue
        if i > 0:
            fate = f"ignored: {found[1]} is set" if found else "still accepted in this release"
            notes.append(f"{where} is deprecated, use {new} ({fate})")
        if found is None:
            found = (raw, where)
    return found, notes


@attrs.frozen
class ConfigFile:
    """What a foreman.toml says: its settings, as the text a flag would carry, and its
    `[[upstream]]` tables, checked (none: empty)."""

    values: dict[str, str]
    upstreams: tuple[UpstreamSpec, ...] = ()


def read_config_file(path: Path) -> ConfigFile:
    """The settings and upstreams a foreman.toml sets; raises ConfigError (one line) for a
    missing file, bad TOML, an unknown key, a value of a type no setting takes, or a bad
    `[[upstream]]` table."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "invalid TOML"
        raise ConfigError(f"{path}: not valid TOML: {reason}") from None
    out: dict[str, str] = {}
    upstreams: tuple[UpstreamSpec, ...] = ()
    for key, value in data.items():
        if key == UPSTREAM_KEY:
            if "ollama_url" in data:
                raise ConfigError(
                    f"{path}: give either ollama_url or [[upstream]] tables, not both"
                )
            try:
                upstreams = parse_upstream_tables(value)
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        elif key not in SETTINGS_BY_NAME and key not in ALIASES:
            known = ", ".join(sorted([*SETTINGS_BY_NAME, UPSTREAM_KEY]))
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {known})")
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            out[key] = str(value)
        else:
            raise ConfigError(f"{path}:{key}: must be a string, a number or a boolean")
    return ConfigFile(out, upstreams)


def render(values: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    """The effective configuration as foreman.toml text, secrets redacted, each line
    commented with where its value came from. The upstreams, when given, are written as
    `[[upstream]]` tables at the end (in place of `ollama_url`, which they make)."""
    upstreams: tuple[UpstreamSpec, ...] = values.get("upstreams", ())
    lines = []
    for s in SETTINGS:
        if s.name not in values:
            lines.append(f"# {s.name} is not set")
            continue
        value = values[s.name]
        source = sources.get(s.name, "default")
        if s.name == "db" and values.get("database_url"):
            value = mask_password(values["database_url"])
        if s.name == "ollama_url" and upstreams:
            lines.append(f"# {s.name} is {_quoted(value)}: the [[upstream]] tables below")
            continue
        if s.secret:
            text = '"<redacted>"'
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = _quoted(str(value))
        lines.append(f"{s.name} = {text}  # {source}")
    for i, spec in enumerate(upstreams, 1):
        lines += ["", f"[[{UPSTREAM_KEY}]]  # {sources.get(f'upstream {i}', 'default')}"]
        lines += [f"url = {_quoted(spec.url)}", f"name = {_quoted(spec.name)}"]
        lines.append(f"slots = {spec.slots}")
        if spec.models is None:
            lines.append("# models: not set, whatever its /api/tags lists")
        else:
            lines.append(f"models = [{', '.join(_quoted(g) for g in spec.models)}]")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    """A TOML basic string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
