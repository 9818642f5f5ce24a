"""The state machine's replica dimension: the same rules and invariants, with foreman on a
PostgreSQL database (a fresh one per run) as replicas.

A run may start a second replica on the same database, and kill -9 either replica (or both)
and start it again; clients' requests go to either replica in turn (so a synchronous
client often waits on the replica that does not drive its job's upstream). Every
invariant of `ForemanMachine` is checked against the database, read with psycopg.

What differs from SQLite's machine:
- "a second foreman refuses to start" is SQLite's rule; here a second foreman is a replica;
- `kill_and_restart` is replaced by `kill_a_replica`, which keeps the run's `max_wait`
  (both replicas must pick by one rule for the burst's order to be checked), so the
  starved-burst case is SQLite's alone;
- a job interrupted by a kill is one loading or working on an upstream whose lease a
  killed replica held (asked of its /ready just before);
- a streaming client of a surviving replica whose job's run died with the other replica
  may be told so in-band (the answer cannot follow part of a dead run): that is an answer.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
import psycopg
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule
from psycopg.rows import dict_row

from foreman.testing import Process
from tests.pg.cluster import PostgresCluster

from .machine import TRIED, ForemanMachine, SyncClient

# what a client reading a stream is told when its job's run stopped mid-answer
CUT_OFF = "the answer was cut off"


class ReplicaMachine(ForemanMachine):
    """Set `cluster` (a running PostgreSQL) besides what `ForemanMachine` needs."""

    cluster: ClassVar[PostgresCluster | None] = None

    def __init__(self) -> None:
        super().__init__()
        assert self.cluster is not None
        self.database = self.cluster.create_database()
        self.db_url = self.cluster.url(self.database)
        self.other: Process | None = None
        self.turn = 0
        self.replica_kills = 0

    @property
    def db_arg(self) -> str:
        return self.db_url

    def replicas(self) -> list[Process]:
        return [p for p in (self.proc, self.other) if p is not None]

    def client_url(self) -> str:
        """Either replica, in turn."""
        alive = [p.url for p in self.replicas() if p.alive]
        if not alive:
            return self.url
        self.turn += 1
        return alive[self.turn % len(alive)]

    def rows(self) -> dict[str, Any]:
        with psycopg.connect(self.db_url, row_factory=dict_row) as conn:
            try:
                return {row["id"]: row for row in conn.execute("SELECT * FROM jobs")}
            except psycopg.errors.UndefinedTable:
                return {}

    # -- rules ---------------------------------------------------------------------------

    @precondition(lambda self: self.other is None)
    @rule()
    def start_second_replica(self) -> None:
        TRIED["replica_started"] += 1
        self.other = self.foreman_process()
        self.other.start()

    @rule(which=st.sampled_from(["first", "second", "both"]))
    def kill_a_replica(self, which: str) -> None:
        """kill -9 of one replica or both, mid-whatever, and start them again."""
        victims = [
            p
            for name, p in (("first", self.proc), ("second", self.other))
            if p is not None and which in (name, "both")
        ]
        if not victims:
            return
        TRIED[f"kill_9_replica_{which}"] += 1
        leased: set[str] | None = set()
        for proc in victims:
            held = self._leases(proc)
            leased = None if held is None or leased is None else leased | held
        for proc in victims:
            proc.kill()
        self.replica_kills += 1
        self.interrupted |= {
            job_id
            for job_id, row in self.rows().items()
            if row["state"] in ("loading", "working")
            and (leased is None or row["upstream"] in leased)
        }
        self._start_dead()

    def second_foreman(self) -> None:
        """Not a rule here: a second foreman on PostgreSQL is a replica."""

    def kill_and_restart(self, max_wait: float) -> None:
        """Not a rule here: `kill_a_replica` kills and keeps one `max_wait` for both."""

    # -- helpers -------------------------------------------------------------------------

    def _leases(self, proc: Process) -> set[str] | None:
        try:
            with httpx.Client(base_url=proc.url, timeout=5) as client:
                return set(client.get("/ready").json().get("leases", []))
        except (httpx.HTTPError, ValueError):
            return None

    def _start_dead(self) -> None:
        if self.proc is not None and not self.proc.alive:
            self.start_foreman()
        if self.other is not None and not self.other.alive:
            self.other = self.foreman_process()
            self.other.start()

    def settle(self) -> None:
        self._start_dead()
        super().settle()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            if self.other is not None and self.other.alive:
                self.other.kill()
            assert self.cluster is not None
            self.cluster.drop_database(self.database)

    def check_sync_answer(self, client: SyncClient, row: Any) -> None:
        told = CUT_OFF in client.data.decode("utf-8", "replace")
        if client.body["stream"] and told and self.replica_kills:
            TRIED["replica_stream_cut_off"] += 1
            return
        super().check_sync_answer(client, row)
