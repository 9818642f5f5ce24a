"""Ollama's native routes: chat and generate through the queue, the rest relayed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response

from foreman.api import proxy, sync
from foreman.jobs import Endpoint

RELAYED = (
    ("/", ("GET", "HEAD")),
    ("/api/version", ("GET", "HEAD")),
    ("/api/tags", ("GET", "HEAD")),
    ("/api/ps", ("GET",)),
    ("/api/status", ("GET",)),
    ("/api/show", ("POST",)),
    ("/api/pull", ("POST",)),
    ("/api/push", ("POST",)),
    ("/api/create", ("POST",)),
    ("/api/copy", ("POST",)),
    ("/api/delete", ("DELETE",)),
    ("/api/blobs/<digest>", ("HEAD", "POST")),
    # embeddings bypass the queue: relayed at once, concurrently, never stored
    ("/api/embed", ("POST",)),
    ("/api/embeddings", ("POST",)),
)


if TYPE_CHECKING:
    from foreman.api.app import Services


def blueprint(services: Services) -> Blueprint:
    bp = Blueprint("ollama", __name__)

    @bp.route("/api/chat", methods=["POST"])
    async def chat() -> Response:
        return await sync.submit_and_answer(services, Endpoint.CHAT)

    @bp.route("/api/generate", methods=["POST"])
    async def generate() -> Response:
        return await sync.submit_and_answer(services, Endpoint.GENERATE)

    async def passthrough(**_: str) -> Response:
        return await proxy.relay_for(services)

    for rule, methods in RELAYED:
        endpoint = "relay_" + rule.strip("/").replace("/", "_").replace("<", "").replace(">", "")
        bp.add_url_rule(rule, endpoint or "relay_root", passthrough, methods=list(methods))

    return bp
