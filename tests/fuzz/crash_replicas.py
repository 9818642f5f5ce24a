"""The crash campaign with two replicas: kill -9 either foreman (or both) on one PostgreSQL.

The same two upstreams and the same checks as `crash.py`, with two foreman processes that
share one PostgreSQL database as replicas. Each round starts the replicas that are down,
may put one upstream in trouble, gives work to either replica (jobs and synchronous
streams, so a client often waits on the replica that does not drive its job's upstream),
waits for a chosen moment and kills one replica or both with SIGKILL; the survivor's
leases keep its upstreams, the dead one's move within a lease poll. After the last round
both replicas run until every job has ended.

What changes from SQLite's campaign:
- rows are read with psycopg;
- "interrupted" (a job that may be answered twice) is a job loading or working on an
  upstream whose lease a killed replica held;
- a synchronous stream to a replica that survived the round must get its whole answer
  (the job may run on the killed one and start again elsewhere): it is read to its end;
- "integrity" is what the database can say: every row's state is a job state, every done
  job has a result and every failed one a reason, none is left running, and, sampled all
  through the campaign, no upstream ever had more jobs loading or working than its slots,
  nor jobs of two models at once.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio
from psycopg.rows import dict_row

from foreman.jobs import JobState
from foreman.stub import StubOllama, expected_text
from foreman.testing import Process, ProcessFailed

from .crash import SLOTS, TARGETS, TOKENS, Campaign, CrashReport

REPLICAS = ("r0", "r1")
# whom a round kills: either replica, now and then both
VICTIMS = ("r0", "r1", "r0", "r1", "both")
VALID_STATES = frozenset(state.value for state in JobState)
RUNNING = ("loading", "working")
# how long a survivor's synchronous client may wait for its answer after a kill (a lease
# moves within a poll of a second; the job may start again from its beginning)
SURVIVOR_WAIT = 60.0


def running_problems(rows: Iterable[Mapping[str, Any]], slots: Mapping[str, int]) -> list[str]:
    """What one moment of the jobs table must never show: more jobs loading or working on
    an upstream than its slots, jobs of two models running on one, or a running job on an
    upstream that is not in the fleet (none at all included)."""
    running: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["state"] in RUNNING:
            running.setdefault(str(row["upstream"]), []).append(row)
    problems = []
    for upstream, jobs in sorted(running.items()):
        models = sorted({str(job["model_key"]) for job in jobs})
        ids = sorted(str(job["id"]) for job in jobs)
        if upstream not in slots:
            problems.append(f"jobs {ids} running on upstream {upstream}")
        elif len(jobs) > slots[upstream] or len(models) > 1:
            problems.append(
                f"upstream {upstream} ({slots[upstream]} slots) ran {ids} of {models} at once"
            )
    return problems


class ReplicaCampaign(Campaign):
    def __init__(self, stubs: dict[str, StubOllama], work: Path, seed: int, url: str) -> None:
        super().__init__(stubs, work, seed)
        self.url = url
        self.procs: dict[str, Process | None] = dict.fromkeys(REPLICAS)
        self.lives: Counter[str] = Counter()
        self.poller = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        # what the database showed that it must never show (see `_sample`)
        self.db_problems: list[str] = []
        self.samples = 0
        # synchronous clients of a replica that survived their round, and those of them
        # that did not get their whole answer
        self.survivor_clients = 0
        self.survivor_unanswered: list[str] = []
        self.kills: Counter[str] = Counter()
        # set once a round's clients of a surviving replica have their answers
        self._submissions_done = trio.Event()

    # -- the database -------------------------------------------------------------------

    def _rows(self) -> list[Any]:
        try:
            return self.poller.execute("SELECT * FROM jobs").fetchall()
        except psycopg.errors.UndefinedTable:
            return []  # not created yet

    async def _states(self) -> Counter[str]:
        rows = await trio.to_thread.run_sync(self._sample)
        return Counter(row["state"] for row in rows)

    def _sample(self) -> list[Any]:
        """The rows, checked for what no moment may show: more jobs running on an upstream
        than its slots, jobs of two models running on one, a running job on no upstream."""
        rows = self._rows()
        self.samples += 1
        self.db_problems += running_problems(rows, SLOTS)
        return rows

    async def _sampler(self) -> None:
        while True:
            await trio.to_thread.run_sync(self._sample)
            await trio.sleep(0.01)

    def _integrity(self) -> str:
        problems = list(dict.fromkeys(self.db_problems))
        for row in self._rows():
            state = row["state"]
            if state not in VALID_STATES:
                problems.append(f"{row['id']}: state {state!r}")
            elif state in ("queued", *RUNNING):
                problems.append(f"{row['id']}: left {state}")
            elif state == "done" and row["result"] is None:
                problems.append(f"{row['id']}: done without a result")
            elif state == "failed" and not row["error"]:
                problems.append(f"{row['id']}: failed without a reason")
        return "ok" if not problems else "; ".join(problems[:20])

    # -- the replicas -------------------------------------------------------------------

    def _replica(self, name: str) -> Process:
        self.lives[name] += 1
        argv = [sys.executable, "-m", "foreman", "serve", "--port", "0", "--db", self.url]
        return Process(
            [*argv, "--config", str(self.config), "--retry-backoff", "0.05"],
            self.work / f"{name}-life{self.lives[name]:03d}.log",
        )

    async def _start_missing(self) -> None:
        async def start(name: str) -> None:
            proc = self._replica(name)
            await trio.to_thread.run_sync(proc.start)
            self.procs[name] = proc

        async with trio.open_nursery() as nursery:
            for name, proc in self.procs.items():
                if proc is None or not proc.alive:
                    nursery.start_soon(start, name)

    async def _leases(self, proc: Process) -> list[str] | None:
        try:
            async with httpx.AsyncClient(base_url=proc.url, timeout=5) as client:
                return list((await client.get("/ready")).json().get("leases", []))
        except (httpx.HTTPError, ValueError):
            return None

    def _kill_all(self) -> None:
        for proc in self.procs.values():
            if proc is not None and proc.alive:
                proc.kill()

    # -- the clients ---------------------------------------------------------------------

    async def _survivor_stream(
        self, client: httpx.AsyncClient, replica: str, first_chunk: trio.Event, killed: set[str]
    ) -> None:
        """A synchronous stream; if its replica survives the round, it must end whole."""
        body = self._body("/api/chat", True)
        text: list[str] = []
        errors: list[str] = []
        done = cut = False
        job_id = ""
        try:
            async with client.stream("POST", "/api/chat", json=body) as r:
                job_id = r.headers.get("x-foreman-job-id", "")
                if job_id:
                    self.accepted.add(job_id)
                async for line in r.aiter_lines():
                    first_chunk.set()
                    if not line.strip():
                        continue
                    chunk = json.loads(line)
                    if "error" in chunk:
                        errors.append(str(chunk["error"]))
                    text.append(chunk.get("message", {}).get("content", ""))
                    done = done or bool(chunk.get("done"))
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            cut = True
            errors.append(f"{type(exc).__name__}: {exc}")
        if replica in killed:
            return  # its connection died with its replica: nothing was promised
        self.survivor_clients += 1
        got = "".join(text)
        want = expected_text("/api/chat", body, tokens=TOKENS)
        if cut or not (done or errors):
            self.survivor_unanswered.append(f"{job_id or body}: cut off {errors}, got {got!r}")
        elif done and got != want:
            self.survivor_unanswered.append(f"{job_id}: got {got!r}, want {want!r}")
        # else it ended with the job's error (out of attempts on a failing upstream): the
        # job's row must then say why, which `check` sees

    # -- a round -------------------------------------------------------------------------

    async def round(self, number: int) -> None:
        target = self.rng.choice(TARGETS)
        victim = self.rng.choice(VICTIMS)
        victims = set(REPLICAS) if victim == "both" else {victim}
        self.report.kills_by_target[target] += 1
        self.kills[victim] += 1
        await self._start_missing()
        self._trouble()
        killed: set[str] = set()
        interrupted_upstreams: set[str] = set()
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._sampler)
                clients = {
                    name: httpx.AsyncClient(base_url=proc.url, timeout=SURVIVOR_WAIT)
                    for name, proc in self.procs.items()
                    if proc is not None
                }
                try:
                    async with trio.open_nursery() as streams:
                        await self._work(target, clients, streams, killed)
                        for name in sorted(victims):
                            proc = self.procs[name]
                            assert proc is not None
                            leases = await self._leases(proc)
                            # unknown leases: any running job may have been interrupted
                            interrupted_upstreams |= set(SLOTS if leases is None else leases)
                            killed.add(name)
                            await trio.to_thread.run_sync(proc.kill)
                        # the survivors' clients get their answers; the rest end with theirs
                        with trio.move_on_after(SURVIVOR_WAIT) as waited:
                            await self._submissions_done.wait()
                        if waited.cancelled_caught:
                            streams.cancel_scope.cancel()
                finally:
                    for client in clients.values():
                        await client.aclose()
                outer.cancel_scope.cancel()
        except BaseException:
            self._kill_all()  # a failed round must not leave foreman running
            raise
        await self._heal()
        rows = await trio.to_thread.run_sync(self._sample)
        self.interrupted |= {
            row["id"]
            for row in rows
            if row["state"] in RUNNING and row["upstream"] in interrupted_upstreams
        }
        for state, count in Counter(row["state"] for row in rows).items():
            if count and state in ("queued", *RUNNING):
                self.report.states_at_kill[state] += 1
        self.report.rounds += 1

    async def _work(
        self,
        target: str,
        clients: dict[str, httpx.AsyncClient],
        streams: trio.Nursery,
        killed: set[str],
    ) -> None:
        """Gives either replica work and returns at the chosen moment, streams left going."""
        self._submissions_done = trio.Event()
        names = sorted(clients)

        def any_client() -> httpx.AsyncClient:
            return clients[self.rng.choice(names)]

        if target == "queued":
            for _ in range(self.rng.randint(2, 6)):
                await self._submit(any_client())
        elif target == "loading":
            for _ in range(self.rng.randint(2, 5)):
                await self._submit(any_client())
            await self._wait_state("loading")
            await trio.sleep(self.rng.uniform(0, 0.1))
        elif target == "streaming":
            first = trio.Event()
            pending = self.rng.randint(1, 3)
            done = trio.Event()

            async def one(name: str) -> None:
                nonlocal pending
                try:
                    await self._survivor_stream(clients[name], name, first, killed)
                finally:
                    pending -= 1
                    if not pending:
                        done.set()

            for _ in range(pending):
                streams.start_soon(one, self.rng.choice(names))
            self._submissions_done = done
            with trio.move_on_after(15):
                await first.wait()
            await trio.sleep(self.rng.uniform(0, 0.05))
        else:  # a burst of submissions and ends to both replicas: kill amid the commits

            async def burst(client: httpx.AsyncClient) -> None:
                for _ in range(6):
                    await self._submit(client)

            left = 5
            done = trio.Event()

            async def counted(client: httpx.AsyncClient) -> None:
                nonlocal left
                try:
                    await burst(client)
                finally:
                    left -= 1
                    if not left:
                        done.set()

            for _ in range(left):
                streams.start_soon(counted, any_client())
            self._submissions_done = done
            await trio.sleep(self.rng.uniform(0.005, 0.08))
        await trio.sleep(self.rng.uniform(0, 0.02))
        if target in ("queued", "loading"):
            self._submissions_done.set()

    async def finish(self, limit: float = 300.0) -> None:
        """Both replicas once more, with instant stubs, until every job has ended."""
        for stub in self.stubs.values():
            stub.configure(load_delay=0.0, token_delay=0.0)
        try:
            await self._start_missing()
            deadline = trio.current_time() + limit
            while trio.current_time() < deadline:
                states = await self._states()
                if not (states["queued"] or states["loading"] or states["working"]):
                    break
                await trio.sleep(0.05)
        finally:
            for proc in self.procs.values():
                if proc is not None and proc.alive:
                    proc.terminate()

    def close(self) -> None:
        self._kill_all()
        self.poller.close()


def replica_summary(campaign: ReplicaCampaign) -> str:
    return "\n".join(
        [
            campaign.report.summary().replace("crash campaign:", "crash campaign, 2 replicas:"),
            f"  killed: {dict(sorted(campaign.kills.items()))}"
            f" (lives: {dict(sorted(campaign.lives.items()))})",
            f"  synchronous clients of a surviving replica: {campaign.survivor_clients},"
            f" without their whole answer: {len(campaign.survivor_unanswered)}",
            f"  database samples: {campaign.samples}",
        ]
    )


async def run_replica_campaign(
    work: Path, url: str, rounds: int, seed: int = 6
) -> tuple[CrashReport, ReplicaCampaign]:
    """`rounds` rounds killing either replica, then the final drain and the checks."""
    started = trio.current_time()
    stubs = {name: StubOllama() for name in SLOTS}
    for name, stub in stubs.items():
        stub.configure(load_delay=0.15, token_delay=0.01, tokens=TOKENS, parallel=SLOTS[name])
    campaign: ReplicaCampaign | None = None
    try:
        async with trio.open_nursery() as nursery:
            for stub in stubs.values():
                await nursery.start(stub.serve)
            # the configuration names the stubs' addresses, known once they listen
            campaign = ReplicaCampaign(stubs, work, seed, url)
            for number in range(rounds):
                await campaign.round(number)
            await campaign.finish()
            nursery.cancel_scope.cancel()
        report = campaign.check()
    finally:
        if campaign is not None:
            campaign.close()
    report.seconds = trio.current_time() - started
    return report, campaign


__all__ = ["ProcessFailed", "ReplicaCampaign", "replica_summary", "run_replica_campaign"]
