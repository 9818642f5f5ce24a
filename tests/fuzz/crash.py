"""The crash campaign: kill -9 foreman at random moments, restart it, lose nothing.

One database, two upstreams (stubs in this process: `a` with one slot, `b` with two, as an
Ollama with OLLAMA_NUM_PARALLEL=2), many rounds. Each round starts foreman, may put one
upstream in trouble while the other works (it goes down for a while, fails requests with
5xx, or turns slow), gives foreman work, waits for a chosen moment (jobs only queued, a
model loading, a stream in mid-flight, a burst of commits), sleeps a random few
milliseconds more and kills it with SIGKILL. After the last round foreman runs once more,
both upstreams well, until every job has ended.

Then, for every job a client was told about (a 202 from POST /jobs, or the job id header
of a synchronous answer): it must exist and have ended done, or failed with a reason (no
job is cancelled here, so none may end cancelled); no job may have been finished twice
(two `state=done` lines across the logs); every done result must be the stub's
deterministic answer to its request; and SQLite's integrity_check must say ok. Jobs the
stub served more than once (the crash came after Ollama answered, before the end was
committed) are counted, not failed: that is the one re-run foreman allows. Across both
stubs' records, no job may have been answered in full twice unless it was loading or
working at a kill; and on each upstream foreman never had requests for two models open at
once nor more than its slots, and the stub's runner (`chat_occupancy`) never held two
models nor more than its parallel.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from foreman.stub import StubOllama, expected_text
from foreman.testing import Process

from .fleet_checks import completed_generations, crowding, occupancy_problems, prompt_of

TARGETS = ("queued", "loading", "streaming", "commit")
# what may befall one upstream during a round while the other works
TROUBLES = ("none", "none", "down", "failing", "slow")
SLOTS = {"a": 1, "b": 2}
MODELS = ("llama3", "mistral", "phi3")
TOKENS = 10
DONE_LINE = re.compile(r"job (\w{26}) model=\S+ state=done")


@attrs.define
class CrashReport:
    rounds: int = 0
    jobs: int = 0
    lost: list[str] = attrs.field(factory=list)
    finished_twice: list[str] = attrs.field(factory=list)
    wrong_results: list[str] = attrs.field(factory=list)
    rerun_after_interruption: int = 0
    # answered in full more than once without a kill while it ran
    ran_twice: list[str] = attrs.field(factory=list)
    # an upstream given two models, or more than its slots, at once (per its stub's record)
    crowded: list[str] = attrs.field(factory=list)
    failed: int = 0
    kills_by_target: Counter[str] = attrs.field(factory=Counter)
    troubles: Counter[str] = attrs.field(factory=Counter)
    jobs_by_upstream: Counter[str] = attrs.field(factory=Counter)
    # which job states the database held right after each kill (a round counts once per state)
    states_at_kill: Counter[str] = attrs.field(factory=Counter)
    integrity: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.finished_twice
            and not self.wrong_results
            and not self.ran_twice
            and not self.crowded
            and self.integrity == "ok"
        )

    def summary(self) -> str:
        return "\n".join(
            [
                f"crash campaign: {self.rounds} rounds of kill -9 in {self.seconds:.0f}s",
                f"  kills aimed at: {dict(sorted(self.kills_by_target.items()))}",
                f"  one upstream's trouble: {dict(sorted(self.troubles.items()))}",
                "  job states in the database at the kill:"
                f" {dict(sorted(self.states_at_kill.items()))}",
                f"  jobs accepted: {self.jobs}",
                f"  lost: {len(self.lost)}",
                f"  finished twice: {len(self.finished_twice)}",
                f"  wrong results: {len(self.wrong_results)}",
                f"  failed with a reason (out of attempts after repeated kills): {self.failed}",
                f"  re-run after interruption: {self.rerun_after_interruption}",
                f"  answered twice without a kill: {len(self.ran_twice)}",
                f"  done per upstream: {dict(sorted(self.jobs_by_upstream.items()))}",
                f"  upstreams crowded: {len(self.crowded)}",
                f"  integrity_check: {self.integrity}",
            ]
        )


def _rows(db: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM jobs").fetchall()
    except sqlite3.OperationalError:
        return []  # not created yet
    finally:
        conn.close()


def _prompt(row: sqlite3.Row) -> str:
    return prompt_of(json.loads(row["body"]))


def _states(db: Path) -> Counter[str]:
    return Counter(row["state"] for row in _rows(db))


class Campaign:
    def __init__(self, stubs: dict[str, StubOllama], work: Path, seed: int) -> None:
        self.stubs = stubs
        self.work = work
        self.db = work / "foreman.db"
        self.config = work / "foreman.toml"
        self.config.write_text(
            "".join(
                f'[[upstream]]\nurl = "{stub.url}"\nname = "{name}"\nslots = {SLOTS[name]}\n\n'
                for name, stub in stubs.items()
            )
        )
        self.rng = random.Random(seed)
        self.accepted: set[str] = set()
        # jobs loading or working right after a kill: they may have been answered before
        # their end was committed, and may run again
        self.interrupted: set[str] = set()
        self.report = CrashReport()
        self.serial = 0

    def _foreman(self, name: str) -> Process:
        argv = [sys.executable, "-m", "foreman", "serve", "--port", "0", "--db", str(self.db)]
        return Process(
            [*argv, "--config", str(self.config), "--retry-backoff", "0.05"],
            self.work / f"{name}.log",
        )

    def _trouble(self) -> None:
        """Put one upstream in trouble for this round (or none); the other works on."""
        trouble = self.rng.choice(TROUBLES)
        name = self.rng.choice(sorted(self.stubs))
        self.report.troubles[trouble if trouble == "none" else f"{trouble} {name}"] += 1
        stub = self.stubs[name]
        if trouble == "down":
            stub.refuse(self.rng.uniform(0.2, 1.0))
        elif trouble == "failing":
            stub.add_fault("status", status=self.rng.choice([500, 503]), count=2)
        elif trouble == "slow":
            stub.configure(load_delay=0.5, token_delay=0.05)

    async def _heal(self) -> None:
        for stub in self.stubs.values():
            stub.clear_faults()
            stub.configure(load_delay=0.15, token_delay=0.01)
            if not stub.listening:
                await stub.start_listening()

    def _body(self, endpoint: str, stream: bool) -> dict[str, Any]:
        self.serial += 1
        model = self.rng.choice(MODELS)
        text = f"crash note {self.serial}"
        if endpoint == "/api/chat":
            return {
                "model": model,
                "messages": [{"role": "user", "content": text}],
                "stream": stream,
            }
        return {"model": model, "prompt": text, "stream": stream}

    async def _submit(self, client: httpx.AsyncClient) -> None:
        endpoint = self.rng.choice(("/api/generate", "/api/chat"))
        try:
            r = await client.post(
                "/jobs", json={"endpoint": endpoint, "body": self._body(endpoint, False)}
            )
        except httpx.HTTPError:
            return  # killed before it answered: nothing was promised
        if r.status_code == 202:
            self.accepted.add(r.json()["id"])

    async def _sync_stream(self, client: httpx.AsyncClient, first_chunk: trio.Event) -> None:
        try:
            async with client.stream("POST", "/api/chat", json=self._body("/api/chat", True)) as r:
                job_id = r.headers.get("x-foreman-job-id")
                if job_id:
                    self.accepted.add(job_id)
                async for _ in r.aiter_bytes():
                    first_chunk.set()
        except httpx.HTTPError:
            pass

    def _rows(self) -> list[Any]:
        """Every job row (mappings by column name)."""
        return _rows(self.db)

    def _integrity(self) -> str:
        conn = sqlite3.connect(self.db)
        try:
            return ", ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall())
        finally:
            conn.close()

    async def _states(self) -> Counter[str]:
        return _states(self.db)

    async def _wait_state(self, state: str, limit: float = 10.0) -> bool:
        deadline = trio.current_time() + limit
        while trio.current_time() < deadline:
            if (await self._states())[state]:
                return True
            await trio.sleep(0.003)
        return False

    async def round(self, number: int) -> None:
        target = self.rng.choice(TARGETS)
        self.report.kills_by_target[target] += 1
        proc = self._foreman(f"round-{number:03d}")
        url = await trio.to_thread.run_sync(proc.start)
        self._trouble()
        try:
            async with (
                httpx.AsyncClient(base_url=url, timeout=30) as client,
                trio.open_nursery() as nursery,
            ):
                if target == "queued":
                    for _ in range(self.rng.randint(2, 6)):
                        await self._submit(client)
                elif target == "loading":
                    for _ in range(self.rng.randint(2, 5)):
                        await self._submit(client)
                    await self._wait_state("loading")
                    await trio.sleep(self.rng.uniform(0, 0.1))
                elif target == "streaming":
                    first = trio.Event()
                    for _ in range(self.rng.randint(1, 3)):
                        nursery.start_soon(self._sync_stream, client, first)
                    with trio.move_on_after(15):
                        await first.wait()
                    await trio.sleep(self.rng.uniform(0, 0.05))
                else:  # a burst of submissions and ends: kill amid the commits

                    async def burst() -> None:
                        for _ in range(6):
                            await self._submit(client)

                    for _ in range(5):
                        nursery.start_soon(burst)
                    await trio.sleep(self.rng.uniform(0.005, 0.08))
                await trio.sleep(self.rng.uniform(0, 0.02))
                await trio.to_thread.run_sync(proc.kill)
                nursery.cancel_scope.cancel()
        finally:
            if proc.alive:
                proc.kill()  # a failed round must not leave foreman running
        await self._heal()
        rows = _rows(self.db)
        self.interrupted |= {row["id"] for row in rows if row["state"] in ("loading", "working")}
        for state, count in Counter(row["state"] for row in rows).items():
            if count and state in ("queued", "loading", "working"):
                self.report.states_at_kill[state] += 1
        self.report.rounds += 1

    async def finish(self, limit: float = 300.0) -> None:
        """Restart once more with an instant stub and let every job end."""
        for stub in self.stubs.values():
            stub.configure(load_delay=0.0, token_delay=0.0)
        proc = self._foreman("final")
        await trio.to_thread.run_sync(proc.start)
        try:
            deadline = trio.current_time() + limit
            while trio.current_time() < deadline:
                states = _states(self.db)
                if not (states["queued"] or states["loading"] or states["working"]):
                    break
                await trio.sleep(0.05)
        finally:
            proc.terminate()

    def check(self) -> CrashReport:
        report = self.report
        rows = {row["id"]: row for row in self._rows()}
        report.jobs = len(self.accepted)
        for job_id in sorted(self.accepted):
            row = rows.get(job_id)
            if row is None or row["state"] not in ("done", "failed"):
                report.lost.append(job_id)
            elif row["state"] == "failed":
                report.failed += 1
                if not row["error"]:
                    report.lost.append(job_id)
        done_lines: Counter[str] = Counter()
        for log in self.work.glob("*.log"):
            done_lines.update(DONE_LINE.findall(log.read_text(errors="replace")))
        report.finished_twice = sorted(job for job, n in done_lines.items() if n > 1)
        for row in rows.values():
            if row["state"] != "done":
                continue
            body = json.loads(row["body"])
            result = json.loads(row["result"])
            got = (
                result["message"]["content"]
                if row["endpoint"] == "/api/chat"
                else result["response"]
            )
            if got != expected_text(row["endpoint"], body, tokens=TOKENS):
                report.wrong_results.append(row["id"])
        served: Counter[str] = Counter()
        for stub in self.stubs.values():
            for entry in stub.requests_of("chat", "generate"):
                body = entry.body if isinstance(entry.body, dict) else {}
                text = body.get("prompt") or "".join(
                    str(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict)
                )
                if text:  # explicit loads and unloads carry no prompt
                    served[text] += 1
        report.rerun_after_interruption = sum(1 for n in served.values() if n > 1)
        records = {name: [e.to_dict() for e in stub.requests] for name, stub in self.stubs.items()}
        job_of_prompt = {_prompt(row): row["id"] for row in rows.values()}
        report.ran_twice = sorted(
            job_of_prompt.get(prompt, prompt)
            for prompt, n in completed_generations(records.values()).items()
            if n > 1 and job_of_prompt.get(prompt) not in self.interrupted
        )
        for name, record in records.items():
            stub = self.stubs[name]
            problems = crowding(record, SLOTS[name]) + occupancy_problems(
                record, stub.config.parallel
            )
            report.crowded += [f"{name}: {problem}" for problem in problems]
        report.jobs_by_upstream.update(
            row["upstream"] for row in rows.values() if row["state"] == "done"
        )
        report.integrity = self._integrity()
        return report


async def run_campaign(work: Path, rounds: int, seed: int = 6) -> CrashReport:
    """`rounds` kill -9 rounds on one database, then the final drain and the checks."""
    started = time.monotonic()
    stubs = {name: StubOllama() for name in SLOTS}
    for name, stub in stubs.items():
        stub.configure(load_delay=0.15, token_delay=0.01, tokens=TOKENS, parallel=SLOTS[name])
    async with trio.open_nursery() as nursery:
        for stub in stubs.values():
            await nursery.start(stub.serve)
        campaign = Campaign(stubs, work, seed)
        for number in range(rounds):
            await campaign.round(number)
        await campaign.finish()
        nursery.cancel_scope.cancel()
    report = campaign.check()
    report.seconds = time.monotonic() - started
    return report
