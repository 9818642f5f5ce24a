"""Streamed answers (NDJSON or SSE lines) and the faults that break them part-way.

The head goes out with the first line, as Go's server writes it on the first flush. A pending
`cut` closes the connection after `after` lines with no terminating chunk; a pending
`mid_error` sends one error line after `after` lines and ends the stream, which is how Ollama
reports a failure once the 200 status is already on the wire.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from .call import Call
from .faults import FaultKind


class StreamEnded(Exception):
    """A mid_error fault ended the stream; the handler must stop producing."""


class LineStream:
    """One streamed response; `error_line` renders the family's mid-stream error."""

    def __init__(self, call: Call, content_type: str, error_line: Callable[[str], bytes]) -> None:
        self.call = call
        self.content_type = content_type
        self.error_line = error_line
        self.sent = 0

    async def _check_fault(self) -> None:
        fault = self.call.fault
        if fault is None or self.sent < fault.after:
            return
        self.call.fault = None
        exchange = self.call.exchange
        if fault.kind is FaultKind.CUT:
            exchange.abort(rst=fault.rst)
        if fault.kind is FaultKind.MID_ERROR:
            await exchange.send(self.error_line(fault.text))
            await exchange.end()
            raise StreamEnded

    async def line(self, data: bytes) -> None:
        exchange = self.call.exchange
        if not exchange.started:
            await exchange.start(200, self.content_type)
        await self._check_fault()
        await exchange.send(data)
        self.sent += 1

    async def close(self) -> None:
        exchange = self.call.exchange
        if not exchange.started:
            await exchange.start(200, self.content_type)
        await self._check_fault()
        await exchange.end()


async def pace(call: Call) -> None:
    """Wait while generation is held, then the time one token takes at today's batch size."""
    await call.state.pass_gate()
    delay = call.state.scheduler.token_seconds()
    if delay > 0:
        await trio.sleep(delay)
