"""The stream relay writes the parts already waiting as one, not one write per line."""

from __future__ import annotations

import trio
import trio.testing

from foreman.api import inference
from foreman.tickets import Chunk, Ending, Failed, StreamStart, Tickets
from tests.unit._helpers import stored_job

LINE = b'{"response":"x","done":false}\n'


async def _parts(messages: list[Chunk | Failed]) -> list[bytes]:
    """What `_stream_rest` hands the server, given the worker has already sent
    `messages` (and closed the ticket) by the time the client reads."""
    job = stored_job("job1")
    ticket = Tickets().attach(job.id)
    for message in messages:
        ticket.send_channel.send_nowait(message)
    ticket.close()
    start = StreamStart(200, (), LINE)
    return [part async for part in inference._stream_rest(job, start, ticket)]


async def test_lines_waiting_together_go_out_in_one_write() -> None:
    parts = await _parts([Chunk(LINE), Chunk(LINE), Chunk(LINE)])
    # the first line with the head, then the three waiting ones joined
    assert parts == [LINE, LINE * 3]


async def test_a_failure_line_joins_the_lines_before_it_in_order() -> None:
    parts = await _parts([Chunk(LINE), Failed(Ending.FAILED, "boom")])
    assert len(parts) == 2
    assert parts[1].startswith(LINE)
    assert b"boom" in parts[1][len(LINE) :]


async def test_a_long_backlog_is_cut_into_bounded_writes() -> None:
    big = b"x" * 4095 + b"\n"
    count = 2 * inference.COALESCE_BYTES // len(big) + 4  # within the ticket's buffer
    parts = await _parts([Chunk(big)] * count)
    assert b"".join(parts) == LINE + big * count
    assert len(parts) > 2
    assert all(len(p) <= inference.COALESCE_BYTES + len(big) for p in parts)


async def test_a_line_arriving_later_is_sent_on_its_own() -> None:
    job = stored_job("job1")
    ticket = Tickets().attach(job.id)
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            start = StreamStart(200, (), LINE)
            got.extend([part async for part in inference._stream_rest(job, start, ticket)])

        nursery.start_soon(read)
        await ticket.send(Chunk(LINE))
        await trio.testing.wait_all_tasks_blocked()
        await ticket.send(Chunk(b"late\n"))
        await trio.testing.wait_all_tasks_blocked()
        ticket.close()
    assert got == [LINE, LINE, b"late\n"]
