"""`foreman jobs show` and `watch` with a queued job's place in line: shown when the job's
JSON carries it, left out (with everything else as before) when it does not."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime
from typing import Any

import httpx

from foreman.jobs_cli import _details, _dispatch

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def queued(**extra: Any) -> dict[str, Any]:
    return {
        "id": "01JQUEUED",
        "state": "queued",
        "endpoint": "/api/chat",
        "model": "llama3",
        "priority": 0,
        "ref": None,
        "attempts": 0,
        "max_attempts": 5,
        "created_at": "2025-03-01T11:59:00Z",
        "started_at": None,
        **extra,
    }


def test_a_queued_job_shows_how_many_start_before_it_and_when_it_should_start() -> None:
    job = queued(position=3, estimated_start="2025-03-01T12:01:30Z")
    lines = _details(job, now=NOW)
    at = lines.index(f"{'state':12s} queued")
    assert lines[at + 1 : at + 3] == [
        f"{'position':12s} 3 (3 before it)",
        f"{'starts':12s} 2025-03-01T12:01:30Z (in about 90s)",
    ]
    # each shown once, in words, not again as raw fields
    assert sum(line.startswith("position") for line in lines) == 1
    assert not any(line.startswith("estimated_start") for line in lines)


def test_the_next_job_with_nothing_measured_says_so() -> None:
    lines = _details(queued(position=0, estimated_start=None), now=NOW)
    assert f"{'position':12s} 0 (next to start)" in lines
    assert f"{'starts':12s} unknown (nothing measured yet)" in lines


def test_an_estimate_already_passed_says_any_moment() -> None:
    lines = _details(queued(position=1, estimated_start="2025-03-01T11:59:59Z"), now=NOW)
    assert f"{'starts':12s} 2025-03-01T11:59:59Z (any moment)" in lines


def test_without_the_fields_show_prints_what_it_always_did() -> None:
    job = queued()
    assert _details(job, now=NOW) == [
        f"{k:12s} {v}" for k, v in job.items() if v is not None and k != "result"
    ]


def test_a_job_that_is_not_queued_shows_no_place_in_line() -> None:
    job = queued(state="working", position=None, estimated_start=None)
    lines = _details(job, now=NOW)
    assert not any(line.startswith(("position", "starts", "estimated")) for line in lines)


STREAM = (
    "event: job\n"
    'id: 01JQUEUED\ndata: {"id":"01JQUEUED","state":"queued","model":"llama3","attempts":0}\n\n'
    "event: position\n"
    'data: {"id":"01JQUEUED","position":1,"estimated_start":"2025-03-01T12:00:20Z"}\n\n'
    "event: position\n"
    'data: {"id":"01JQUEUED","position":0,"estimated_start":null}\n\n'
    "event: job\n"
    'data: {"id":"01JQUEUED","state":"done","model":"llama3","attempts":1}\n\n'
)


def watch(*flags: str) -> str:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/jobs/01JQUEUED/events"
        return httpx.Response(200, text=STREAM, headers={"content-type": "text/event-stream"})

    args = argparse.Namespace(jobs_command="watch", id="01JQUEUED", json="--json" in flags)
    out = io.StringIO()
    with httpx.Client(base_url="http://foreman", transport=httpx.MockTransport(answer)) as c:
        assert _dispatch(args, c, out) == 0
    return out.getvalue()


def test_watch_prints_a_line_for_each_change_of_place_between_the_jobs_changes() -> None:
    assert watch().splitlines() == [
        "01JQUEUED queued    llama3 attempt 0",
        "01JQUEUED position 1, estimated start 2025-03-01T12:00:20Z",
        "01JQUEUED position 0, estimated start unknown",
        "01JQUEUED done      llama3 attempt 1",
    ]
    assert '"position": 1' in watch("--json").splitlines()[1]
