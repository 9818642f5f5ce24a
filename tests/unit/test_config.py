"""Settings: flag over environment over default, and one clear line for a bad value."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import attrs
import pytest

from foreman.config import (
    SETTINGS,
    ConfigError,
    Settings,
    add_arguments,
    default_db_path,
    render,
    resolve,
    resolve_all,
)
from foreman.connections import DEFAULT_CEILING
from foreman.retry import BACKOFF_CAP
from foreman.worker import WorkerSettings

BY_NAME = {s.name: s for s in SETTINGS}


def parse_flags(*argv: str) -> dict[str, str | None]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return vars(parser.parse_args(list(argv)))


def test_defaults_apply_when_nothing_is_set():
    settings = resolve(parse_flags(), {"XDG_STATE_HOME": "/state"})
    assert settings == Settings(
        ollama_url="http://127.0.0.1:11434",
        host="127.0.0.1",
        port=11435,
        db=Path("/state/foreman/foreman.db"),
        max_wait=600.0,
        keep_alive="30m",
        retry_backoff=2.0,
        max_attempts=5,
        retention=7 * 24 * 3600.0,
        log_level="info",
    )


def test_every_setting_has_a_flag_an_env_var_and_a_field():
    # `upstreams` has no flag of its own: `ollama_url` or `[[upstream]]` tables make it;
    # nor has `database_url`: `db` makes it when it is a postgresql:// URL
    fields = {a.name for a in attrs.fields(Settings)} - {"upstreams", "database_url"}
    assert {s.name for s in SETTINGS} == fields
    for s in SETTINGS:
        assert s.flag.startswith("--")
        assert s.env.startswith("FOREMAN_")


@pytest.mark.parametrize(
    ("name", "flag_value", "env_value", "flag_wins", "env_wins"),
    [
        ("ollama_url", "http://a:1/", "http://b:2", "http://a:1", "http://b:2"),
        ("host", "0.0.0.0", "::1", "0.0.0.0", "::1"),
        ("port", "8000", "9000", 8000, 9000),
        ("db", "/a/x.db", "/b/y.db", Path("/a/x.db"), Path("/b/y.db")),
        ("max_wait", "5", "7.5", 5.0, 7.5),
        ("keep_alive", "1h30m", "-1", "1h30m", "-1"),
        ("retry_backoff", "0.5", "3", 0.5, 3.0),
        ("max_attempts", "2", "9", 2, 9),
        ("retention", "60", "3600", 60.0, 3600.0),
        ("log_level", "DEBUG", "warning", "debug", "warning"),
    ],
)
def test_flag_beats_environment_beats_default(name, flag_value, env_value, flag_wins, env_wins):
    s = BY_NAME[name]
    env = {s.env: env_value}

    assert getattr(resolve(parse_flags(s.flag, flag_value), env), name) == flag_wins
    assert getattr(resolve(parse_flags(), env), name) == env_wins
    default = resolve(parse_flags(), {"XDG_STATE_HOME": "/s"})
    assert getattr(default, name) not in (flag_wins, env_wins)


BAD_VALUES = [
    ("ollama_url", "127.0.0.1:11434", "must be an http:// or https:// URL with a host"),
    ("ollama_url", "ftp://host", "must be an http:// or https:// URL with a host"),
    ("ollama_url", "http://", "must be an http:// or https:// URL with a host"),
    ("ollama_url", "http://host:99999", "has an invalid port"),
    ("ollama_url", "http://host:port", "has an invalid port"),
    ("host", "", "must be a host name or IP address"),
    ("host", "my host", "must be a host name or IP address"),
    ("port", "http", "must be a whole number between 0 and 65535"),
    ("port", "80.5", "must be a whole number between 0 and 65535"),
    ("port", "-1", "must be between 0 and 65535"),
    ("port", "65536", "must be between 0 and 65535"),
    ("db", "   ", "must not be empty"),
    ("max_wait", "soon", "must be a number"),
    ("max_wait", "0", "must be a positive number"),
    ("max_wait", "-5", "must be a positive number"),
    ("max_wait", "nan", "must be a positive number"),
    ("max_wait", "inf", "must be a positive number"),
    ("keep_alive", "forever", 'must be a duration such as "30m", "1h" or "-1" (forever)'),
    ("keep_alive", "30 m", 'must be a duration such as "30m", "1h" or "-1" (forever)'),
    ("keep_alive", "", 'must be a duration such as "30m", "1h" or "-1" (forever)'),
    ("retry_backoff", "two", "must be a number"),
    ("retry_backoff", "0", "must be a positive number"),
    ("max_attempts", "0", "must be a positive whole number"),
    ("max_attempts", "1.5", "must be a positive whole number"),
    ("max_attempts", "many", "must be a positive whole number"),
    ("retention", "a week", "must be a number"),
    ("retention", "-1", "must be a positive number"),
    ("log_level", "verbose", "must be one of debug, info, warning, error"),
    ("max_streams", "0", "must be a positive whole number"),
    ("max_streams", "lots", "must be a positive whole number"),
    ("max_streams_per_key", "-3", "must be a positive whole number"),
    ("max_streams_per_key", "2.5", "must be a positive whole number"),
]


@pytest.mark.parametrize(("name", "raw", "reason"), BAD_VALUES)
def test_a_bad_flag_fails_with_one_line_naming_the_flag(name, raw, reason):
    s = BY_NAME[name]
    with pytest.raises(ConfigError) as caught:
        resolve(parse_flags(f"{s.flag}={raw}"), {})
    assert str(caught.value) == f"{s.flag}={raw!r}: {reason}"
    assert caught.value.__cause__ is None


@pytest.mark.parametrize(("name", "raw", "reason"), BAD_VALUES)
def test_a_bad_environment_value_fails_with_one_line_naming_the_variable(name, raw, reason):
    s = BY_NAME[name]
    with pytest.raises(ConfigError) as caught:
        resolve(parse_flags(), {s.env: raw})
    assert str(caught.value) == f"{s.env}={raw!r}: {reason}"


def test_a_bad_value_with_a_newline_still_reports_on_one_line():
    with pytest.raises(ConfigError) as caught:
        resolve({}, {"FOREMAN_PORT": "80\n81"})
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("FOREMAN_PORT=")


def test_a_good_flag_hides_a_bad_environment_value():
    assert resolve(parse_flags("--port", "1"), {"FOREMAN_PORT": "nope"}).port == 1


def test_default_db_path_is_under_xdg_state_home():
    assert default_db_path({"XDG_STATE_HOME": "/var/st"}) == Path("/var/st/foreman/foreman.db")
    assert resolve({}, {"XDG_STATE_HOME": "/var/st"}).db == Path("/var/st/foreman/foreman.db")


@pytest.mark.parametrize("env", [{}, {"XDG_STATE_HOME": ""}])
def test_default_db_path_falls_back_to_local_state_in_home(env):
    assert default_db_path(env) == Path.home() / ".local" / "state" / "foreman" / "foreman.db"


def test_db_path_expands_the_home_directory():
    assert resolve({"db": "~/q.db"}, {}).db == Path.home() / "q.db"


def test_a_postgresql_url_as_db_makes_a_replica_and_a_path_does_not():
    replica = resolve({}, {"FOREMAN_DB": "postgresql://foreman:s3cret@db.lan/foreman"})
    assert replica.database_url == "postgresql://foreman:s3cret@db.lan/foreman"
    assert replica.db == default_db_path({})
    assert resolve({"db": "postgres://db.lan/foreman"}, {}).database_url is not None
    assert resolve({"db": "/var/lib/foreman.db"}, {}).database_url is None
    # the password never shows in `foreman config`
    resolved = resolve_all({}, {"FOREMAN_DB": "postgresql://foreman:s3cret@db.lan/foreman"})
    text = render(resolved.values, resolved.sources)
    assert 'db = "postgresql://foreman:***@db.lan/foreman"' in text
    assert "s3cret" not in text


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://db.lan:port/foreman", "port must be a number"),
        ("postgresql://db.lan/foreman name", "no spaces"),
    ],
)
def test_a_bad_database_url_stops_foreman_with_one_line(url, reason):
    with pytest.raises(ConfigError, match=reason) as refused:
        resolve({"db": url}, {})
    assert "\n" not in str(refused.value)


def test_ollama_url_loses_trailing_slashes_and_whitespace():
    assert resolve({"ollama_url": " https://gpu.lan:11434/ "}, {}).ollama_url == (
        "https://gpu.lan:11434"
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("a.b", False)],
)
def test_listen_is_loopback(host, loopback):
    assert Settings(host=host, db=Path("x")).listen_is_loopback is loopback


def test_help_names_each_env_var():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    for s in SETTINGS:
        assert s.env in text


def test_stream_caps_default_to_256_in_all_and_32_per_key():
    settings = resolve(parse_flags(), {})
    assert (settings.max_streams, settings.max_streams_per_key) == (256, 32)
    env = {"FOREMAN_MAX_STREAMS": "10", "FOREMAN_MAX_STREAMS_PER_KEY": "2"}
    settings = resolve(parse_flags(), env)
    assert (settings.max_streams, settings.max_streams_per_key) == (10, 2)


README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_defaults() -> dict[str, str]:
    """The configuration table in README.md: each environment variable's default cell."""
    cells: dict[str, str] = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `--"):
            continue
        row = [cell.strip() for cell in line.strip("|").split("|")]
        cells[row[1].strip("`")] = row[2]
    return cells


def test_every_documented_default_is_the_settings_default(monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", "/state")
    settings = Settings()
    for s in SETTINGS:
        if s.name == "db":
            assert s.default is None
            assert settings.db == default_db_path({"XDG_STATE_HOME": "/state"})
            continue
        documented = None if s.default is None else s.parse(s.default)
        assert getattr(settings, s.name) == documented, s.name
    assert resolve(parse_flags(), {"XDG_STATE_HOME": "/state"}) == settings


def test_the_readme_states_the_same_defaults():
    cells = _readme_defaults()
    assert set(cells) == {s.env for s in SETTINGS}
    for s in SETTINGS:
        cell = cells[s.env]
        literal = re.match(r"`([^`]*)`", cell)
        if s.default is None:
            # a default that depends on the machine is described, not written as a value
            assert s.name == "db" or literal is None, (s.env, cell)
            continue
        assert literal is not None, (s.env, cell)
        assert s.parse(literal.group(1)) == s.parse(s.default), (s.env, cell)


def test_help_texts_and_the_readme_quote_the_defaults_they_depend_on():
    help_of = {s.name: s.help for s in SETTINGS}
    cells = _readme_defaults()
    readme = README.read_text(encoding="utf-8")
    cap = f"{BACKOFF_CAP:g}"
    assert f"capped at {cap})" in help_of["retry_backoff"]
    assert f"capped at {cap} s" in readme
    days = Settings().retention / (24 * 3600)
    assert f"(default {days:g} days)" in help_of["retention"]
    assert f"({days:g} days)" in cells["FOREMAN_RETENTION"]
    assert f"at most {DEFAULT_CEILING})" in help_of["max_connections"]
    assert f"at most {DEFAULT_CEILING}" in cells["FOREMAN_MAX_CONNECTIONS"]


def test_the_worker_takes_its_defaults_from_the_settings_table():
    assert WorkerSettings() == WorkerSettings.from_settings(Settings(db=Path("x")))
    chosen = Settings(
        db=Path("x"), keep_alive="1h", max_wait=5.0, retry_backoff=0.5, job_timeout=9.0
    )
    worker = WorkerSettings.from_settings(chosen)
    assert (worker.keep_alive, worker.max_wait, worker.retry_backoff, worker.job_timeout) == (
        "1h",
        5.0,
        0.5,
        9.0,
    )
    assert worker.retry_cap == BACKOFF_CAP
