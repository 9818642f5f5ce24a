"""Where foreman's CPU goes, sampled with py-spy in one workload per target: accepting
jobs, running them, relaying serial requests, relaying embeddings, relaying a stream.

`make bench` installs py-spy; the section is skipped (and says so) where it cannot attach.
Samples are grouped by the code running at the moment of the sample (the innermost frame),
so each share is CPU spent in that layer itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from .common import stack, stub_control
from .overhead import embed_load, serial, stream_rate, submit_jobs, wait_done

# by the module path py-spy shows for the innermost frame ("hypercorn/protocol/h11.py")
LAYERS = (
    ("HTTP server (hypercorn, h11)", ("hypercorn/", "h11/")),
    ("web framework (quart, werkzeug)", ("quart/", "quart_trio/", "werkzeug/", "flask/")),
    ("HTTP client to Ollama (httpx, httpcore)", ("httpx/", "httpcore/")),
    ("store: SQLite calls and commits", ("foreman/store/",)),
    ("foreman's own code", ("foreman/",)),
    ("trio: scheduling, sockets, threads", ("trio/", "outcome/", "sniffio/")),
    ("logging", ("logging/",)),
)


def _py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


def layer(frame: str) -> str:
    path = frame.partition(" (")[2]
    for name, prefixes in LAYERS:
        if path.startswith(prefixes):
            return name
    return "other (stdlib: json, socket, ...)"


# a thread blocked in these is waiting, not working (py-spy cannot always tell)
WAITING = ("EpollIOManager.get_events", "WorkerThread._work")


def digest(raw: Path) -> dict[str, Any]:
    """Shares of the busy samples by layer, and foreman's busiest functions, from py-spy's
    raw output; samples of threads waiting for I/O or for work are counted apart."""
    layers: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack_text.split(";")
        n = int(count)
        leaf = frames[-1]
        if leaf.startswith(WAITING):
            waiting += n
            continue
        total += n
        layers[layer(leaf)] += n
        name, _, where = leaf.partition(" (")
        if where.startswith("foreman/"):
            own[f"{name} ({where.split(':')[0]})"] += n
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "waiting_samples": waiting,
        "layers_pct": {k: 100 * v / total for k, v in layers.most_common()},
        "foreman_top_pct": {k: 100 * v / total for k, v in own.most_common(8)},
    }


# each phase is one workload that a target in the report stands on (section 7 of the report
# shows them side by side; "What the missed targets are made of" points at them)
PHASES = ("accepting", "running", "relaying", "embeddings", "streaming")


def _sample(spy: str, pid: int, raw: Path, work: Callable[[], None]) -> None:
    sampler = subprocess.Popen(
        [
            *(spy, "record", "--pid", str(pid), "--format", "raw"),
            *("--output", str(raw), "--rate", "250", "--nonblocking"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # let it attach
    try:
        work()
    finally:
        sampler.send_signal(2)
        try:
            sampler.wait(30)
        except subprocess.TimeoutExpired:
            sampler.kill()


def profile(work: Path, quick: bool) -> dict[str, Any]:
    spy = _py_spy()
    if spy is None:
        return {"skipped": "py-spy is not installed (make bench installs it)"}
    jobs = 1000 if quick else 3000
    requests = 500 if quick else 1500
    seconds = 2.0 if quick else 4.0
    lines = 10_000 if quick else 40_000
    out: dict[str, Any] = {
        "jobs": jobs,
        "requests": requests,
        "embed_seconds": seconds,
        "stream_lines": lines,
    }
    with stack(work, "profile", ("--tokens", "8")) as s:
        ids: list[str] = []

        async def accepting() -> None:
            await stub_control(s.stub_url, "POST", "/_stub/hold")
            ids.extend((await submit_jobs(s.url, jobs, 32))[0])

        async def running() -> None:
            await stub_control(s.stub_url, "POST", "/_stub/release")
            await wait_done(s.url, ids[-1])

        async def relaying() -> None:
            await serial(s.url, requests, 0, False)

        async def embeddings() -> None:
            await embed_load(s.url, seconds, 32, "profile")

        async def streaming() -> None:
            await stub_control(s.stub_url, "POST", "/_stub/config", {"tokens": lines})
            await stream_rate(s.url, lines)

        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "accepting": accepting,
            "running": running,
            "relaying": relaying,
            "embeddings": embeddings,
            "streaming": streaming,
        }
        for phase in PHASES:
            raw = s.work / f"{phase}.txt"
            _sample(spy, s.foreman_pid, raw, lambda a=actions[phase]: trio.run(a))
            if not raw.exists():
                return {"skipped": "py-spy could not attach to foreman (permissions?)"}
            out[phase] = digest(raw)
    return out
