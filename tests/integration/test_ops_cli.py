"""Acceptance: the operator's command line: `foreman config`, `foreman backup`, and a bad
keys file or configuration file stopping foreman at start with one line."""

from __future__ import annotations

import signal
import sqlite3
from functools import partial
from pathlib import Path

import httpx
import trio

from foreman.stub import StubOllama
from foreman.testing import foreman_process

from .test_processes import run_cli


def test_foreman_config_prints_the_effective_configuration_with_secrets_redacted(
    tmp_path: Path,
) -> None:
    config = tmp_path / "foreman.toml"
    config.write_text('max_queue = 42\nmetrics_token = "file-secret-0123"\n')
    done = run_cli(
        "config",
        "--config",
        str(config),
        "--port",
        "8080",
        env={"FOREMAN_KEEPALIVE": "5", "FOREMAN_DB": str(tmp_path / "f.db")},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "port = 8080  # --port" in out
    # the heartbeat's old variable still works; the new name is printed, the old one warned of
    assert "heartbeat = 5.0  # FOREMAN_KEEPALIVE" in out
    assert "\nkeepalive" not in out
    assert done.stderr.count("FOREMAN_KEEPALIVE is deprecated, use FOREMAN_HEARTBEAT") == 1
    assert f"max_queue = 42  # {config}:max_queue" in out
    assert 'metrics_token = "<redacted>"' in out
    assert "file-secret" not in out


def test_bad_keys_or_config_files_stop_foreman_with_one_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("app secret-key-0123456789 inference,everything\n")
    toml = tmp_path / "foreman.toml"
    toml.write_text("max_qeue = 5\n")
    cases = [
        (["--api-keys-file", str(keys)], "line 1: unknown scope 'everything'"),
        (["--api-keys-file", str(tmp_path / "none")], "cannot read keys file"),
        (["--config", str(toml)], "unknown setting 'max_qeue'"),
    ]
    for args, expected in cases:
        done = run_cli("serve", "--db", str(tmp_path / "x.db"), "--port", "0", *args)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("foreman: error: "), done.stderr
        assert expected in lines[0]
        assert "secret-key" not in done.stderr


def test_foreman_backup_of_a_postgresql_database_points_at_pg_dump(tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    done = run_cli("backup", str(copy), "--db", "postgresql://foreman:s3cret@db.invalid/q")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("foreman: error: foreman backup copies a SQLite file")
    assert "pg_dump" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout
    assert list(tmp_path.iterdir()) == []


async def test_foreman_backup_copies_a_live_database(stub: StubOllama, tmp_path: Path) -> None:
    db = tmp_path / "foreman.db"
    proc = foreman_process(db, stub.url, tmp_path / "foreman.log")
    url = await trio.to_thread.run_sync(proc.start)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            body = {"model": "llama3", "prompt": "keep me", "stream": False}
            assert (await client.post("/api/generate", json=body)).status_code == 200
        copy = tmp_path / "backups" / "copy.db"
        done = await trio.to_thread.run_sync(lambda: run_cli("backup", str(copy), "--db", str(db)))
        assert done.returncode == 0, done.stderr
        again = await trio.to_thread.run_sync(lambda: run_cli("backup", str(copy), "--db", str(db)))
        assert again.returncode == 1
        assert "refusing to overwrite" in again.stderr
    finally:
        assert await trio.to_thread.run_sync(proc.terminate) == 0
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("SELECT state FROM jobs").fetchall() == [("done",)]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


async def test_no_keys_on_a_public_address_warns_loudly(stub: StubOllama, tmp_path: Path) -> None:
    proc = foreman_process(
        tmp_path / "f.db", stub.url, tmp_path / "foreman.log", "--host", "0.0.0.0"
    )
    await trio.to_thread.run_sync(proc.start)
    try:
        assert b"NO API KEYS" in proc.output()
    finally:
        await trio.to_thread.run_sync(proc.terminate)


async def test_sighup_reloads_the_keys_and_keeps_serving(stub: StubOllama, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("app first-key-0123456789 inference\n")
    proc = foreman_process(
        tmp_path / "f.db", stub.url, tmp_path / "foreman.log", "--api-keys-file", str(keys)
    )
    url = await trio.to_thread.run_sync(proc.start)
    try:
        keys.write_text("app second-key-0123456789 inference\n")
        proc.signal(signal.SIGHUP)
        await trio.to_thread.run_sync(partial(proc.wait_for_output, "keys reloaded"))
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            new = {"Authorization": "Bearer second-key-0123456789"}
            old = {"Authorization": "Bearer first-key-0123456789"}
            assert (await client.get("/api/tags", headers=new)).status_code == 200
            assert (await client.get("/api/tags", headers=old)).status_code == 401
    finally:
        assert await trio.to_thread.run_sync(proc.terminate) == 0
    assert b"first-key" not in proc.output()
    assert b"second-key" not in proc.output()


# a key as an editor might leave it: a typographic quote where a ' was meant
NON_ASCII_KEY = "second-key-0123456789\u2019"


def test_a_key_beyond_ascii_stops_foreman_at_start_with_one_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"ops first-key-0123456789 admin\napp {NON_ASCII_KEY} inference\n", "utf-8")
    done = run_cli(
        "serve", "--db", str(tmp_path / "x.db"), "--port", "0", "--api-keys-file", str(keys)
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("foreman: error: "), done.stderr
    assert "line 2: the key of 'app' holds characters other than printable ASCII" in lines[0]
    assert "second-key" not in done.stderr


async def test_a_key_beyond_ascii_is_refused_at_reload_and_the_old_keys_stay(
    stub: StubOllama, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("app first-key-0123456789 inference\n")
    proc = foreman_process(
        tmp_path / "f.db", stub.url, tmp_path / "foreman.log", "--api-keys-file", str(keys)
    )
    url = await trio.to_thread.run_sync(proc.start)
    try:
        keys.write_text(f"app {NON_ASCII_KEY} inference\n", "utf-8")
        proc.signal(signal.SIGHUP)
        await trio.to_thread.run_sync(
            partial(proc.wait_for_output, "keeping the 1 keys already loaded")
        )
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            old = {"Authorization": "Bearer first-key-0123456789"}
            assert (await client.get("/api/tags", headers=old)).status_code == 200
    finally:
        assert await trio.to_thread.run_sync(proc.terminate) == 0
    output = proc.output().decode("utf-8", "replace")
    # one line each time it is refused (the file watcher may also have tried), no trace
    refused = [line for line in output.splitlines() if "printable ASCII" in line]
    assert refused, output
    assert all("line 1: the key of 'app'" in line for line in refused)
    assert "Traceback" not in output
    assert "keys reloaded" not in output
    assert "second-key" not in output
