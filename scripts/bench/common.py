"""What every benchmark shares: processes, stub control, memory, statistics, the machine."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from foreman.testing import Process, foreman_process, stub_process

from .loadgen import Connection

ROOT = Path(__file__).resolve().parents[2]


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of one figure over repetitions (and the values themselves)."""
    return {
        "median": percentile(values, 50),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Repetitions of one benchmark (dicts of the same shape) as one dict whose numeric
    leaves are `spread`s; other leaves are taken from the first run."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [run[key] for run in runs if key in run]
        if isinstance(first, bool) or not isinstance(first, int | float | dict):
            out[key] = first
        elif isinstance(first, dict):
            out[key] = aggregate(values)
        else:
            out[key] = spread([float(v) for v in values])
    return out


def ms(seconds: float) -> float:
    return seconds * 1000.0


# -- processes ------------------------------------------------------------------------------


class Stack:
    """A stub (and optionally foreman in front of it) as real processes in a work folder."""

    def __init__(self, work: Path, name: str) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
        self.stub: Process | None = None
        self.foreman: Process | None = None
        self.stub_url = ""
        self.url = ""

    @property
    def db(self) -> Path:
        return self.work / "foreman.db"

    def start_stub(self, *flags: str) -> str:
        self.stub = stub_process(self.work / "stub.log", "--log-level", "warning", *flags)
        self.stub_url = self.stub.start()
        return self.stub_url

    def start_foreman(self, *flags: str, env: Mapping[str, str] | None = None) -> str:
        self.foreman = foreman_process(
            self.db, self.stub_url, self.work / "foreman.log", *flags, env=env
        )
        self.url = self.foreman.start()
        return self.url

    def stop(self) -> None:
        for proc in (self.foreman, self.stub):
            if proc is not None and proc.alive:
                proc.terminate(timeout=15)

    @property
    def foreman_pid(self) -> int:
        assert self.foreman is not None
        assert self.foreman.popen is not None
        return self.foreman.popen.pid


@contextmanager
def stack(
    work: Path, name: str, stub_flags: Sequence[str] = (), foreman_flags: Sequence[str] | None = ()
) -> Iterator[Stack]:
    """A stub and (unless `foreman_flags` is None) foreman, stopped when the block ends."""
    s = Stack(work, name)
    try:
        s.start_stub(*stub_flags)
        if foreman_flags is not None:
            s.start_foreman(*foreman_flags)
        yield s
    finally:
        s.stop()


@contextmanager
def floor_relay(s: Stack) -> Iterator[str]:
    """The bare Quart-Trio + httpx relay (floor.py) in front of the stack's stub: what the
    HTTP stack alone costs, measured beside foreman on the same stub."""
    relay = Process(
        [sys.executable, "-m", "scripts.bench.floor", "--upstream", s.stub_url],
        s.work / "floor.log",
    )
    try:
        yield relay.start()
    finally:
        if relay.alive:
            relay.terminate(timeout=15)


def memory_kb(pid: int) -> dict[str, int]:
    """Resident set size now and at its peak (VmRSS, VmHWM), in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- talking to the stub's control API ------------------------------------------------------


async def stub_control(url: str, method: str, path: str, body: Any = None) -> Any:
    conn = Connection(url)
    try:
        data = None if body is None else json.dumps(body).encode()
        answer = await conn.send(method, path, data)
        return answer.json() if answer.body else None
    finally:
        await conn.aclose()


async def stub_counters(url: str) -> dict[str, Any]:
    state = await stub_control(url, "GET", "/_stub/state")
    return dict(state["counters"])


async def stub_record(url: str) -> list[dict[str, Any]]:
    return list((await stub_control(url, "GET", "/_stub/requests"))["requests"])


def job_states(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
    finally:
        conn.close()


async def sleep_until(moment: float) -> None:
    """Sleep until a perf_counter moment."""
    delay = moment - time.perf_counter()
    if delay > 0:
        await trio.sleep(delay)


# -- the machine ----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return float("nan")


def _commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" with local changes" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in ("foreman", "trio", "hypercorn", "quart", "quart-trio", "httpx", "h11"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": packages,
        "commit": _commit(),
        "load_average": os.getloadavg()[0],
    }


async def watch_stream(
    url: str,
    path: str,
    received: list[int],
    ready: trio.Event,
    count: Callable[[bytes], int] = len,
) -> None:
    """Read an event stream as fast as it comes and throw it away, adding `count` of each
    read to `received[0]` (its bytes, unless told otherwise); `ready` once it answers."""
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        first = True
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            received[0] += count(data)
            if first:
                ready.set()
                first = False
