"""Ollama's native routes: chat and generate through the queue, the rest relayed."""

from __future__ import annotations

from quart import Blueprint, Response

from foreman.api import inference, proxy
from foreman.api.services import Services
from foreman.jobs import Endpoint

PASSTHROUGH_ROUTES = (
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


def blueprint(services: Services) -> Blueprint:
    bp = Blueprint("ollama", __name__)

    @bp.route("/api/chat", methods=["POST"])
    async def chat() -> Response:
        return await inference.submit_and_answer(services, Endpoint.CHAT)

    @bp.route("/api/generate", methods=["POST"])
    async def generate() -> Response:
        return await inference.submit_and_answer(services, Endpoint.GENERATE)

    proxy.register_passthrough(bp, services, PASSTHROUGH_ROUTES)
    return bp
