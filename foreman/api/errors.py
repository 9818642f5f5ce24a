"""Error bodies foreman writes itself, one builder per route family."""

from __future__ import annotations

import json

from quart import Response


def ollama_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Ollama's shape: {"error": "..."} with a meaningful status."""
    return Response(
        json.dumps({"error": message}),
        status=status,
        content_type="application/json; charset=utf-8",
        headers=headers,
    )
