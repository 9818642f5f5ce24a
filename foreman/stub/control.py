"""The control API under /_stub/: read the record, set faults and settings, wait for a state.

For harnesses that run the stub as a subprocess; in-process tests can use the same operations
on `StubOllama` directly. Control requests are never recorded, Host-checked or faulted, and a
connection whose latest request was a control request survives a simulated outage, so a harness
can lift it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from .call import JSON, HttpError, decode_body
from .faults import Fault, FaultError
from .http import Exchange
from .shapes import dumps

if TYPE_CHECKING:
    from .server import StubOllama

ControlRoute = Callable[["StubOllama", Exchange], Awaitable[None]]


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _send(exchange: Exchange, obj: object, status: int = 200) -> None:
    await exchange.respond(status, dumps(obj), JSON)


def _json_object(exchange: Exchange) -> dict[str, Any]:
    try:
        return decode_body(exchange.request.body, "control")
    except HttpError as exc:
        raise ControlError(400, exc.message) from None


def _json_any(exchange: Exchange) -> Any:
    try:
        return json.loads(exchange.request.body or b"null")
    except ValueError as exc:
        raise ControlError(400, f"invalid JSON: {exc}") from None


async def get_requests(stub: StubOllama, exchange: Exchange) -> None:
    since = _int_query(exchange, "since", 0)
    await _send(
        exchange,
        {
            "requests": [e.to_dict() for e in stub.state.recorder.entries if e.seq > since],
            "slot_events": [e.to_dict() for e in stub.state.recorder.slot_events],
            "counters": stub.state.recorder.counters(),
        },
    )


async def delete_requests(stub: StubOllama, exchange: Exchange) -> None:
    stub.reset_record()
    await _send(exchange, {"ok": True})


async def get_state(stub: StubOllama, exchange: Exchange) -> None:
    await _send(exchange, stub.snapshot())


async def post_faults(stub: StubOllama, exchange: Exchange) -> None:
    data = _json_any(exchange)
    items = data.get("faults") if isinstance(data, dict) and "faults" in data else data
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise ControlError(400, 'expected a fault object, a list of them, or {"faults": [...]}')
    try:
        faults = [Fault.from_dict(item) for item in items]
    except FaultError as exc:
        raise ControlError(400, str(exc)) from None
    for fault in faults:
        stub.arm(fault)
    await _send(exchange, {"faults": stub.state.faults.to_list(), "refusing": stub.refusing})


async def delete_faults(stub: StubOllama, exchange: Exchange) -> None:
    stub.clear_faults()
    await _send(exchange, {"faults": []})


async def post_hold(stub: StubOllama, exchange: Exchange) -> None:
    stub.hold()
    await _send(exchange, {"held": True})


async def post_release(stub: StubOllama, exchange: Exchange) -> None:
    stub.release()
    await _send(exchange, {"held": False})


async def get_config(stub: StubOllama, exchange: Exchange) -> None:
    await _send(exchange, stub.config.to_dict())


async def post_config(stub: StubOllama, exchange: Exchange) -> None:
    try:
        config = stub.configure(**_json_object(exchange))
    except ValueError as exc:
        raise ControlError(400, str(exc)) from None
    await _send(exchange, config.to_dict())


_WAITABLE = (
    "requests",
    "completed",
    "inflight_inference",
    "max_inflight_inference",
    "inflight_requests",
    "open_connections",
    "loads",
    "unloads",
)


async def wait(stub: StubOllama, exchange: Exchange) -> None:
    """Block until every given counter is at least its value, or `timeout` seconds pass."""
    wanted = {
        key: _int_query(exchange, key, 0) for key in _WAITABLE if key in exchange.request.query
    }
    timeout = _float_query(exchange, "timeout", 10.0)

    def reached() -> bool:
        counters = stub.counters()
        return all(counters[key] >= value for key, value in wanted.items())

    with trio.move_on_after(timeout):
        await stub.wait_until(reached)
    await _send(exchange, stub.snapshot(), 200 if reached() else 408)


def _int_query(exchange: Exchange, key: str, default: int) -> int:
    value = exchange.request.query.get(key)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise ControlError(400, f"{key} must be an integer") from None


def _float_query(exchange: Exchange, key: str, default: float) -> float:
    value = exchange.request.query.get(key)
    try:
        return default if value is None else float(value)
    except ValueError:
        raise ControlError(400, f"{key} must be a number") from None


CONTROL_ROUTES: dict[str, dict[str, ControlRoute]] = {
    "/_stub/requests": {"GET": get_requests, "DELETE": delete_requests},
    "/_stub/state": {"GET": get_state},
    "/_stub/faults": {"POST": post_faults, "DELETE": delete_faults},
    "/_stub/config": {"GET": get_config, "POST": post_config},
    "/_stub/wait": {"GET": wait},
    "/_stub/hold": {"POST": post_hold},
    "/_stub/release": {"POST": post_release},
}


async def handle_control(stub: StubOllama, exchange: Exchange) -> None:
    request = exchange.request
    methods = CONTROL_ROUTES.get(request.path.rstrip("/"))
    if methods is None:
        await _send(exchange, {"error": f"no control endpoint {request.path}"}, 404)
        return
    route = methods.get(request.method)
    if route is None:
        await _send(exchange, {"error": f"{request.method} not allowed here"}, 405)
        return
    try:
        await route(stub, exchange)
    except ControlError as exc:
        await _send(exchange, {"error": str(exc)}, exc.status)
