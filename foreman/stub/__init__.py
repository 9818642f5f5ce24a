"""A faithful, deterministic, fault-injectable fake Ollama for tests, demos and benchmarks.

Run it in-process (`await nursery.start(StubOllama().serve)` or `async with running_stub()`)
or as a program (`python -m foreman.stub --port 0`). Answers are derived from a hash of the
request, so `expected_text` and `expected_embedding` say what any request yields; the record
(`StubOllama.requests`, GET /_stub/requests) says what arrived, when, and how it ended, and
`chat_occupancy` reads from it how many requests ran at once and whether two models did.
"""

from .catalogue import DEFAULT_CHAT_MODELS, DEFAULT_EMBED_MODELS, normalise_name
from .config import StubConfig
from .faults import BUSY_MESSAGE, RUNNER_STOPPED, Fault, FaultError, FaultKind, make_fault
from .generation import DEFAULT_DIMS, DEFAULT_TOKENS, expected_embedding, expected_text
from .occupancy import Occupancy, chat_occupancy
from .record import INFERENCE_KINDS, RequestEntry, SlotEvent
from .server import StubOllama, running_stub

__all__ = [
    "BUSY_MESSAGE",
    "DEFAULT_CHAT_MODELS",
    "DEFAULT_DIMS",
    "DEFAULT_EMBED_MODELS",
    "DEFAULT_TOKENS",
    "INFERENCE_KINDS",
    "RUNNER_STOPPED",
    "Fault",
    "FaultError",
    "FaultKind",
    "Occupancy",
    "RequestEntry",
    "SlotEvent",
    "StubConfig",
    "StubOllama",
    "chat_occupancy",
    "expected_embedding",
    "expected_text",
    "make_fault",
    "normalise_name",
    "running_stub",
]
