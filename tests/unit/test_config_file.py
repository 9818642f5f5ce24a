"""foreman.toml: every setting by name, below flags and environment, one line per error."""

from __future__ import annotations

from pathlib import Path

import pytest

from foreman.config import SETTINGS, ConfigError, render, resolve, resolve_with_sources


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "foreman.toml"
    path.write_text(text)
    return path


def test_the_file_sets_values_below_environment_and_flags(tmp_path: Path):
    path = write(tmp_path, 'port = 9000\nmax_queue = 7\nkeep_alive = "1h"\nlog_format = "json"\n')
    settings = resolve({"config": str(path)}, {})
    assert (settings.port, settings.max_queue, settings.keep_alive) == (9000, 7, "1h")
    assert settings.log_format == "json"
    assert resolve({"config": str(path)}, {"FOREMAN_PORT": "9001"}).port == 9001
    assert resolve({"config": str(path), "port": "9002"}, {"FOREMAN_PORT": "9001"}).port == 9002
    assert resolve({}, {"FOREMAN_CONFIG": str(path)}).max_queue == 7


def test_sizes_and_booleans_take_their_natural_spellings(tmp_path: Path):
    path = write(tmp_path, 'max_body = "1MiB"\nheartbeat_unstreamed = true\n')
    settings = resolve({"config": str(path)}, {})
    assert settings.max_body == 1024 * 1024
    assert settings.heartbeat_unstreamed is True
    assert resolve({}, {"FOREMAN_MAX_BODY": "512k"}).max_body == 512 * 1024


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("colour = 1\n", "unknown setting 'colour'"),
        ("port = 99999\n", "port='99999': must be between 0 and 65535"),
        ("max_queue = 0\n", "max_queue='0': must be a positive whole number"),
        ("port = [1]\n", "port: must be a string, a number or a boolean"),
        ("port = \n", "not valid TOML"),
        ('max_body = "lots"\n', "must be a size in bytes"),
    ],
)
def test_a_bad_file_fails_with_one_line(tmp_path: Path, text: str, expected: str):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        resolve({"config": str(path)}, {})
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_file_fails_with_one_line(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        resolve({"config": str(tmp_path / "nope.toml")}, {})


def test_the_effective_configuration_round_trips_and_hides_secrets(tmp_path: Path):
    values, sources = resolve_with_sources(
        {"port": "1234"}, {"FOREMAN_METRICS_TOKEN": "sekrit-token", "XDG_STATE_HOME": "/s"}
    )
    text = render(values, sources)
    assert "sekrit-token" not in text
    assert 'metrics_token = "<redacted>"  # FOREMAN_METRICS_TOKEN' in text
    assert "port = 1234  # --port" in text
    assert "# api_keys_file is not set" in text
    # what `foreman config` prints is a valid foreman.toml (less the redacted secret)
    kept = [line for line in text.splitlines() if not line.startswith("metrics_token")]
    again = resolve({"config": str(write(tmp_path, "\n".join(kept) + "\n"))}, {})
    assert again.port == 1234
    assert again.db == Path("/s/foreman/foreman.db")
    assert all(f"{s.name} = " in text or f"# {s.name} is" in text for s in SETTINGS)
