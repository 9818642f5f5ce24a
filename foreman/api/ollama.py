"""Ollama's native routes: chat and generate through the queue, the rest relayed."""

from __future__ import annotations

from quart import Blueprint, Response

from foreman.api import fleet_relay, inference, lean, proxy
from foreman.api.services import Services
from foreman.jobs import Endpoint

# the routes that bypass the queue, each with how it chooses its upstream(s)
RELAYED_ROUTES = (
    ("/", ("GET", "HEAD"), fleet_relay.any_upstream),
    ("/api/version", ("GET", "HEAD"), fleet_relay.any_upstream),
    ("/api/tags", ("GET", "HEAD"), fleet_relay.tags),
    ("/api/ps", ("GET",), fleet_relay.loaded),
    ("/api/status", ("GET",), fleet_relay.any_upstream),
    ("/api/show", ("POST",), fleet_relay.show),
    ("/api/pull", ("POST",), fleet_relay.admin),
    ("/api/push", ("POST",), fleet_relay.admin),
    ("/api/create", ("POST",), fleet_relay.admin),
    ("/api/copy", ("POST",), fleet_relay.admin),
    ("/api/delete", ("DELETE",), fleet_relay.admin),
    ("/api/blobs/<digest>", ("HEAD", "POST"), fleet_relay.admin),
    # embeddings bypass the queue: relayed at once, concurrently, never stored
    ("/api/embed", ("POST",), lean.embedding_route),
    ("/api/embeddings", ("POST",), lean.embedding_route),
)


def blueprint(services: Services) -> Blueprint:
    bp = Blueprint("ollama", __name__)

    @bp.route("/api/chat", methods=["POST"])
    async def chat() -> Response:
        return await inference.submit_and_answer(services, Endpoint.CHAT)

    @bp.route("/api/generate", methods=["POST"])
    async def generate() -> Response:
        return await inference.submit_and_answer(services, Endpoint.GENERATE)

    proxy.register_relayed(bp, services, RELAYED_ROUTES)
    return bp
