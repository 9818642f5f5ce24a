"""Ollama's OpenAI-compatible routes (/v1): chat and completions through the queue, the
rest relayed.

/v1/chat/completions and /v1/completions become jobs exactly like /api/chat and
/api/generate (same store, worker, drain-by-model rule, retries and cancellation), and
are relayed to Ollama's own /v1 routes byte for byte: `stream` defaults to false, and a
stream is Server-Sent Events ending in `data: [DONE]`. Errors foreman writes itself on
these routes take OpenAI's shape; Ollama's own errors reach the client unchanged.
"""

from __future__ import annotations

from quart import Blueprint, Response

from foreman.api import fleet_relay, inference, lean, proxy
from foreman.api.services import Services
from foreman.jobs import Endpoint

RELAYED_ROUTES = (
    # embeddings bypass the queue, as /api/embed does
    ("/v1/embeddings", ("POST",), lean.embedding_route),
    ("/v1/models", ("GET",), fleet_relay.openai_models),
    ("/v1/models/<path:model>", ("GET",), fleet_relay.openai_model),
)


def blueprint(services: Services) -> Blueprint:
    bp = Blueprint("openai", __name__)

    @bp.route(Endpoint.V1_CHAT.value, methods=["POST"])
    async def chat_completions() -> Response:
        return await inference.submit_and_answer(services, Endpoint.V1_CHAT)

    @bp.route(Endpoint.V1_COMPLETIONS.value, methods=["POST"])
    async def completions() -> Response:
        return await inference.submit_and_answer(services, Endpoint.V1_COMPLETIONS)

    proxy.register_relayed(bp, services, RELAYED_ROUTES)
    return bp
