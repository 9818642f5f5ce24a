"""A running job's answer as NOTIFY payloads, for a client waiting on another replica.

The worker's side of a ticket is a short list of calls (`Op`): take the job, deliver a
message, let the job go, close. Each becomes one text (`encode_op`), cut into parts
that fit a NOTIFY payload (PostgreSQL refuses 8,000 bytes and more; a part stays under
`PAYLOAD_LIMIT` with its header). A part's header names the job, the run it belongs to
(`stream`: one a time the worker holds the job) and its number in that run, so the
receiving side (`Assembler`) joins the parts again and notices a lost one (`Gap`)
rather than hand its client a stream with a hole in it. Every part's text is plain
UTF-8 without NUL, as NOTIFY requires: bytes that are not go as base64.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import attrs

from foreman.tickets import Chunk, Ending, Failed, Headers, Message, Reply, StreamStart

# bytes of one payload, header included; PostgreSQL's own limit is 8,000
PAYLOAD_LIMIT = 7_900
# the header's room at most (a job id and a stream name are short: a ULID, a token)
HEADER_LIMIT = 300


@attrs.frozen
class Take:
    """The worker starts the job."""


@attrs.frozen
class Deliver:
    """A message for the client (the worker's `send` or `offer`)."""

    message: Message


@attrs.frozen
class LetGo:
    """The worker is done with the job; `ended`: it ended (else it runs again)."""

    ended: bool


@attrs.frozen
class Close:
    """No more messages; `because`: the job stays queued, and this is why."""

    because: str | None = None


Op = Take | Deliver | LetGo | Close


class WireError(Exception):
    """A payload this side cannot read."""


class Gap(Exception):
    """A part of a run's answer never arrived: what follows cannot be trusted."""


@attrs.frozen
class Part:
    job_id: str
    stream: str
    seq: int
    # the last part of its op
    last: bool
    text: str


def encode(job_id: str, stream: str, seq: int, op: Op) -> list[str]:
    """The payloads of `op`, numbered from `seq` on (one number each)."""
    for name in (job_id, stream):
        if not name or any(c.isspace() for c in name) or len(name) > HEADER_LIMIT // 3:
            raise ValueError(f"not a name for the answers' wire: {name!r}")
    text = encode_op(op)
    budget = PAYLOAD_LIMIT - HEADER_LIMIT
    pieces = _pieces(text.encode(), budget)
    return [
        f"{job_id} {stream} {seq + n:x} {'.' if n == len(pieces) - 1 else '+'} {piece}"
        for n, piece in enumerate(pieces)
    ]


def _pieces(data: bytes, budget: int) -> list[str]:
    """`data` (UTF-8) in pieces of at most `budget` bytes, never cutting a character."""
    pieces: list[str] = []
    start = 0
    while True:
        end = min(start + budget, len(data))
        # back off to the start of a character (a continuation byte is 0b10xxxxxx)
        while end < len(data) and data[end] & 0xC0 == 0x80:
            end -= 1
        pieces.append(data[start:end].decode())
        if end >= len(data):
            return pieces
        start = end


def parse(payload: str) -> Part:
    fields = payload.split(" ", 4)
    if len(fields) != 5 or fields[3] not in (".", "+"):
        raise WireError("not a part of an answer")
    job_id, stream, seq, flag, text = fields
    try:
        number = int(seq, 16)
    except ValueError:
        raise WireError(f"bad part number {seq[:20]!r}") from None
    return Part(job_id, stream, number, flag == ".", text)


def encode_op(op: Op) -> str:
    if isinstance(op, Take):
        return "T"
    if isinstance(op, LetGo):
        return "G1" if op.ended else "G0"
    if isinstance(op, Close):
        return "X" + json.dumps(op.because)
    message = op.message
    if isinstance(message, Chunk):
        try:
            text = message.data.decode()
        except UnicodeDecodeError:
            text = "\0"
        # most parts of a stream are text: they go as they are
        return "C" + _b64(message.data) if "\0" in text else "c" + text
    if isinstance(message, Reply):
        return "R" + json.dumps(_reply(message))
    if isinstance(message, StreamStart):
        start = [message.status, message.headers, _b64(message.first), message.queue_ms]
        return "S" + json.dumps(start)
    return "F" + json.dumps(
        {
            "ending": message.ending.value,
            "message": message.message,
            "queue_ms": message.queue_ms,
            "upstream": None if message.upstream is None else _reply(message.upstream),
            "answered_by": message.answered_by,
            "line": None if message.line is None else _b64(message.line),
        }
    )


def decode_op(text: str) -> Op:
    kind, rest = text[:1], text[1:]
    try:
        if kind == "T" and not rest:
            return Take()
        if kind == "G" and rest in ("0", "1"):
            return LetGo(rest == "1")
        if kind == "X":
            return Close(_optional_str(json.loads(rest)))
        if kind == "c":
            return Deliver(Chunk(rest.encode()))
        if kind == "C":
            return Deliver(Chunk(_unb64(rest)))
        if kind == "R":
            return Deliver(_unreply(json.loads(rest)))
        if kind == "S":
            status, headers, first, queue_ms = json.loads(rest)
            return Deliver(
                StreamStart(_int(status), _headers(headers), _unb64(first), _int(queue_ms))
            )
        if kind == "F":
            fields = json.loads(rest)
            upstream, line = fields["upstream"], fields["line"]
            return Deliver(
                Failed(
                    Ending(fields["ending"]),
                    _str(fields["message"]),
                    _int(fields["queue_ms"]),
                    upstream=None if upstream is None else _unreply(upstream),
                    answered_by=_optional_str(fields["answered_by"]),
                    line=None if line is None else _unb64(line),
                )
            )
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise WireError(f"a {kind!r} message that cannot be read: {exc}") from None
    raise WireError(f"an unknown message {text[:20]!r}")


class Assembler:
    """The parts of one job's answer as they arrive: the ops, whole and in order."""

    def __init__(self) -> None:
        self.stream: str | None = None
        self.next_seq = 0
        self._pieces: list[str] = []

    def add(self, part: Part) -> Op | None:
        """The op `part` completes, or None (more parts to come, or a part heard twice).
        Raises Gap when a part before it never came; a new run starts over at 0."""
        if part.stream != self.stream:
            if part.seq != 0:
                raise Gap(f"run {part.stream} of job {part.job_id} began without its start")
            self.stream, self.next_seq, self._pieces = part.stream, 0, []
        if part.seq < self.next_seq:
            return None
        if part.seq > self.next_seq:
            raise Gap(f"job {part.job_id}: part {part.seq} came where {self.next_seq} was due")
        self.next_seq += 1
        self._pieces.append(part.text)
        if not part.last:
            return None
        text = "".join(self._pieces)
        self._pieces = []
        return decode_op(text)


def _reply(reply: Reply) -> list[Any]:
    return [reply.status, reply.headers, _b64(reply.body), reply.queue_ms]


def _unreply(value: Any) -> Reply:
    status, headers, body, queue_ms = value
    return Reply(_int(status), _headers(headers), _unb64(body), _int(queue_ms))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    return base64.b64decode(_str(text), validate=True)


def _headers(value: Any) -> Headers:
    return tuple((_str(name), _str(val)) for name, val in value)


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"{value!r} is not a number")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not text")
    return value


def _optional_str(value: Any) -> str | None:
    return None if value is None else _str(value)


__all__ = [
    "PAYLOAD_LIMIT",
    "Assembler",
    "Close",
    "Deliver",
    "Gap",
    "LetGo",
    "Op",
    "Part",
    "Take",
    "WireError",
    "decode_op",
    "encode",
    "encode_op",
    "parse",
]
