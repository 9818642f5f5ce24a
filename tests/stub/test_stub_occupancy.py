"""chat_occupancy over hand-made records, in the shape GET /_stub/requests returns them."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from foreman.stub import chat_occupancy
from foreman.stub.record import RequestEntry


def held(
    seq: int, model: str, start: float | None, released: float | None, slot: str | None = "chat"
) -> dict[str, Any]:
    entry = RequestEntry(seq, "POST", "/api/chat", "chat", model, arrival=0.0)
    entry.start, entry.released, entry.slot = start, released, slot
    return entry.to_dict()


def test_nothing_held_is_nothing_at_once() -> None:
    occupancy = chat_occupancy([])
    assert occupancy.most_at_once == 0
    assert not occupancy.models_overlapped


def test_two_models_overlapping_are_a_clash() -> None:
    occupancy = chat_occupancy([held(1, "llama3", 0, 10), held(2, "mistral", 9.5, 20)])
    assert occupancy.models_overlapped
    assert occupancy.clashes == ((1, 2),)
    assert occupancy.most_at_once == 2


def test_one_taking_over_as_the_other_lets_go_is_no_clash() -> None:
    occupancy = chat_occupancy([held(1, "llama3", 0, 10), held(2, "mistral", 10, 20)])
    assert not occupancy.models_overlapped
    assert occupancy.most_at_once == 1


def test_the_same_model_by_any_of_its_names_never_clashes() -> None:
    records = [
        held(1, "llama3", 0, 10),
        held(2, "llama3:latest", 1, 10),
        held(3, "LLAMA3", 2, 5),
        held(4, "llama3", 6, 8),
    ]
    occupancy = chat_occupancy(records)
    assert not occupancy.models_overlapped
    assert occupancy.most_at_once == 3


def test_embeddings_unheld_and_instant_requests_do_not_count() -> None:
    records = [
        held(1, "llama3", 0, 10),
        held(2, "nomic-embed-text", 1, 2, slot="embed"),
        held(3, "mistral", None, None, slot=None),  # waited, never got the runner
        held(4, "mistral", 5, 5),  # a load that found its model resident
    ]
    occupancy = chat_occupancy(records)
    assert occupancy.most_at_once == 1
    assert not occupancy.models_overlapped


def test_a_request_still_running_counts_until_now() -> None:
    occupancy = chat_occupancy([held(1, "llama3", 0, None), held(2, "mistral", 100, 101)])
    assert occupancy.clashes == ((1, 2),)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.integers(min_value=0, max_value=20),
            st.integers(min_value=1, max_value=5),
        ),
        max_size=12,
    )
)
def test_agrees_with_counting_every_moment(spans: list[tuple[str, int, int]]) -> None:
    records = [
        held(seq, model, start, start + length)
        for seq, (model, start, length) in enumerate(spans, 1)
    ]
    occupancy = chat_occupancy(records)
    moments = [t + 0.5 for t in range(30)]
    on = [[(m, s) for m, s, n in spans if s < t < s + n] for t in moments]
    assert occupancy.most_at_once == max((len(held) for held in on), default=0)
    assert occupancy.models_overlapped == any(len({m for m, _ in held}) > 1 for held in on)
