"""`python -m foreman.stub` as a separate process, the way harnesses and `make demo` run it."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import ollama
import pytest
import trio

from foreman.stub.cli import main

LISTENING = re.compile(rb"^listening on (http://127\.0\.0\.1:(\d+))\n$")


async def start(log: Path, *args: str) -> tuple[trio.Process, str]:
    """Start the stub on a free port and return it with the URL it printed."""
    command = [sys.executable, "-m", "foreman.stub", "--port", "0", *args]
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=stderr)
    assert process.stdout is not None
    line = b""
    with trio.fail_after(20):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            assert chunk, "the stub exited before printing its port"
            line += chunk
    match = LISTENING.match(line)
    assert match, line
    return process, match.group(1).decode()


async def stop(process: trio.Process, signum: int) -> int:
    process.send_signal(signum)
    with trio.fail_after(10):
        return await process.wait()


async def test_subprocess_prints_its_port_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "stub.log"
    process, url = await start(log, "--tokens", "3", "--models", "a,b:7b", "--load-delay", "0")
    try:
        messages = [{"role": "user", "content": "hi"}]
        with ollama.Client(host=url) as client:
            answer = await trio.to_thread.run_sync(
                lambda: client.chat(model="b:7b", messages=messages)
            )
        assert answer.message.content is not None
        assert len(answer.message.content.split()) == 3
        async with httpx.AsyncClient(base_url=url) as http:
            record = (await http.get("/_stub/requests")).json()["requests"]
            assert [(r["kind"], r["model"]) for r in record] == [("chat", "b:7b")]
            tags = (await http.get("/api/tags")).json()["models"]
            assert {m["name"] for m in tags} == {
                "a:latest",
                "b:7b",
                "nomic-embed-text:latest",
                "all-minilm:latest",
            }
    finally:
        with trio.CancelScope(shield=True):
            code = await stop(process, signal.SIGTERM)
    assert code == 0
    logged = log.read_text()
    assert re.search(r"POST /api/chat model=b:7b status=200 \d+\.\d+s", logged)


async def test_subprocess_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    process, url = await start(tmp_path / "stub.log", "--log-level", "warning")
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/")).text == "Ollama is running"
    assert await stop(process, signal.SIGINT) == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "nope"],
        ["--port", "70000"],
        ["--tokens", "-1"],
        ["--load-delay", "-2"],
        ["--keep-alive", "forever"],
        ["--frobnicate"],
        ["--log-level", "loud"],
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("foreman stub: error:")
    assert captured.out == ""


def test_a_port_in_use_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--log-level", "error"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "cannot listen" in err[0]
