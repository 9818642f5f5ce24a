"""The routes that bypass the queue, over several upstreams.

Each route chooses its upstream(s) with `foreman.choose` and relays through
`proxy`: model lists and loaded models are gathered from every healthy upstream at
once; questions any upstream can answer go to the first healthy one, questions about a
model to one that lists it (embeddings are served by `lean`); admin routes to
every upstream in turn, or to the one an `X-Foreman-Upstream` header names. With a
single upstream every route relays to it byte for byte, as before the fleet.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import trio
from quart import Response, request

from foreman import choose
from foreman.api.errors import error_for
from foreman.api.proxy import (
    declared_length,
    named,
    passthrough,
    passthrough_for,
    relay_target,
)
from foreman.api.responses import build_response, json_response, request_body
from foreman.api.services import Services
from foreman.fleet import Fleet, Member
from foreman.metrics import Metrics
from foreman.upstream import UpstreamError, error_message, request_headers, response_headers

# names the one upstream an admin request goes to (never forwarded to Ollama)
UPSTREAM_HEADER = "X-Foreman-Upstream"
# admin routes that stream progress lines unless the body says `"stream": false`
STREAMING_ADMIN = frozenset({"/api/pull", "/api/push", "/api/create"})
NDJSON = "application/x-ndjson"

Merge = Callable[[Sequence[Any]], dict[str, Any]]


def _none_up(fleet: Fleet) -> Response:
    return error_for(request.path, 502, f"no upstream is up ({choose.names(fleet)})")


async def any_upstream(services: Services) -> Response:
    """/, /api/version, /api/status: the first healthy upstream's answer."""
    fleet = services.fleet
    if len(fleet) == 1:
        return await passthrough_for(services)
    member = choose.first_healthy(fleet)
    if member is None:
        return _none_up(fleet)
    return await passthrough(member.relay, metrics=services.metrics, label=member.name)


async def show(services: Services) -> Response:
    """/api/show: from a healthy upstream that lists the model, else the first healthy one
    (whose 404 reaches the client as it is)."""
    fleet = services.fleet
    if len(fleet) == 1:
        return await passthrough_for(services)
    return await _about_model(services, _shown_model(await request_body()))


async def openai_model(services: Services) -> Response:
    """/v1/models/<model>: from an upstream that lists it."""
    fleet = services.fleet
    if len(fleet) == 1:
        return await passthrough_for(services)
    model = (request.view_args or {}).get("model")
    return await _about_model(services, model if isinstance(model, str) else None)


async def _about_model(services: Services, model: str | None) -> Response:
    member = choose.holding_model(services.fleet, model)
    if member is None:
        return _none_up(services.fleet)
    return await passthrough(member.relay, metrics=services.metrics, label=member.name)


def _shown_model(body: bytes) -> str | None:
    """/api/show names its model as `model` (or the older `name`)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    for field in ("model", "name"):
        value = data.get(field)
        if isinstance(value, str) and value.strip():
            return value
    return None


async def tags(services: Services) -> Response:
    """/api/tags: the union of the healthy upstreams' models."""
    return await _gathered(services, "/api/tags", choose.union_tags)


async def openai_models(services: Services) -> Response:
    """/v1/models: the union of the healthy upstreams' models, in OpenAI's shape."""
    return await _gathered(services, "/v1/models", choose.union_openai_models)


async def loaded(services: Services) -> Response:
    """/api/ps: every loaded copy of every model on every healthy upstream."""
    return await _gathered(services, "/api/ps", choose.all_loaded)


async def _gathered(services: Services, path: str, merge: Merge) -> Response:
    """Ask every healthy upstream for `path` at once and merge the answers of those that
    gave one; 502 naming the upstreams when none is up or none answered."""
    fleet = services.fleet
    if len(fleet) == 1:
        return await passthrough_for(services)
    members = choose.candidates(fleet)
    if not members:
        return _none_up(fleet)
    answers = await _ask_each(members, path)
    documents = [a for a in answers if not isinstance(a, UpstreamError)]
    if not documents:
        for answer in answers:
            if isinstance(answer, UpstreamError):
                services.metrics.upstream_error(answer.metric_kind)
        reasons = "; ".join(f"{m.name}: {a}" for m, a in zip(members, answers, strict=True))
        return error_for(request.path, 502, f"no upstream answered {path}: {reasons}")
    return json_response(merge(documents))


async def _ask_each(members: Sequence[Member], path: str) -> list[Any]:
    """GET `path` from each member at once, on its relay pool; each answer decoded, or
    the UpstreamError it failed with. The tasks end before this returns."""
    answers: list[Any] = [None] * len(members)

    async def ask(index: int, member: Member) -> None:
        try:
            answers[index] = await member.relay.call("GET", path)
        except UpstreamError as err:
            answers[index] = err

    async with trio.open_nursery() as nursery:
        for index, member in enumerate(members):
            nursery.start_soon(ask, index, member)
    return answers


async def admin(services: Services) -> Response:
    """/api/pull, push, create, copy, delete, blobs: to every upstream in turn, or to the
    one `X-Foreman-Upstream` names (400 for a name no upstream has)."""
    fleet = services.fleet
    wanted = request.headers.get(UPSTREAM_HEADER)
    if wanted is not None:
        member = fleet.by_name(wanted.strip())
        if member is None:
            message = (
                f"{UPSTREAM_HEADER} names no upstream: {wanted[:100]!r}; "
                f"the upstreams are: {choose.names(fleet)}"
            )
            return error_for(request.path, 400, message)
        label = member.name if len(fleet) > 1 else None
        return await passthrough(member.relay, metrics=services.metrics, label=label)
    if len(fleet) == 1:
        return await passthrough_for(services)
    body = await request_body()
    target = relay_target()
    try:
        fleet.members[0].relay.url(target)
    except httpx.InvalidURL:
        return error_for(request.path, 400, "the request path is not a valid URL path")
    sending = _Sending(
        request.method, target, body or None, request_headers(request.scope.get("headers") or ())
    )
    if request.path in STREAMING_ADMIN and _streams(body):
        lines = _stream_each(fleet.members, sending, services.metrics)
        return Response(lines, 200, content_type=NDJSON)
    return await _each_whole(fleet.members, sending, services.metrics)


class _Sending:
    """One admin request, read once, to replay to each upstream."""

    def __init__(
        self, method: str, target: str, body: bytes | None, headers: httpx.Headers
    ) -> None:
        self.method = method
        self.target = target
        self.body = body
        self.headers = headers

    async def to(self, member: Member) -> httpx.Response:
        return await member.relay.send(
            self.method, self.target, body=self.body, headers=self.headers
        )


def _streams(body: bytes) -> bool:
    """Pull, push and create stream progress unless the body says `"stream": false`."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return True
    return not (isinstance(data, dict) and data.get("stream") is False)


def _error_line(member: Member, message: str) -> bytes:
    return json.dumps({"error": named(member.name, message)}).encode() + b"\n"


async def _stream_each(
    members: Sequence[Member], sending: _Sending, metrics: Metrics
) -> AsyncIterator[bytes]:
    """Each upstream's progress lines as they come, upstream after upstream; an upstream
    that fails adds an in-band error line naming it, and the next one is asked."""
    for member in members:
        try:
            response = await sending.to(member)
        except UpstreamError as err:
            metrics.upstream_error(err.metric_kind)
            yield _error_line(member, str(err))
            continue
        try:
            if not 200 <= response.status_code < 300:
                raw = await response.aread()
                yield _error_line(member, error_message(raw, response.status_code))
                continue
            last = b"\n"
            async for chunk in response.aiter_raw():
                if chunk:
                    last = chunk[-1:]
                    yield chunk
            if last != b"\n":
                yield b"\n"
        except httpx.HTTPError as exc:
            metrics.upstream_error("transient")
            yield _error_line(member, f"connection to ollama failed: {exc!r}")
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()


async def _each_whole(members: Sequence[Member], sending: _Sending, metrics: Metrics) -> Response:
    """Send to each upstream in turn and read each answer whole: the first answer when
    all succeeded, else an error naming each upstream that failed (with the first
    failure's status, 502 when it could not be reached)."""
    answer: httpx.Response | None = None
    data = b""
    failures: list[tuple[int, str]] = []
    for member in members:
        try:
            response = await sending.to(member)
        except UpstreamError as err:
            metrics.upstream_error(err.metric_kind)
            failures.append((502, named(member.name, str(err))))
            continue
        try:
            raw = await response.aread()
        except httpx.HTTPError as exc:
            metrics.upstream_error("transient")
            failures.append((502, named(member.name, f"connection to ollama failed: {exc!r}")))
            continue
        finally:
            await response.aclose()
        status = response.status_code
        if not 200 <= status < 300:
            failures.append((status, named(member.name, error_message(raw, status))))
        elif answer is None:
            answer, data = response, raw
    if failures or answer is None:
        status = failures[0][0] if failures else 502
        return error_for(request.path, status, "; ".join(m for _, m in failures))
    length = declared_length(answer) if request.method == "HEAD" else None
    headers = response_headers(answer.headers)
    return build_response(data, answer.status_code, headers, length=length)
