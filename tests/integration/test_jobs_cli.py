"""`foreman jobs ...` against a running foreman."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from foreman.cli import main
from foreman.config import Settings
from foreman.stub import StubOllama
from foreman.testing import running_foreman
from foreman.upstream_specs import default_name


async def cli(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    code = await trio.to_thread.run_sync(main, ["jobs", "--url", url, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_submit_wait_show_list_and_purge_from_the_command_line(
    foreman: str, stub: StubOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await cli(
        capsys, foreman, "--json", "submit", "--model", "llama3", "--prompt", "hi", "--wait"
    )
    assert code == 0
    job = json.loads(out)
    assert job["state"] == "done"
    expected = stub.expected_text("/api/generate", {"model": "llama3", "prompt": "hi"})
    assert job["result"]["response"] == expected

    code, out, _ = await cli(capsys, foreman, "show", job["id"])
    assert code == 0
    assert expected in out
    assert "done" in out

    code, out, _ = await cli(capsys, foreman, "ls")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["ID", "STATE", "MODEL"]
    assert job["id"] in out

    code, out, _ = await cli(capsys, foreman, "retry", job["id"])
    assert code == 1  # a done job cannot be retried

    code, out, _ = await cli(capsys, foreman, "purge", "--older-than", "0")
    assert code == 0
    assert "purged 1" in out


async def test_cli_reports_errors_in_one_line(
    foreman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await cli(capsys, foreman, "show", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert code == 1
    assert err.strip() == "foreman: error: 404: job 01ARZ3NDEKTSV4RRFFQ69G5FAV not found"
    code, _, err = await cli(capsys, "http://127.0.0.1:9", "ls")
    assert code == 1
    assert err.startswith("foreman: error: cannot talk to foreman")


async def test_watch_follows_a_job_to_its_end(
    foreman: str, stub: StubOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await cli(
        capsys, foreman, "--json", "submit", "--model", "llama3", "--message", "x"
    )
    job = json.loads(out)
    code, out, _ = await cli(capsys, foreman, "watch", job["id"])
    assert code == 0
    assert out.splitlines()[-1].split()[:2] == [job["id"], "done"]


JOBS_KEY = "jobs-cli-key-0123456789"


async def test_the_key_comes_from_foreman_api_key_and_help_says_why(
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"batch {JOBS_KEY} jobs\n")
    async with running_foreman(settings, api_keys_file=keys) as url:
        code, _, err = await cli(capsys, url, "ls")
        assert code == 1, err
        assert err.startswith("foreman: error: 401: "), err
        # the variable carries the key, so it never shows in the process list
        monkeypatch.setenv("FOREMAN_API_KEY", JOBS_KEY)
        code, out, err = await cli(capsys, url, "--json", "ls")
        assert code == 0, err
        assert json.loads(out)["jobs"] == []
        # a key no header can carry: one line, no traceback, nothing sent
        monkeypatch.setenv("FOREMAN_API_KEY", "caf\u00e9-0123456789abcdef")
        code, _, err = await cli(capsys, url, "ls")
        assert code == 1
        assert err == "foreman: error: the API key holds characters other than printable ASCII\n"
    with pytest.raises(SystemExit):
        main(["jobs", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "visible to other users" in help_text
    assert "FOREMAN_API_KEY" in help_text


async def test_ls_and_show_name_the_upstream_that_ran_a_job(
    foreman: str, stub: StubOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await cli(
        capsys, foreman, "--json", "submit", "--model", "llama3", "--prompt", "hi", "--wait"
    )
    assert code == 0
    ran = json.loads(out)
    code, out, _ = await cli(capsys, foreman, "ls")
    assert code == 0
    header, *rows = out.splitlines()
    columns = header.split()
    assert columns[6] == "UPSTREAM"
    at = header.index("UPSTREAM")
    shown = {row.split()[0]: row[at:].split()[0] for row in rows}
    # one upstream, named host:port by default
    assert ran["upstream"] == default_name(stub.url)
    assert shown[ran["id"]] == ran["upstream"]
    code, out, _ = await cli(capsys, foreman, "show", ran["id"])
    assert code == 0
    assert f"{'upstream':12s} {ran['upstream']}" in out.splitlines()
