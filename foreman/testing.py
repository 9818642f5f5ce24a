"""Helpers to run foreman and the stub Ollama as real processes or in-process servers.

Used by foreman's own tests, the demo and the benchmarks; handy for anyone who tests a
program against foreman.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

import attrs
import trio

from foreman.config import Settings

LISTENING = re.compile(rb"listening on (http://[^\s,]+)")


class ProcessFailed(RuntimeError):
    """A helper process exited or never said where it listens."""


class Process:
    """A child process (foreman or the stub) whose output goes to a log file.

    `start` returns once the child prints `listening on URL`, so tests wait on an event
    the child reports rather than on a fixed delay.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.popen: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._log: IO[bytes] | None = None
        self._offset = 0

    def start(self, timeout: float = 60.0) -> str:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self._offset = self.log_path.stat().st_size
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.search(self.output(since_start=True))
            if found:
                self.url = found.group(1).decode()
                return self.url
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        code = self.popen.poll()
        self.kill()
        raise ProcessFailed(
            f"{self.argv[:4]} did not start (exit {code}); output:\n"
            + self.output(since_start=True).decode(errors="replace")[-3000:]
        )

    def output(self, *, since_start: bool = False) -> bytes:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return b""
        return data[self._offset :] if since_start else data

    def wait_for_output(self, pattern: bytes | str, timeout: float = 60.0) -> re.Match[bytes]:
        """Poll the log until `pattern` appears (raises ProcessFailed on timeout)."""
        regex = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = regex.search(self.output(since_start=True))
            if found:
                return found
            time.sleep(0.02)
        raise ProcessFailed(f"no {regex.pattern!r} in the output of {self.argv[:4]}")

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: the crash a test wants to survive."""
        self.signal(signal.SIGKILL)
        self.wait()

    def terminate(self, timeout: float = 30.0) -> int | None:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int | None:
        code = None
        if self.popen is not None:
            try:
                code = self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                code = self.popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


def foreman_process(
    db: Path,
    ollama_url: str,
    log_path: Path,
    *extra: str,
    env: Mapping[str, str] | None = None,
) -> Process:
    argv = [
        sys.executable,
        "-m",
        "foreman",
        "serve",
        "--port",
        "0",
        "--db",
        str(db),
        "--ollama",
        ollama_url,
        *extra,
    ]
    return Process(argv, log_path, env)


def stub_process(log_path: Path, *extra: str, port: int = 0) -> Process:
    argv = [sys.executable, "-m", "foreman.stub", "--port", str(port), *extra]
    return Process(argv, log_path)


@asynccontextmanager
async def running_foreman(settings: Settings, **changes: Any) -> AsyncIterator[str]:
    """foreman in-process (port 0 by default), stopped when the block ends; yields its URL."""
    from foreman.daemon import run

    settings = attrs.evolve(settings, **{"port": 0, **changes})
    async with trio.open_nursery() as nursery:
        url = await nursery.start(run, settings)
        try:
            yield str(url)
        finally:
            nursery.cancel_scope.cancel()


class CannotMount(RuntimeError):
    """A small disk for a full-disk test could not be had here (no root, no tmpfs)."""


@contextmanager
def small_disk(where: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` for the block, so a test can fill a disk
    without filling the machine's. Needs root; raises CannotMount otherwise."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise CannotMount("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise CannotMount(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_disk(disk: Path) -> Path:
    """Write a file on `disk` until it refuses another byte; delete it to free the disk."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(bytes(4096))
        except OSError:
            pass
    return filler
