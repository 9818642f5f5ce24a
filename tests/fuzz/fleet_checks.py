"""What the stubs' own records prove about foreman over several upstreams.

Pure: each function reads one stub's record (the dicts GET /_stub/requests returns, or
`RequestEntry.to_dict()` of an in-process stub), as the state machine and the crash
campaign both need it. Times in one record are on that stub process's clock, so a record
is only ever compared with itself; a stub that was killed and started again has one
record per life.

- `crowding`: what foreman sent at once. The stub queues a request it cannot run yet, so
  its own `start`/`released` times (`chat_occupancy`) can never show two models at once;
  what foreman is answerable for is how many requests it had open, and for which models,
  when each one arrived.
- `completed_generations`: the prompts the stub answered in full, so a test can count the
  generations of each job across every stub.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from foreman.stub import chat_occupancy, normalise_name

INFERENCE = ("chat", "generate", "v1-chat", "v1-completions")


def prompt_of(body: Any) -> str:
    """The prompt of a generate body, or the last message of a chat body ("" for none:
    foreman's explicit loads and unloads carry no prompt)."""
    if not isinstance(body, dict):
        return ""
    if isinstance(body.get("prompt"), str):
        return str(body["prompt"])
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content") or "")
    return ""


def _model(entry: Mapping[str, Any]) -> str:
    return normalise_name(str(entry.get("model") or ""))


def crowding(record: Iterable[Mapping[str, Any]], slots: int) -> list[str]:
    """Each chat/generate request that arrived while foreman already had `slots` requests
    open at this stub, or one for another model. A request foreman had already closed (the
    stub marks it cancelled when it notices) may still look open for a moment: it does not
    count as open, though its own arrival is checked like any other."""
    inference = sorted((e for e in record if e["kind"] in INFERENCE), key=lambda e: e["arrival"])
    problems = []
    for i, entry in enumerate(inference):
        still_open = [
            e
            for e in inference[:i]
            if not e["cancelled"] and (e["end"] is None or e["end"] > entry["arrival"])
        ]
        others = sorted({_model(e) for e in still_open} - {_model(entry)})
        if others:
            problems.append(
                f"#{entry['seq']} {_model(entry)} arrived while {others} were open"
                f" (#{[e['seq'] for e in still_open]})"
            )
        elif len(still_open) >= slots:
            problems.append(
                f"#{entry['seq']} arrived while {len(still_open)} requests were open"
                f" (#{[e['seq'] for e in still_open]}), with {slots} slots"
            )
    return problems


def most_open(record: Iterable[Mapping[str, Any]]) -> int:
    """The most chat/generate requests foreman had open at this stub at once (requests the
    stub saw abandoned left out, as in `crowding`)."""
    inference = [e for e in record if e["kind"] in INFERENCE and not e["cancelled"]]
    events = sorted(
        [(e["arrival"], 1) for e in inference]
        + [(e["end"], -1) for e in inference if e["end"] is not None]
    )
    most = now = 0
    for _, step in events:  # at one instant an end comes before an arrival (-1 < 1)
        now += step
        most = max(most, now)
    return most


def occupancy_problems(record: Iterable[Mapping[str, Any]], parallel: int) -> list[str]:
    """The stub's own view (`chat_occupancy`): never two models on its chat runner, never
    more generations at once than its `parallel`."""
    occupancy = chat_occupancy(list(record))
    problems = []
    if occupancy.models_overlapped:
        problems.append(f"two models on the chat runner at once: {occupancy.clashes}")
    if occupancy.most_at_once > parallel:
        problems.append(f"{occupancy.most_at_once} generations at once, parallel {parallel}")
    return problems


def completed(entry: Mapping[str, Any]) -> bool:
    """A generation the stub ran to its end and handed over whole: no fault cut it, and
    the client was still there when it ended."""
    return (
        entry["kind"] in INFERENCE
        and entry["status"] == 200
        and entry["end"] is not None
        and not entry["cancelled"]
        and entry["fault"] is None
    )


def completed_generations(records: Iterable[Iterable[Mapping[str, Any]]]) -> Counter[str]:
    """How many times each prompt was answered in full, over several records."""
    counts: Counter[str] = Counter()
    for record in records:
        for entry in record:
            prompt = prompt_of(entry["body"])
            if prompt and completed(entry):
                counts[prompt] += 1
    return counts
