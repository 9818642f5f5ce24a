"""Renamed settings: the tunnel heartbeat was `keepalive`, one underscore from Ollama's
`keep_alive`. Its old flag, variable and file key still work for one release, each with one
deprecation line at start; given both spellings in one source, the new one wins."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from foreman import cli
from foreman.config import SETTINGS, add_arguments, render, resolve, resolve_all


def parse_flags(*argv: str) -> dict[str, str | None]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return vars(parser.parse_args(list(argv)))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "foreman.toml"
    path.write_text(text)
    return path


def test_the_new_spellings_work_and_warn_of_nothing(tmp_path: Path) -> None:
    flags = parse_flags("--heartbeat", "5", "--heartbeat-unstreamed", "true")
    resolved = resolve_all(flags, {})
    assert (resolved.settings.heartbeat, resolved.settings.heartbeat_unstreamed) == (5.0, True)
    assert resolved.deprecations == ()
    env = {"FOREMAN_HEARTBEAT": "6", "FOREMAN_HEARTBEAT_UNSTREAMED": "yes"}
    assert resolve_all(parse_flags(), env).settings.heartbeat == 6.0
    path = write(tmp_path, "heartbeat = 7\nheartbeat_unstreamed = true\n")
    resolved = resolve_all(parse_flags("--config", str(path)), {})
    assert resolved.settings.heartbeat == 7.0
    assert resolved.settings.heartbeat_unstreamed is True
    assert resolved.deprecations == ()


@pytest.mark.parametrize(
    ("flags", "env", "toml", "old"),
    [
        (("--keepalive", "5", "--keepalive-unstreamed", "on"), {}, "", "--keepalive"),
        (
            (),
            {"FOREMAN_KEEPALIVE": "5", "FOREMAN_KEEPALIVE_UNSTREAMED": "1"},
            "",
            "FOREMAN_KEEPALIVE",
        ),
        ((), {}, "keepalive = 5\nkeepalive_unstreamed = true\n", "foreman.toml:keepalive"),
    ],
)
def test_the_old_spellings_still_work_with_one_warning_each(
    tmp_path: Path, flags: tuple[str, ...], env: dict[str, str], toml: str, old: str
) -> None:
    if toml:
        flags = ("--config", str(write(tmp_path, toml)))
    resolved = resolve_all(parse_flags(*flags), env)
    assert resolved.settings.heartbeat == 5.0
    assert resolved.settings.heartbeat_unstreamed is True
    assert len(resolved.deprecations) == 2
    [line] = [d for d in resolved.deprecations if "unstreamed" not in d.lower()]
    assert old in line
    assert "deprecated" in line
    assert "heartbeat" in line.split(" use ", 1)[1].lower()


def test_given_both_spellings_in_one_source_the_new_one_wins(tmp_path: Path) -> None:
    resolved = resolve_all(parse_flags("--keepalive", "5", "--heartbeat", "9"), {})
    assert resolved.settings.heartbeat == 9.0
    assert resolved.deprecations == (
        "--keepalive is deprecated, use --heartbeat (ignored: --heartbeat is set)",
    )
    env = {"FOREMAN_KEEPALIVE": "5", "FOREMAN_HEARTBEAT": "9"}
    assert resolve(parse_flags(), env).heartbeat == 9.0
    path = write(tmp_path, "keepalive = 5\nheartbeat = 9\n")
    assert resolve(parse_flags("--config", str(path)), {}).heartbeat == 9.0


def test_between_sources_the_usual_precedence_holds_whatever_the_spelling(tmp_path: Path) -> None:
    # a flag beats the environment, and the environment the file, old name or new
    assert resolve(parse_flags("--keepalive", "5"), {"FOREMAN_HEARTBEAT": "9"}).heartbeat == 5.0
    path = write(tmp_path, "heartbeat = 9\n")
    flags = parse_flags("--config", str(path))
    assert resolve(flags, {"FOREMAN_KEEPALIVE": "5"}).heartbeat == 5.0


def test_foreman_config_prints_the_new_name_and_where_the_old_one_was_given() -> None:
    resolved = resolve_all(parse_flags(), {"FOREMAN_KEEPALIVE": "5"})
    text = render(resolved.values, resolved.sources)
    assert "heartbeat = 5.0  # FOREMAN_KEEPALIVE\n" in text
    assert "\nkeepalive" not in text


def test_every_alias_is_a_spelling_no_setting_uses() -> None:
    names = {s.name for s in SETTINGS}
    flags = {s.flag for s in SETTINGS}
    envs = {s.env for s in SETTINGS}
    aliases = [a for s in SETTINGS for a in s.aliases]
    assert aliases
    for alias in aliases:
        assert alias.name not in names
        assert alias.flag not in flags
        assert alias.env not in envs


def test_serve_logs_each_old_spelling_once_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    async def started(settings: object) -> None:
        started.settings = settings  # type: ignore[attr-defined]

    monkeypatch.setattr("foreman.daemon.serve_until_signalled", started)
    # serve's own log set-up would take the root handlers from under caplog
    monkeypatch.setattr(cli, "setup_logging", lambda *_: None)
    monkeypatch.setenv("FOREMAN_KEEPALIVE", "4")
    with caplog.at_level(logging.WARNING, logger="foreman.config"):
        assert cli.main(["serve", "--db", str(tmp_path / "f.db")]) == 0
    assert started.settings.heartbeat == 4.0  # type: ignore[attr-defined]
    warnings = [r.getMessage() for r in caplog.records if r.name == "foreman.config"]
    assert warnings == [
        "FOREMAN_KEEPALIVE is deprecated, use FOREMAN_HEARTBEAT (still accepted in this release)"
    ]
