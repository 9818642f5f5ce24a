"""A hypothesis state machine that drives a real foreman and real stubs over sockets.

Each run drives one upstream (a stub with one slot) or two (the second with two slots, as
an Ollama with OLLAMA_NUM_PARALLEL=2 and `slots = 2`); the run draws which. Rules enqueue
synchronous and asynchronous jobs across models and priorities, cancel, retry and purge
them, arm faults on one upstream while the other works (refuse connections for a moment or
for long enough to be marked down, reset, 5xx, hang, a stream cut short, an error
mid-stream, slowness), kill an upstream and start it again on its port, kill foreman with
SIGKILL and restart it, start a second foreman on the same database (it must refuse, with
one line), fill the database's disk for a while (when the run has a small disk of its
own), and play bursts: with one upstream their order is checked against the scheduling
rule, with two each job runs once and each upstream drains by model. After every step:

- on each upstream, what foreman sent at once (`fleet_checks.crowding`): no chat/generate
  request arrived while requests for another model were open, nor while as many as its
  slots were, unless foreman had already closed the other (the stub records a request it
  is told to abandon as cancelled, a moment after foreman let go); and the stub's own
  record of its chat runner (`chat_occupancy`) never shows two models or more than its
  parallel at once;
- no job ran twice: across every stub's records, each job's prompt was answered in full
  at most once, unless foreman was killed while the job was loading or working (the answer
  may have come before the end was committed) or a client asked for a retry;
- every job in the database is consistent: done with exactly the stub's deterministic
  answer to its request, failed with a reason, or cancelled because a client asked (the
  job API, or a synchronous client hanging up);
- no job finished twice (two `state=done` lines in foreman's logs);
- every job a client was told about still exists, unless it was purged.
At the end of each run: faults cleared, every upstream and foreman up, every job must end
(nothing lost).

The machine is synchronous, as hypothesis's stateful testing is; synchronous clients run
in threads, everything else is httpx's sync client.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import httpx
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from foreman.policy import Candidate, pick_next
from foreman.stub import expected_text, normalise_name
from foreman.testing import Process, fill_disk, stub_process

from .fleet_checks import (
    INFERENCE,
    completed,
    completed_generations,
    crowding,
    most_open,
    occupancy_problems,
    prompt_of,
)

MODELS = ("llama3", "mistral", "phi3")
ENDPOINTS = ("/api/generate", "/api/chat", "/v1/chat/completions")
TOKENS = 6
FAULTS = ("refuse", "reset", "status", "hang", "cut", "mid_error", "slow", "none")
DONE_LINE = re.compile(r"job (\w{26}) model=\S+ state=done")
SETTLE_SECONDS = 45.0

# submissions foreman cannot store or show (a lone surrogate, at the top or nested; a
# number JSON cannot hold; a deadline that cannot be a date): each must be a 400 that
# harms none of the good submissions sent with it
UNSTORABLE = (
    ("/jobs", b'{"endpoint":"/api/chat","body":{"model":"\\ud800","messages":[]}}'),
    (
        "/jobs",
        b'{"endpoint":"/api/chat","body":{"model":"llama3",'
        b'"messages":[{"role":"user","content":"a\\udfffb"}]}}',
    ),
    ("/jobs", b'{"endpoint":"/api/generate","body":{"model":"llama3"},"deadline":1e308}'),
    ("/api/generate", b'{"model":"llama3","prompt":"x\\ud83d","stream":false}'),
    ("/api/chat", b'{"model":"\\udc00","messages":[],"stream":false}'),
    ("/v1/chat/completions", b'{"model":"llama3","messages":[],"temperature":NaN}'),
)

# what a run tried, over every run of the session (printed by `make fuzz`)
TRIED: Counter[str] = Counter()


class Failure(AssertionError):
    pass


def body_for(endpoint: str, model: str, text: str, stream: bool) -> dict[str, Any]:
    if endpoint == "/api/generate":
        return {"model": model, "prompt": text, "stream": stream}
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


def text_of(endpoint: str, result: Any) -> str | None:
    """The generated text in a stored result (None if the result has none)."""
    if not isinstance(result, dict):
        return None
    if endpoint == "/api/generate":
        return result.get("response")
    if endpoint == "/api/chat":
        return (result.get("message") or {}).get("content")
    choices = result.get("choices") or [{}]
    return ((choices[0] or {}).get("message") or {}).get("content")


class StubHandle:
    """One stub process, shared by the runs of a session, that a run may kill and start
    again on the same port (an Ollama that crashed and came back)."""

    def __init__(self, name: str, parallel: int, log: Path) -> None:
        self.name, self.parallel, self.log = name, parallel, log
        self.port = 0
        self.proc: Process | None = None
        self.url = ""

    def start(self) -> None:
        self.proc = stub_process(
            self.log,
            "--tokens",
            str(TOKENS),
            "--parallel",
            str(self.parallel),
            "--log-level",
            "warning",
            port=self.port,
        )
        self.url = self.proc.start()
        self.port = int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive


class Seen:
    """What one stub recorded during a run: one record per life of its process (a record's
    times are on that process's clock, so lives are never compared with each other)."""

    def __init__(self, handle: StubHandle, slots: int) -> None:
        self.handle = handle
        self.slots = slots
        self.client = httpx.Client(base_url=handle.url, timeout=30)
        self.past: list[list[dict[str, Any]]] = []
        self.record: list[dict[str, Any]] = []
        self.seq_start = self._last_seq()
        self.faults_armed = False

    def control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A control request. A stub that refuses connections still answers on a connection
        it already had (its latest request a control one); should that one be gone, try
        again until the refusal is over."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.client.request(method, path, **kwargs)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def requests(self, since: int) -> list[dict[str, Any]]:
        answer = self.control("GET", "/_stub/requests", params={"since": since})
        requests: list[dict[str, Any]] = answer.json()["requests"]
        return requests

    def _last_seq(self) -> int:
        return max((r["seq"] for r in self.requests(0)), default=0)

    def configure(self, **changes: float) -> None:
        settings = {"load_delay": 0.05, "token_delay": 0.002, "tokens": TOKENS, **changes}
        r = self.control("POST", "/_stub/config", json=settings)
        if r.status_code != 200:
            raise Failure(f"configuring stub {self.handle.name} answered {r.status_code}")

    def reset(self) -> None:
        """No faults, no hold, the run's usual speed."""
        self.control("DELETE", "/_stub/faults")
        self.control("POST", "/_stub/release")
        self.configure()
        self.faults_armed = False

    def refresh(self) -> list[dict[str, Any]]:
        since = self.record[-1]["seq"] if self.record else self.seq_start
        self.record.extend(self.requests(since))
        # entries still open may fill in later: keep re-reading the open ones
        open_seqs = [e["seq"] for e in self.record if e["end"] is None]
        if open_seqs:
            current = {e["seq"]: e for e in self.requests(min(open_seqs) - 1)}
            self.record = [current.get(e["seq"], e) for e in self.record]
        return self.record

    def died(self) -> None:
        """The process was killed: its record is closed, and a new life starts from seq 0
        (what was still open stays open: it held its slot until the process died)."""
        self.past.append(self.record)
        self.record = []
        self.seq_start = 0

    def revived(self) -> None:
        self.client.close()
        self.client = httpx.Client(base_url=self.handle.url, timeout=30)
        self.reset()

    def lives(self) -> list[list[dict[str, Any]]]:
        return [*self.past, self.refresh()]

    def close(self) -> None:
        self.client.close()


class SyncClient(threading.Thread):
    """One synchronous request; may hang up after `abandon_after` seconds."""

    def __init__(self, url: str, endpoint: str, body: dict[str, Any], abandon_after: float | None):
        super().__init__(daemon=True)
        self.url, self.endpoint, self.body = url, endpoint, body
        self.abandon_after = abandon_after
        self.job_id: str | None = None
        self.status: int | None = None
        self.data = b""
        self.error: str | None = None

    def run(self) -> None:
        deadline = None if self.abandon_after is None else time.monotonic() + self.abandon_after
        timeout = httpx.Timeout(60.0 if deadline is None else self.abandon_after or 0.01)
        try:
            with (
                httpx.Client(base_url=self.url, timeout=timeout) as client,
                client.stream("POST", self.endpoint, json=self.body) as r,
            ):
                self.status = r.status_code
                self.job_id = r.headers.get("x-foreman-job-id")
                for chunk in r.iter_bytes():
                    self.data += chunk
                    if deadline is not None and time.monotonic() > deadline:
                        return  # hang up mid-answer
        except httpx.HTTPError as exc:
            self.error = repr(exc)


class ForemanMachine(RuleBasedStateMachine):
    """Set `stubs` (two started `StubHandle`s: the first with one slot, the second with
    two) and `work` on the class before running it, and `disk` (a small filesystem of the
    machine's own, for the full-disk rule) when there is one."""

    stubs: ClassVar[list[StubHandle]] = []
    work: ClassVar[Path] = Path()
    disk: ClassVar[Path | None] = None
    runs: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        ForemanMachine.runs += 1
        TRIED["runs"] += 1
        self.run = ForemanMachine.runs
        self.dir = self.work / f"run-{ForemanMachine.runs:04d}"
        self.dir.mkdir(parents=True)
        # the database (not the logs) on the small disk, when the run has one
        self.db_dir = self.disk / self.dir.name if self.disk is not None else self.dir
        self.db_dir.mkdir(exist_ok=True)
        self.db = self.db_dir / "foreman.db"
        self.upstreams: list[Seen] = []
        self.proc: Process | None = None
        self.url = ""
        self.lives = 0
        self.max_wait = 600.0
        self.serial = 0
        self.told: set[str] = set()  # job ids a client was given
        self.cancel_requested: set[str] = set()
        self.retried: set[str] = set()
        self.purged: set[str] = set()  # told jobs that a purge removed
        # jobs loading or working when foreman was killed: their answer may have come
        # before the end was committed, so they may run again
        self.interrupted: set[str] = set()
        self.job_of_prompt: dict[str, str] = {}
        self.clients: list[SyncClient] = []
        self.log_offsets: dict[Path, int] = {}
        self.done_lines: Counter[str] = Counter()
        self.reruns = 0  # jobs answered in full twice (each after a kill)
        self.most_open: dict[str, int] = {}  # per upstream, the most requests open at once

    # -- processes -----------------------------------------------------------------------

    @property
    def faults_armed(self) -> bool:
        return any(seen.faults_armed for seen in self.upstreams)

    def _upstream_args(self) -> list[str]:
        """One upstream: `--ollama URL`, exactly as before the fleet. Two: a foreman.toml
        with their `[[upstream]]` tables, the second with two slots."""
        if len(self.upstreams) == 1:
            return ["--ollama", self.upstreams[0].handle.url]
        config = self.dir / "foreman.toml"
        config.write_text(
            "".join(
                f'[[upstream]]\nurl = "{seen.handle.url}"\nname = "{seen.handle.name}"\n'
                f"slots = {seen.slots}\n\n"
                for seen in self.upstreams
            )
        )
        return ["--config", str(config)]

    def start_foreman(self) -> None:
        self.proc = self.foreman_process()
        self.url = self.proc.start()

    def foreman_process(self) -> Process:
        """A new foreman (not started yet), with a log of its own."""
        self.lives += 1
        argv = [sys.executable, "-m", "foreman", "serve", "--port", "0", "--db", self.db_arg]
        return Process(
            [
                *argv,
                *self._upstream_args(),
                "--retry-backoff",
                "0.05",
                "--max-attempts",
                "3",
                "--max-wait",
                str(self.max_wait),
                "--job-timeout",
                "3",
                "--read-timeout",
                "3",
            ],
            self.dir / f"foreman-{self.lives}.log",
        )

    @property
    def db_arg(self) -> str:
        return str(self.db)

    def client_url(self) -> str:
        """Where a client's next request goes."""
        return self.url

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.client_url(), timeout=30)

    @initialize(upstreams=st.sampled_from([2, 1]))
    def begin(self, upstreams: int) -> None:
        TRIED[f"upstreams_{upstreams}"] += 1
        for handle in self.stubs[:upstreams]:
            if not handle.alive:
                handle.start()  # a run that failed midway may have left it dead
            seen = Seen(handle, slots=handle.parallel)
            self.upstreams.append(seen)
            seen.reset()
        self.start_foreman()

    def teardown(self) -> None:
        try:
            if self.proc is not None:
                self.settle()
                self.check_everything(final=True)
                TRIED["ran_again_after_a_kill"] += self.reruns
                for name, most in self.most_open.items():
                    TRIED[f"runs_with_{most}_at_once_on_{name}"] += 1
        finally:
            if self.proc is not None and self.proc.alive:
                self.proc.kill()
            for client in self.clients:
                client.join(5)
            for seen in self.upstreams:
                seen.close()
            if self.disk is not None:
                # the small disk is shared by every run of the session
                shutil.rmtree(self.db_dir, ignore_errors=True)

    # -- rules ---------------------------------------------------------------------------

    def _text(self) -> str:
        self.serial += 1
        return f"fuzz {self.run}.{self.lives}.{self.serial}"

    @rule(
        endpoint=st.sampled_from(ENDPOINTS),
        model=st.sampled_from(MODELS),
        priority=st.integers(-2, 2),
    )
    def submit_async(self, endpoint: str, model: str, priority: int) -> None:
        TRIED["submit_async"] += 1
        body = body_for(endpoint, model, self._text(), False)
        envelope = {"endpoint": endpoint, "body": body, "priority": priority}
        with self.api() as api:
            r = api.post("/jobs", json=envelope)
        if r.status_code != 202:
            raise Failure(f"POST /jobs answered {r.status_code}: {r.text}")
        self.told.add(r.json()["id"])

    @rule(
        endpoint=st.sampled_from(ENDPOINTS),
        model=st.sampled_from(MODELS),
        stream=st.booleans(),
        abandon=st.one_of(st.none(), st.floats(0.0, 0.3)),
    )
    def submit_sync(self, endpoint: str, model: str, stream: bool, abandon: float | None) -> None:
        TRIED["submit_sync" + ("_abandoned" if abandon is not None else "")] += 1
        client = SyncClient(
            self.client_url(), endpoint, body_for(endpoint, model, self._text(), stream), abandon
        )
        client.start()
        self.clients.append(client)

    @rule(
        bad=st.sampled_from(UNSTORABLE),
        good=st.lists(
            st.tuples(st.sampled_from(ENDPOINTS), st.sampled_from(MODELS)), min_size=1, max_size=6
        ),
    )
    def submit_among_unstorable(self, bad: tuple[str, bytes], good: list[tuple[str, str]]) -> None:
        """Good submissions sent at once with one that cannot be stored: the bad one is
        a 400, and every good one is taken (the invariants then follow it to its end)."""
        TRIED["submit_among_unstorable"] += 1
        sends = [
            ("/jobs", json.dumps({"endpoint": e, "body": body_for(e, m, self._text(), False)}))
            for e, m in good
        ]
        sends.insert(len(sends) // 2, (bad[0], bad[1].decode()))
        answers: dict[int, httpx.Response | httpx.HTTPError] = {}

        def post(i: int, path: str, content: str) -> None:
            try:
                with self.api() as api:
                    answers[i] = api.post(
                        path, content=content, headers={"Content-Type": "application/json"}
                    )
            except httpx.HTTPError as exc:
                answers[i] = exc

        threads = [
            threading.Thread(target=post, args=(i, path, content), daemon=True)
            for i, (path, content) in enumerate(sends)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for i, (path, content) in enumerate(sends):
            r = answers.get(i)
            if not isinstance(r, httpx.Response):
                raise Failure(f"POST {path} got no answer: {r!r}")
            if (path, content.encode()) == bad:
                if r.status_code != 400:
                    raise Failure(f"POST {path} {content} answered {r.status_code}: {r.text}")
            elif r.status_code != 202:
                raise Failure(f"POST /jobs beside a bad one answered {r.status_code}: {r.text}")
            else:
                self.told.add(r.json()["id"])

    @rule(pick=st.integers(0, 10_000))
    def cancel(self, pick: int) -> None:
        job_id = self._pick(pick)
        if job_id is None:
            return
        TRIED["cancel"] += 1
        with self.api() as api:
            r = api.post(f"/jobs/{job_id}/cancel")
        if r.status_code == 200:
            self.cancel_requested.add(job_id)
        elif r.status_code not in (404, 409):
            raise Failure(f"cancel answered {r.status_code}: {r.text}")

    @rule(pick=st.integers(0, 10_000))
    def retry(self, pick: int) -> None:
        job_id = self._pick(pick)
        if job_id is None:
            return
        TRIED["retry"] += 1
        with self.api() as api:
            r = api.post(f"/jobs/{job_id}/retry")
        if r.status_code == 200:
            TRIED["retry_accepted"] += 1
            self.retried.add(job_id)
            self.cancel_requested.discard(job_id)  # it may end any way again
        elif r.status_code not in (404, 409):
            raise Failure(f"retry answered {r.status_code}: {r.text}")

    @rule()
    def purge(self) -> None:
        TRIED["purge"] += 1
        with self.api() as api:
            r = api.delete("/jobs", params={"older_than": 0})
        if r.status_code != 200:
            raise Failure(f"purge answered {r.status_code}: {r.text}")
        self.purged |= self.told - set(self.rows())

    @rule(
        upstream=st.integers(0, 1),
        kind=st.sampled_from(FAULTS),
        after=st.integers(0, 3),
        status=st.sampled_from([500, 503]),
    )
    def arm_fault(self, upstream: int, kind: str, after: int, status: int) -> None:
        """Arm one fault on one upstream for an upcoming request (the other works on), or
        ("none") disarm that upstream's. `refuse` goes down at once and comes back after a
        moment, or after long enough for foreman to mark the upstream down; `slow` makes
        its loads and tokens slow (well within the job timeout) until the run settles."""
        seen = self.upstreams[upstream % len(self.upstreams)]
        TRIED[f"fault_{kind}"] += 1
        if kind == "none":
            seen.reset()
            return
        if kind == "slow":
            seen.configure(load_delay=0.4, token_delay=0.08)
            seen.faults_armed = True
            return
        fault: dict[str, Any] = {"kind": kind, "count": 1}
        if kind == "refuse":
            fault["seconds"] = 0.3 if after < 2 else 1.5
        elif kind == "status":
            fault["status"] = status
        elif kind in ("cut", "mid_error"):
            fault["after"] = after
        if kind != "refuse":
            fault["request_kind"] = "generate" if after % 2 else "chat"
        r = seen.control("POST", "/_stub/faults", json=fault)
        if r.status_code != 200:
            raise Failure(f"arming {fault} answered {r.status_code}: {r.text}")
        seen.faults_armed = True

    @rule(upstream=st.integers(0, 1), seconds=st.sampled_from([0.1, 0.8]))
    def kill_an_upstream(self, upstream: int, seconds: float) -> None:
        """SIGKILL one stub (an Ollama that crashed mid-answer), and start it again on its
        port a moment later; foreman meanwhile carries on on the other."""
        TRIED["kill_upstream"] += 1
        seen = self.upstreams[upstream % len(self.upstreams)]
        seen.refresh()
        seen.handle.kill()
        seen.died()
        time.sleep(seconds)
        seen.handle.start()
        seen.revived()

    @rule(max_wait=st.sampled_from([600.0, 0.3]))
    def kill_and_restart(self, max_wait: float) -> None:
        TRIED["kill_9"] += 1
        assert self.proc is not None
        self.proc.kill()
        self.interrupted |= {
            job_id for job_id, row in self.rows().items() if row["state"] in ("loading", "working")
        }
        self.max_wait = max_wait
        self.start_foreman()

    @rule()
    def second_foreman(self) -> None:
        """A second foreman on the same database refuses to start, with one line naming
        the database and the process that holds it; the first one runs on untouched (the
        done-once check would see a job it ran again)."""
        TRIED["second_foreman"] += 1
        assert self.proc is not None
        assert self.proc.popen is not None
        argv = [sys.executable, "-m", "foreman", "serve", "--port", "0", "--db", str(self.db)]
        done = subprocess.run(
            [*argv, "--ollama", self.upstreams[0].handle.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = done.stderr.strip().splitlines()
        holder = f"database {self.db} is in use by process {self.proc.popen.pid} "
        if done.returncode == 0 or len(lines) != 1 or holder not in lines[0]:
            raise Failure(f"a second foreman exited {done.returncode}: {done.stderr!r}")
        if not self.proc.alive:
            raise Failure("the first foreman died when a second one tried to start")

    @precondition(lambda self: self.disk is not None)
    @rule(
        endpoint=st.sampled_from(ENDPOINTS),
        model=st.sampled_from(MODELS),
        seconds=st.sampled_from([0.0, 0.3]),
    )
    def fill_the_disk(self, endpoint: str, model: str, seconds: float) -> None:
        """Fill the database's disk, submit while it is full, free it again. A submission
        is either taken (and then must run like any other) or refused with 503 and
        Retry-After; foreman stays up and /health answers throughout."""
        TRIED["full_disk"] += 1
        assert self.disk is not None
        filler = fill_disk(self.disk)
        try:
            with self.api() as api:
                body = body_for(endpoint, model, self._text(), False)
                r = api.post("/jobs", json={"endpoint": endpoint, "body": body})
                if r.status_code == 202:
                    self.told.add(r.json()["id"])
                elif r.status_code != 503 or "Retry-After" not in r.headers:
                    raise Failure(f"POST /jobs on a full disk answered {r.status_code}: {r.text}")
                time.sleep(seconds)
                health = api.get("/health")
                if health.status_code != 200:
                    raise Failure(f"/health on a full disk answered {health.status_code}")
        finally:
            filler.unlink()
        if self.proc is None or not self.proc.alive:
            raise Failure("foreman died on a full disk")

    @rule(seconds=st.sampled_from([0.05, 0.2, 0.5]))
    def pause(self, seconds: float) -> None:
        TRIED["pause"] += 1
        time.sleep(seconds)

    @precondition(lambda self: not self.faults_armed)
    @rule(
        jobs=st.lists(
            st.tuples(st.sampled_from(MODELS), st.integers(-1, 1)), min_size=2, max_size=8
        )
    )
    def burst(self, jobs: list[tuple[str, int]]) -> None:
        """Hold the stubs on a first job, queue the rest behind it, release. With one
        upstream, check the order the stub saw against the scheduling rule; with two (all
        at one priority), that each job ran once and each upstream drained by model."""
        TRIED["burst"] += 1
        fleet = len(self.upstreams) > 1
        self.settle()
        with self.api() as api:
            for seen in self.upstreams:
                seen.control("POST", "/_stub/release")
                seen.control("POST", "/_stub/hold")
            try:
                first = self._submit_plain(api, MODELS[0], 0)
                self._wait_in_flight(first)
                rest = [self._submit_plain(api, model, 0 if fleet else p) for model, p in jobs]
                if fleet:
                    # a moment for an idle upstream to load its key and fill its slots
                    time.sleep(0.2)
                if self.max_wait < 1:
                    time.sleep(self.max_wait + 0.3)  # every queued job is now starved
            finally:
                for seen in self.upstreams:
                    seen.control("POST", "/_stub/release")
        self.settle()
        if fleet:
            self.check_fleet_burst([first, *rest])
        else:
            self.check_burst(first, rest)

    # -- helpers -------------------------------------------------------------------------

    def _submit_plain(self, api: httpx.Client, model: str, priority: int) -> tuple[str, str]:
        text = self._text()
        body = body_for("/api/generate", model, text, False)
        r = api.post(
            "/jobs", json={"endpoint": "/api/generate", "body": body, "priority": priority}
        )
        if r.status_code != 202:
            raise Failure(f"POST /jobs answered {r.status_code}: {r.text}")
        self.told.add(r.json()["id"])
        return r.json()["id"], text

    def _wait_in_flight(self, job: tuple[str, str], limit: float = 15.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            for seen in self.upstreams:
                for entry in seen.refresh():
                    if prompt_of(entry["body"]) == job[1] and entry["end"] is None:
                        return
            time.sleep(0.01)
        raise Failure(f"job {job[0]} never reached a stub")

    def _pick(self, pick: int) -> str | None:
        ids = sorted(self.told | {c.job_id for c in self.clients if c.job_id})
        return ids[pick % len(ids)] if ids else None

    def rows(self) -> dict[str, Any]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return {row["id"]: row for row in conn.execute("SELECT * FROM jobs")}
        except sqlite3.OperationalError:
            return {}
        finally:
            conn.close()

    def settle(self) -> None:
        """Clear faults, make sure foreman runs, and wait for every job to end."""
        for seen in self.upstreams:
            seen.reset()
        if self.proc is None or not self.proc.alive:
            self.start_foreman()
        for client in self.clients:
            client.join(SETTLE_SECONDS)
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline:
            states = Counter(row["state"] for row in self.rows().values())
            if not (states["queued"] or states["loading"] or states["working"]):
                return
            time.sleep(0.05)
        stuck = {
            k: r["state"]
            for k, r in self.rows().items()
            if r["state"] in ("queued", "loading", "working")
        }
        raise Failure(f"jobs did not end within {SETTLE_SECONDS}s: {stuck}")

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def everything_holds_so_far(self) -> None:
        if self.proc is not None:
            self.check_everything(final=False)

    def check_everything(self, final: bool) -> None:
        self.check_upstreams()
        self.check_jobs(final)
        self.check_done_once()
        self.check_ran_once()

    def check_upstreams(self) -> None:
        """Per upstream and per life of its stub: what foreman sent at once, and what the
        stub's chat runner held at once."""
        for seen in self.upstreams:
            for record in seen.lives():
                problems = crowding(record, seen.slots) + occupancy_problems(
                    record, seen.handle.parallel
                )
                if problems:
                    raise Failure(f"upstream {seen.handle.name}: {'; '.join(problems)}")
                self.most_open[seen.handle.name] = max(
                    self.most_open.get(seen.handle.name, 0), most_open(record)
                )

    def check_ran_once(self) -> None:
        """Each job's prompt answered in full at most once across every stub, unless foreman
        was killed while the job ran or a client asked for a retry."""
        for job_id, row in self.rows().items():
            self.job_of_prompt.setdefault(prompt_of(json.loads(row["body"])), job_id)
        counts = completed_generations(record for seen in self.upstreams for record in seen.lives())
        allowed = self.interrupted | self.retried
        twice = {
            prompt: n
            for prompt, n in counts.items()
            if n > 1 and self.job_of_prompt.get(prompt) not in allowed
        }
        if twice:
            named = {self.job_of_prompt.get(p, p): n for p, n in twice.items()}
            raise Failure(f"jobs answered in full more than once: {named}")
        self.reruns = sum(1 for n in counts.values() if n > 1)

    def check_jobs(self, final: bool) -> None:
        rows = self.rows()
        for job_id in self.told - self.purged:
            if job_id not in rows:
                raise Failure(f"job {job_id} was accepted and is gone")
        for row in rows.values():
            state = row["state"]
            if final and state not in ("done", "failed", "cancelled"):
                raise Failure(f"job {row['id']} was lost: {state} after the queue drained")
            if state == "done":
                body = json.loads(row["body"])
                got = text_of(row["endpoint"], json.loads(row["result"]))
                want = expected_text(row["endpoint"], body, tokens=TOKENS)
                if got != want:
                    raise Failure(f"job {row['id']} is done with {got!r}, expected {want!r}")
            elif state == "failed" and not row["error"]:
                raise Failure(f"job {row['id']} failed without a reason")
            elif state == "cancelled":
                reason = row["error"] or ""
                asked = row["id"] in self.cancel_requested and reason == "cancelled by request"
                if not (asked or reason == "client disconnected"):
                    raise Failure(f"job {row['id']} was cancelled but nobody asked ({reason!r})")
        if final:
            for client in self.clients:
                if client.is_alive():
                    raise Failure(f"a synchronous client still waits: {client.body}")
                complete = client.abandon_after is None and client.error is None
                retried = client.job_id in self.retried
                if complete and not retried and client.status == 200 and client.job_id in rows:
                    self.check_sync_answer(client, rows[client.job_id])

    def check_sync_answer(self, client: SyncClient, row: Any) -> None:
        """A client that waited to the end got exactly the stored answer's text."""
        if row["state"] != "done":
            return
        want = expected_text(client.endpoint, client.body, tokens=TOKENS)
        data = client.data.decode("utf-8", "replace")
        if not client.body["stream"]:
            if text_of(client.endpoint, json.loads(data)) != want:
                raise Failure(f"sync answer for {row['id']} is {data[:200]!r}, expected {want!r}")
        elif want and want.split()[-1] not in data:
            raise Failure(f"streamed answer for {row['id']} lacks {want!r}: {data[:300]!r}")

    def check_done_once(self) -> None:
        for log in self.dir.glob("foreman-*.log"):
            offset = self.log_offsets.get(log, 0)
            with log.open("rb") as f:
                f.seek(offset)
                data = f.read()
            # only whole lines: a line being written is read next time
            cut = data.rfind(b"\n") + 1
            self.log_offsets[log] = offset + cut
            self.done_lines.update(DONE_LINE.findall(data[:cut].decode(errors="replace")))
        twice = [job for job, n in self.done_lines.items() if n > 1]
        if twice:
            raise Failure(f"jobs finished twice: {twice}")

    def check_burst(self, first: tuple[str, str], rest: list[tuple[str, str]]) -> None:
        rows = self.rows()
        texts = {text: job_id for job_id, text in rest}
        seen = [
            texts[prompt_of(e["body"])]
            for e in self.upstreams[0].refresh()
            if e["kind"] in INFERENCE and prompt_of(e["body"]) in texts
        ]
        if sorted(seen) != sorted(texts.values()):
            raise Failure(f"a burst job ran twice or never: {seen}")
        candidates = [
            Candidate(
                job_id,
                rows[job_id]["model_key"],
                rows[job_id]["priority"],
                rows[job_id]["enqueued_at"],
                turn=rows[job_id]["turn"],
            )
            for job_id in texts.values()
        ]
        resident: str | None = rows[first[0]]["model_key"]
        now = max(c.enqueued_at for c in candidates) + (
            self.max_wait + 0.3 if self.max_wait < 1 else 0
        )
        expected = []
        while candidates:
            chosen = pick_next(candidates, resident, now, self.max_wait)
            assert chosen is not None
            expected.append(chosen.id)
            resident = chosen.model_key
            candidates.remove(chosen)
        if seen != expected:
            models = {job_id: rows[job_id]["model_key"] for job_id in texts.values()}
            raise Failure(
                "the stub saw the burst in another order than the scheduling rule gives:\n"
                f"  saw      {[models[j] for j in seen]}\n"
                f"  expected {[models[j] for j in expected]}"
            )
        TRIED["burst_checked"] += 1

    def check_fleet_burst(self, jobs: list[tuple[str, str]]) -> None:
        """Every job of the burst answered in full once, on one of the upstreams; and on
        each upstream the burst's models came one after the other, each drained before the
        next (with equal priorities, nothing starved and nothing arriving meanwhile, an
        upstream that leaves a model has none of its jobs left to come back for)."""
        texts = {text: job_id for job_id, text in jobs}
        counts = completed_generations(seen.refresh() for seen in self.upstreams)
        wrong = {job_id: counts[text] for text, job_id in texts.items() if counts[text] != 1}
        if wrong:
            raise Failure(f"burst jobs not answered exactly once: {wrong}")
        if self.max_wait < 1:
            return
        for seen in self.upstreams:
            models = [
                normalise_name(str(e["model"]))
                for e in sorted(seen.refresh(), key=lambda e: e["arrival"])
                if completed(e) and prompt_of(e["body"]) in texts
            ]
            runs = [model for model, _ in itertools.groupby(models)]
            if len(runs) != len(set(runs)):
                raise Failure(f"upstream {seen.handle.name} came back to a model: {models}")
        TRIED["fleet_burst_checked"] += 1
