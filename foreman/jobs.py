"""The job, its states, and the one table of legal transitions.

Pure: nothing here does I/O. The store enforces `check_transition` on every write, so a
transition that is not in `TRANSITIONS` is a bug and raises instead of corrupting a row.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs


class JobState(enum.StrEnum):
    QUEUED = "queued"
    LOADING = "loading"
    WORKING = "working"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def running(self) -> bool:
        return self in RUNNING_STATES


TERMINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
RUNNING_STATES = frozenset({JobState.LOADING, JobState.WORKING})

# Every legal move. `queued -> working` skips `loading` when the job's model is already
# resident (no load happens, so there is nothing to show); `-> queued` from a running
# state is a transient failure, an outage or a restart putting the job back.
TRANSITIONS: frozenset[tuple[JobState, JobState]] = frozenset(
    {
        (JobState.QUEUED, JobState.LOADING),
        (JobState.QUEUED, JobState.WORKING),
        (JobState.QUEUED, JobState.FAILED),
        (JobState.QUEUED, JobState.CANCELLED),
        (JobState.LOADING, JobState.WORKING),
        (JobState.LOADING, JobState.QUEUED),
        (JobState.LOADING, JobState.FAILED),
        (JobState.LOADING, JobState.CANCELLED),
        (JobState.WORKING, JobState.DONE),
        (JobState.WORKING, JobState.QUEUED),
        (JobState.WORKING, JobState.FAILED),
        (JobState.WORKING, JobState.CANCELLED),
        (JobState.FAILED, JobState.QUEUED),
        (JobState.CANCELLED, JobState.QUEUED),
    }
)


class IllegalTransition(Exception):
    """A state change that the transition table forbids: always a bug in foreman."""


def check_transition(old: JobState, new: JobState) -> None:
    if (old, new) not in TRANSITIONS:
        raise IllegalTransition(f"illegal job transition {old.value} -> {new.value}")


class Endpoint(enum.StrEnum):
    """The upstream routes a job can target."""

    CHAT = "/api/chat"
    GENERATE = "/api/generate"
    V1_CHAT = "/v1/chat/completions"
    V1_COMPLETIONS = "/v1/completions"

    @property
    def openai(self) -> bool:
        """One of Ollama's OpenAI-compatible routes (SSE streams, OpenAI error shape)."""
        return self.value.startswith("/v1/")

    @property
    def native(self) -> Endpoint:
        """The native route Ollama runs this one through, and so the route that loads
        and unloads its model: a /v1 route can do neither (it takes no keep_alive, and
        an empty /v1 chat is a 400)."""
        return _NATIVE[self]


_NATIVE = {
    Endpoint.CHAT: Endpoint.CHAT,
    Endpoint.GENERATE: Endpoint.GENERATE,
    Endpoint.V1_CHAT: Endpoint.CHAT,
    Endpoint.V1_COMPLETIONS: Endpoint.GENERATE,
}


@attrs.frozen
class Job:
    """One row of the jobs table, as the rest of foreman sees it."""

    id: str
    endpoint: Endpoint
    model: str
    model_key: str
    body: bytes
    stream: bool
    state: JobState
    priority: int
    attempts: int
    max_attempts: int
    not_before: float
    enqueued_at: float
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result: Any = None
    queue_ms: int | None = None
    ref: str | None = None
    idempotency_key: str | None = None
    # wall-clock time by which the job must have started, or it fails as expired
    deadline: float | None = None
    # the name of the API key that made the job (None without keys)
    key_name: str | None = None
    # the name of the upstream that ran (or runs) its latest attempt; None before one
    upstream: str | None = None
    # its place among the queued jobs of its key and priority (`policy.turn_for`)
    turn: int = 0
    # the token of the replica whose client waits for its answer (None without replicas)
    waiter: str | None = None


@attrs.frozen
class NewJob:
    """What a caller hands the store to enqueue: everything a job starts with."""

    endpoint: Endpoint
    model: str
    model_key: str
    body: bytes
    stream: bool
    priority: int = 0
    max_attempts: int = 5
    ref: str | None = None
    deadline: float | None = None
    idempotency_key: str | None = None
    # what the idempotency key stands for: the same key with another request is a conflict
    request_hash: str | None = None
    # the name of the API key that made the job (None without keys)
    key_name: str | None = None
    # that key's share of turns against other keys' jobs for one model (`weight=N`)
    weight: int = 1
    # the token of the replica whose client waits for the answer (None without replicas)
    waiter: str | None = None
