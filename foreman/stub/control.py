"""The control API under /_stub/: read the record, set faults and settings, wait for a state.

For harnesses that run the stub as a subprocess; in-process tests can use the same operations
on `StubOllama` directly, which hands them to the `Controls` here. Control requests are never
recorded, Host-checked or faulted, and a connection whose latest request was a control request
survives a simulated outage, so a harness can lift it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .call import JSON, HttpError, decode_body
from .config import StubConfig
from .faults import Fault, FaultError, FaultKind
from .http import Exchange
from .listener import Listener
from .shapes import dumps
from .state import StubState


class Controls:
    """What a harness may do to a running stub: read its counters and state, change its
    settings, arm and clear faults, hold and release generation.

    Built from the stub's state and its listener (a refusal and the state's picture need
    the sockets too), so the control routes and `StubOllama` both lean on this and
    neither on the other.
    """

    def __init__(self, state: StubState, listener: Listener) -> None:
        self.state = state
        self.listener = listener

    @property
    def url(self) -> str:
        host = self.listener.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.listener.port}"

    def configure(self, **changes: Any) -> StubConfig:
        """Change run-time settings (load_delay, token_delay, tokens, ...); ValueError if bad."""
        return self.state.configure(changes)

    def counters(self) -> dict[str, Any]:
        """requests, completed, loads, unloads (totals and by model), in-flight counts..."""
        return self.state.recorder.counters()

    def reset_record(self) -> None:
        """Forget recorded requests, slot events and counters (in-flight ones still count)."""
        self.state.recorder.reset()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checking on every recorded change."""
        await self.state.wait_until(predicate)

    def hold(self) -> None:
        """Pause generation: requests holding the chat runner stop before their next token."""
        self.state.hold()

    def release(self) -> None:
        self.state.release()

    def arm(self, fault: Fault) -> Fault:
        """Arm a built fault; `refuse` takes effect at once instead of waiting for a request."""
        if fault.kind is FaultKind.REFUSE:
            self.refuse(fault.seconds)
            return fault
        self.state.faults.add(fault)
        self.state.recorder.changed()
        return fault

    def clear_faults(self) -> None:
        """Disarm every switch and end a refusal started by a `refuse` fault."""
        self.state.faults.clear()
        if self.listener.refusing:
            self.listener.reopen_after(0.0)
        self.state.recorder.changed()

    @property
    def refusing(self) -> bool:
        return self.listener.refusing

    def refuse(self, seconds: float | None) -> None:
        """Go down now (refuse connections, reset open ones); come back after `seconds`.

        With `seconds` None the stub stays down until it listens again or `clear_faults`.
        """
        self.listener.refuse(seconds)

    def snapshot(self) -> dict[str, Any]:
        """Everything /_stub/state shows: slots, counters, faults, settings."""
        now = trio.current_time()
        scheduler = self.state.scheduler
        scheduler.refresh(now)
        return {
            "url": self.url,
            "listening": self.listener.listening,
            "refusing": self.refusing,
            "held": self.state.held,
            "now": now,
            "config": self.state.config.to_dict(),
            "slots": {slot.name: scheduler.describe(slot, now) for slot in scheduler.slots()},
            "counters": self.counters(),
            "faults": self.state.faults.to_list(),
            "models": sorted(model.name for model in self.state.catalogue),
        }


ControlRoute = Callable[[Controls, Exchange], Awaitable[None]]


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


async def get_requests(controls: Controls, exchange: Exchange) -> None:
    since = _int_query(exchange, "since", 0)
    await _send(
        exchange,
        {
            "requests": [e.to_dict() for e in controls.state.recorder.entries if e.seq > since],
            "slot_events": [e.to_dict() for e in controls.state.recorder.slot_events],
            "counters": controls.state.recorder.counters(),
        },
    )


async def delete_requests(controls: Controls, exchange: Exchange) -> None:
    controls.reset_record()
    await _send(exchange, {"ok": True})


async def get_state(controls: Controls, exchange: Exchange) -> None:
    await _send(exchange, controls.snapshot())


async def post_faults(controls: Controls, exchange: Exchange) -> None:
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
        controls.arm(fault)
    faults_now = controls.state.faults.to_list()
    await _send(exchange, {"faults": faults_now, "refusing": controls.refusing})


async def delete_faults(controls: Controls, exchange: Exchange) -> None:
    controls.clear_faults()
    await _send(exchange, {"faults": []})


async def post_hold(controls: Controls, exchange: Exchange) -> None:
    controls.hold()
    await _send(exchange, {"held": True})


async def post_release(controls: Controls, exchange: Exchange) -> None:
    controls.release()
    await _send(exchange, {"held": False})


async def get_config(controls: Controls, exchange: Exchange) -> None:
    await _send(exchange, controls.state.config.to_dict())


async def post_config(controls: Controls, exchange: Exchange) -> None:
    try:
        config = controls.configure(**_json_object(exchange))
    except ValueError as exc:
        raise ControlError(400, str(exc)) from None
    await _send(exchange, config.to_dict())


_WAITABLE = (
    "requests",
    "completed",
    "inflight_inference",
    "max_inflight_inference",
    "running_inference",
    "max_running_inference",
    "inflight_requests",
    "open_connections",
    "loads",
    "unloads",
)


async def wait(controls: Controls, exchange: Exchange) -> None:
    """Block until every given counter is at least its value, or `timeout` seconds pass."""
    wanted = {
        key: _int_query(exchange, key, 0) for key in _WAITABLE if key in exchange.request.query
    }
    timeout = _float_query(exchange, "timeout", 10.0)

    def reached() -> bool:
        counters = controls.counters()
        return all(counters[key] >= value for key, value in wanted.items())

    with trio.move_on_after(timeout):
        await controls.wait_until(reached)
    await _send(exchange, controls.snapshot(), 200 if reached() else 408)


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


async def handle_control(controls: Controls, exchange: Exchange) -> None:
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
        await route(controls, exchange)
    except ControlError as exc:
        await _send(exchange, {"error": str(exc)}, exc.status)
