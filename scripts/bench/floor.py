"""The HTTP stack's own floor: the same server stack as foreman, doing nothing of foreman's.

`python -m scripts.bench.floor --upstream URL` serves, on Quart-Trio under Hypercorn:
- POST /jobs: reads the body and answers 202 with a small JSON object (the ceiling for any
  one-request-per-job submission on this stack and machine);
- POST /api/generate: relays the body to URL with httpx and returns the answer (a bare
  relay: what foreman's synchronous path costs without the store, queue and worker).
It prints `listening on URL` once it accepts connections.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio


def build(upstream: str) -> tuple[QuartTrio, httpx.AsyncClient]:
    app = QuartTrio(__name__)
    client = httpx.AsyncClient(base_url=upstream, timeout=None)

    @app.route("/jobs", methods=["POST"])
    async def jobs() -> Response:
        data = await request.get_data()
        body = json.dumps({"id": "01J0000000000000000000000", "bytes": len(data)})
        return Response(body, status=202, content_type="application/json")

    @app.route("/api/generate", methods=["POST"])
    async def generate() -> Response:
        data = await request.get_data()
        answer = await client.post(
            "/api/generate", content=data, headers={"Content-Type": "application/json"}
        )
        return Response(
            answer.content,
            status=answer.status_code,
            content_type=answer.headers.get("content-type"),
        )

    return app, client


async def main(upstream: str) -> None:
    app, client = build(upstream)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with client, trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            binds = await nursery.start(serve, app, config)
            print(f"listening on {binds[0]}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    trio.run(main, parser.parse_args().upstream)
    sys.exit(0)
