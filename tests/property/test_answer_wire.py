"""The answers' wire: any run of a worker's ticket calls crosses NOTIFY payloads intact."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.answer_wire import (
    PAYLOAD_LIMIT,
    Assembler,
    Close,
    Deliver,
    Gap,
    LetGo,
    Op,
    Take,
    WireError,
    decode_op,
    encode,
    parse,
)
from foreman.tickets import Chunk, Ending, Failed, Reply, StreamStart

# text the way answers have it, and text that is not: any character (multi-byte ones cut
# at a part's edge), and bytes that are not UTF-8 or hold a NUL
texts = st.text(max_size=40)
bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    # big enough to be cut into parts (multi-byte characters across the cuts)
    st.integers(1, 4).map(lambda n: ("é" * 2_000 * n + "x").encode()),
    st.integers(8_000, 30_000).map(lambda n: random.Random(n).randbytes(n)),
)
headers = st.lists(st.tuples(texts, texts), max_size=4).map(tuple)
statuses = st.integers(100, 599)
queue_ms = st.integers(0, 2**40)
replies = st.builds(Reply, statuses, headers, bodies, queue_ms)
messages = st.one_of(
    replies,
    st.builds(StreamStart, statuses, headers, bodies, queue_ms),
    st.builds(Chunk, bodies),
    st.builds(
        Failed,
        st.sampled_from(Ending),
        texts,
        queue_ms,
        upstream=st.none() | replies,
        answered_by=st.none() | texts,
        line=st.none() | bodies,
    ),
)
ops: st.SearchStrategy[Op] = st.one_of(
    st.just(Take()),
    st.builds(Deliver, messages),
    st.builds(LetGo, st.booleans()),
    st.builds(Close, st.none() | texts),
)


def _payloads(job_id: str, stream: str, run: list[Op]) -> list[str]:
    out: list[str] = []
    for op in run:
        out += encode(job_id, stream, len(out), op)
    return out


def _heard(assembler: Assembler, payloads: list[str]) -> list[Op]:
    return [op for p in payloads if (op := assembler.add(parse(p))) is not None]


@settings(max_examples=150)
@given(st.lists(ops, max_size=12), st.lists(ops, max_size=4))
def test_any_run_of_ticket_calls_round_trips_in_payloads_notify_accepts(
    run: list[Op], again: list[Op]
) -> None:
    first = _payloads("01ARZ3NDEKTSV4RRFFQ69G5FAV", "a1b2c3-1", run)
    # the same job run again (another run, from another replica)
    second = _payloads("01ARZ3NDEKTSV4RRFFQ69G5FAV", "d4e5f6-7", [Take(), *again])
    for payload in first + second:
        data = payload.encode()
        assert len(data) < PAYLOAD_LIMIT < 8_000
        assert b"\0" not in data

    assembler = Assembler()
    assert _heard(assembler, first) == run
    assert _heard(assembler, second) == [Take(), *again]


@settings(max_examples=100)
@given(st.lists(ops, min_size=1, max_size=8), st.data())
def test_a_lost_part_is_a_gap_and_never_a_wrong_message(run: list[Op], data: st.DataObject) -> None:
    payloads = _payloads("j", "s", run)
    lost = data.draw(st.integers(0, len(payloads) - 1))
    assembler = Assembler()
    heard: list[Op] = []
    with pytest.raises(Gap) if lost < len(payloads) - 1 else contextlib.nullcontext():
        for payload in payloads[:lost] + payloads[lost + 1 :]:
            op = assembler.add(parse(payload))
            if op is not None:
                heard.append(op)
    # what was heard is a true beginning of the run: nothing made up, nothing out of order
    assert heard == run[: len(heard)]


def test_a_part_heard_twice_is_heard_once() -> None:
    payloads = _payloads("j", "s", [Take(), Deliver(Chunk(b"x" * 20_000)), LetGo(True)])
    assembler = Assembler()
    twice = [p for p in payloads for _ in range(2)]
    assert _heard(assembler, twice) == [Take(), Deliver(Chunk(b"x" * 20_000)), LetGo(True)]


def test_a_run_heard_from_its_middle_is_a_gap() -> None:
    payloads = _payloads("j", "s", [Take(), Deliver(Chunk(b"a"))])
    with pytest.raises(Gap):
        Assembler().add(parse(payloads[1]))


@pytest.mark.parametrize(
    "payload",
    ["", "j s 0 . ", "j s zz . T", "j s 0 ? T", "j s 0 . Q", 'j s 0 . R["x"]', "j s 0 . Cé"],
)
def test_a_payload_that_cannot_be_read_says_so(payload: str) -> None:
    with pytest.raises(WireError):
        Assembler().add(parse(payload))


def test_a_name_the_header_cannot_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="not a name"):
        encode("a job", "s", 0, Take())
    assert decode_op("T") == Take()
