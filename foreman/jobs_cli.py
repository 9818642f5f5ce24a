"""`foreman jobs ...`: the job API from the command line, against a running foreman.

Readable tables by default, `--json` for scripts. Talks HTTP only (`--url` or
FOREMAN_URL), so it works against a foreman on another machine as well. The key comes
from FOREMAN_API_KEY (or `--key`, which any user on the machine can read in the process
list).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from foreman.keys import presentable

DEFAULT_URL = "http://127.0.0.1:11435"


class CliError(Exception):
    """Printed as one line; exit status 1."""


def add_parser(commands: Any) -> None:
    jobs = commands.add_parser("jobs", help="list, submit, watch and manage jobs")
    jobs.add_argument("--url", help=f"foreman's URL [FOREMAN_URL, default {DEFAULT_URL}]")
    jobs.add_argument(
        "--key",
        help="API key, if foreman requires one; visible to other users of this machine in"
        " the process list: prefer the FOREMAN_API_KEY environment variable",
    )
    jobs.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)

    ls = sub.add_parser("ls", help="list jobs, newest first")
    ls.add_argument("--state", help="queued, loading, working, done, failed or cancelled")
    ls.add_argument("--model")
    ls.add_argument("--ref")
    ls.add_argument("--limit", type=int, default=20)

    show = sub.add_parser("show", help="one job, with its result")
    show.add_argument("id")
    show.add_argument("--wait", type=float, help="wait up to this many seconds for the end")

    for name, text in (("cancel", "cancel a queued or running job"), ("retry", "run again")):
        action = sub.add_parser(name, help=text)
        action.add_argument("id")

    rm = sub.add_parser("rm", help="delete a finished job")
    rm.add_argument("id")

    purge = sub.add_parser("purge", help="delete finished jobs older than --older-than")
    purge.add_argument("--older-than", type=float, required=True, metavar="SECONDS")

    submit = sub.add_parser("submit", help="queue a job and print it (or its result)")
    submit.add_argument("--model", required=True)
    what = submit.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="a /api/generate prompt")
    what.add_argument("--message", help="one user message for /api/chat")
    what.add_argument("--body", help="the whole request as JSON, or @FILE, or - for stdin")
    submit.add_argument("--endpoint", help="for --body: /api/chat, /api/generate, /v1/...")
    submit.add_argument("--priority", type=int)
    submit.add_argument("--ref")
    submit.add_argument("--deadline", type=float, metavar="SECONDS")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--wait", action="store_true", help="wait for the job to end")

    watch = sub.add_parser("watch", help="follow one job, or the whole queue, live")
    watch.add_argument("id", nargs="?")


def run(args: argparse.Namespace, env: Mapping[str, str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    url = args.url or env.get("FOREMAN_URL") or DEFAULT_URL
    key = args.key or env.get("FOREMAN_API_KEY")
    if key and not presentable(key):
        # no header carries it as written (httpx would fail with a traceback)
        print(
            "foreman: error: the API key holds characters other than printable ASCII",
            file=sys.stderr,
        )
        return 1
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=90) as client:
            return _dispatch(args, client, out)
    except CliError as exc:
        print(f"foreman: error: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"foreman: error: cannot talk to foreman at {url}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _check(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        message = response.json()["error"]
        if isinstance(message, dict):
            message = message.get("message")
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason_phrase
    raise CliError(f"{response.status_code}: {message}")


def _dispatch(args: argparse.Namespace, client: httpx.Client, out: TextIO) -> int:
    command = args.jobs_command
    if command == "ls":
        params = {k: v for k in ("state", "model", "ref") if (v := getattr(args, k))}
        data = _check(client.get("/jobs", params={**params, "limit": args.limit}))
        _print(out, args.json, data, lambda: _table(data["jobs"]))
    elif command == "show":
        params = {"wait": args.wait} if args.wait is not None else {}
        job = _check(client.get(f"/jobs/{args.id}", params=params))
        _print(out, args.json, job, lambda: _details(job))
    elif command in ("cancel", "retry"):
        job = _check(client.post(f"/jobs/{args.id}/{command}"))
        _print(out, args.json, job, lambda: [f"{job['id']} {job['state']}"])
    elif command == "rm":
        data = _check(client.delete(f"/jobs/{args.id}"))
        _print(out, args.json, data, lambda: [f"deleted {data['deleted']}"])
    elif command == "purge":
        data = _check(client.delete("/jobs", params={"older_than": args.older_than}))
        _print(out, args.json, data, lambda: [f"purged {data['purged']} finished jobs"])
    elif command == "submit":
        job = _submit(args, client)
        while args.wait and job["state"] not in ("done", "failed", "cancelled"):
            job = _check(client.get(f"/jobs/{job['id']}", params={"wait": 60}))
        _print(out, args.json, job, lambda: _details(job))
        return 0 if job["state"] != "failed" else 1
    elif command == "watch":
        for kind, data in _follow(client, args.id):
            _print(out, args.json, data, lambda k=kind, d=data: [_line(k, d)])
            out.flush()
    return 0


def _submit(args: argparse.Namespace, client: httpx.Client) -> Any:
    if args.body is not None:
        raw = args.body
        if raw == "-":
            raw = sys.stdin.read()
        elif raw.startswith("@"):
            raw = Path(raw[1:]).read_text()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise CliError(f"--body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise CliError("--body must be a JSON object")
        body.setdefault("model", args.model)
        endpoint = args.endpoint or ("/api/chat" if "messages" in body else "/api/generate")
    elif args.prompt is not None:
        body, endpoint = {"model": args.model, "prompt": args.prompt}, "/api/generate"
    else:
        messages = [{"role": "user", "content": args.message}]
        body, endpoint = {"model": args.model, "messages": messages}, "/api/chat"
    payload: dict[str, Any] = {"endpoint": args.endpoint or endpoint, "body": body}
    for field in ("priority", "ref", "deadline"):
        if getattr(args, field) is not None:
            payload[field] = getattr(args, field)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    return _check(client.post("/jobs", json=payload, headers=headers))


def _follow(client: httpx.Client, job_id: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each event of a job stream as (its kind, its data): `job` for a change, `position`
    for a queued job's new place in line."""
    path = f"/jobs/{job_id}/events" if job_id else "/jobs/events"
    with client.stream("GET", path, timeout=httpx.Timeout(10, read=None)) as response:
        if not response.is_success:
            response.read()
            _check(response)
        kind = "message"
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                yield kind, json.loads(line[6:])
            elif not line:
                kind = "message"


def _print(out: TextIO, as_json: bool, data: Any, lines: Any) -> None:
    if as_json:
        print(json.dumps(data), file=out)
    else:
        for line in lines():
            print(line, file=out)


def _moment(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _since(stamp: str | None) -> str:
    if not stamp:
        return "-"
    return f"{_span(max(0.0, time.time() - _moment(stamp)))} ago"


def _duration(job: dict[str, Any]) -> str:
    start, end = job.get("started_at"), job.get("finished_at")
    if not start or not end:
        return "-"
    a = datetime.fromisoformat(start.replace("Z", "+00:00"))
    b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    return f"{(b - a).total_seconds():.1f}s"


def _table(jobs: Sequence[dict[str, Any]]) -> list[str]:
    if not jobs:
        return ["no jobs"]
    rows = [("ID", "STATE", "MODEL", "PRI", "REF", "TRIES", "UPSTREAM", "CREATED", "TOOK", "ERROR")]
    rows.extend(
        (
            j["id"],
            j["state"],
            j["model"],
            str(j["priority"]),
            j.get("ref") or "-",
            f"{j['attempts']}/{j['max_attempts']}",
            j.get("upstream") or "-",
            _since(j["created_at"]),
            _duration(j),
            (j.get("error") or "")[:60],
        )
        for j in jobs
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


# a queued job's place in line, shown in words after its state (see `_place`)
_PLACE = ("position", "estimated_start")


def _details(job: dict[str, Any], now: float | None = None) -> list[str]:
    lines = []
    for k in job:
        if k not in ("result", *_PLACE) and job.get(k) is not None:
            lines.append(f"{k:12s} {job.get(k)}")
            if k == "state":
                lines.extend(_place(job, time.time() if now is None else now))
    result = job.get("result")
    if isinstance(result, dict):
        text = (result.get("message") or {}).get("content") or result.get("response")
        if text is None and isinstance(result.get("choices"), list) and result["choices"]:
            choice = result["choices"][0]
            text = (choice.get("message") or {}).get("content") or choice.get("text")
        lines.append(f"{'result':12s} {text if text is not None else json.dumps(result)}")
    return lines


def _place(job: dict[str, Any], now: float) -> list[str]:
    """Where a queued job stands, when foreman says (a foreman that does not, or a job
    that is not queued, shows nothing): how many jobs start before it, and the estimated
    start, unknown while foreman has measured nothing."""
    position = job.get("position")
    if job.get("state") != "queued" or not isinstance(position, int):
        return []
    ahead = "next to start" if position == 0 else f"{position} before it"
    return [f"{'position':12s} {position} ({ahead})", f"{'starts':12s} {_start(job, now)}"]


def _start(job: dict[str, Any], now: float) -> str:
    stamp = job.get("estimated_start")
    if not isinstance(stamp, str):
        return "unknown (nothing measured yet)"
    try:
        seconds = _moment(stamp) - now
    except ValueError:
        return stamp
    return f"{stamp} ({f'in about {_span(seconds)}' if seconds >= 1 else 'any moment'})"


def _line(kind: str, data: dict[str, Any]) -> str:
    """One event of `jobs watch`: a job's change, or its new place in line."""
    if kind == "position":
        start = data.get("estimated_start") or "unknown"
        return f"{data.get('id')} position {data.get('position')}, estimated start {start}"
    error = f" error={data['error']!r}" if data.get("error") else ""
    return f"{data['id']} {data['state']:9s} {data['model']} attempt {data['attempts']}{error}"
