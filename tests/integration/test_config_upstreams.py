"""Acceptance: several upstreams on the operator's command line: `foreman config` prints
the `[[upstream]]` tables, a bad one stops foreman at start with one line, and foreman's
start line names every upstream."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from foreman.stub import StubConfig, StubOllama
from foreman.testing import Process

from .test_processes import run_cli

TWO_TABLES = """\
max_queue = 42

[[upstream]]
url = "{first}"
name = "gpu0"
slots = 4
models = ["llama3*", "qwen*"]

[[upstream]]
url = "{second}/"
"""


def test_foreman_config_prints_two_upstream_tables_with_their_source(tmp_path: Path) -> None:
    config = tmp_path / "foreman.toml"
    config.write_text(TWO_TABLES.format(first="http://10.0.0.5:11434", second="http://10.0.0.6:1"))
    done = run_cli("config", "--config", str(config), env={"FOREMAN_DB": str(tmp_path / "f.db")})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert (
        f"[[upstream]]  # {config}:upstream 1\n"
        'url = "http://10.0.0.5:11434"\nname = "gpu0"\nslots = 4\n'
        'models = ["llama3*", "qwen*"]\n'
    ) in out
    assert (
        f'[[upstream]]  # {config}:upstream 2\nurl = "http://10.0.0.6:1"\nname = "10.0.0.6:1"\n'
        "slots = 1\n"
    ) in out
    assert f"max_queue = 42  # {config}:max_queue" in out
    # the flag replaces the file's upstreams, and says so
    done = run_cli("config", "--config", str(config), "--ollama", "http://f:1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n[[upstream]]") == 1
    assert '[[upstream]]  # --ollama\nurl = "http://f:1"\nname = "f:1"\n' in done.stdout


def test_a_bad_upstream_table_stops_foreman_at_start_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "foreman.toml"
    config.write_text(
        '[[upstream]]\nurl = "http://a:1"\n[[upstream]]\nurl = "http://b:1"\n'
        'name = "gpu1"\nslots = 0\n'
    )
    done = run_cli("serve", "--config", str(config), "--db", str(tmp_path / "x.db"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"foreman: error: {config}: upstream 2 (gpu1): slots must be a whole number of at least 1"
    ]
    assert not (tmp_path / "x.db").exists()


async def test_the_start_line_names_every_upstream(
    nursery: trio.Nursery, stub: StubOllama, tmp_path: Path
) -> None:
    other = StubOllama(StubConfig())
    await nursery.start(other.serve)
    config = tmp_path / "foreman.toml"
    config.write_text(TWO_TABLES.format(first=stub.url, second=other.url))
    db = tmp_path / "f.db"
    argv = [sys.executable, "-m", "foreman", "serve", "--port", "0", "--db", str(db)]
    proc = Process([*argv, "--config", str(config)], tmp_path / "foreman.log")
    await trio.to_thread.run_sync(proc.start)
    try:
        started = [line for line in proc.output().decode().splitlines() if "listening on" in line]
    finally:
        assert await trio.to_thread.run_sync(proc.terminate) == 0
    assert len(started) == 1
    other_name = other.url.removeprefix("http://")
    assert f"upstreams gpu0={stub.url} (4 slots), {other_name}={other.url} (1 slot)," in started[0]
