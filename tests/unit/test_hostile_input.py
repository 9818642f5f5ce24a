"""Regressions found by the hostile-input corpus (tests/fuzz/test_hostile.py)."""

from __future__ import annotations

import pytest

from foreman.jobs import Endpoint
from foreman.stub.call import HttpError, decode_body
from foreman.stub.routes import peek_json
from foreman.validate import InvalidRequest, inference_request, parse_json_object

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_FIELD = b'{"model":"llama3","messages":' + b"[" * 5000 + b"]" * 5000 + b"}"


def test_deeply_nested_json_is_a_bad_request_not_a_crash() -> None:
    # json.loads raised RecursionError, which is not a ValueError: a 500 in foreman
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        parse_json_object(DEEP)
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        inference_request(Endpoint.CHAT, DEEP_FIELD)


def test_the_model_of_a_deeply_nested_embedding_request_is_none_not_a_crash() -> None:
    # json.loads raised RecursionError after the relay: a 500 from foreman on /api/embed
    from foreman.api.proxy import _model_of

    assert _model_of(DEEP) is None
    assert _model_of(DEEP_FIELD) is None
    assert _model_of(b'{"model":"nomic-embed-text","input":"x"}') == "nomic-embed-text"


def test_the_stub_answers_deeply_nested_json_as_ollama_does() -> None:
    assert peek_json(DEEP) is None
    with pytest.raises(HttpError) as caught:
        decode_body(DEEP, "ChatRequest")
    assert caught.value.status == 400


def test_hypercorn_serves_each_connection_with_the_isolating_server() -> None:
    # regression: one client closing mid-body at the wrong moment ended the whole server
    # (the end-to-end check is tests/fuzz/test_hostile.py); this guards the wiring, so
    # a hypercorn upgrade that builds connections some other way fails here
    import hypercorn.trio.run

    from foreman.serving import IsolatedTCPServer

    assert vars(hypercorn.trio.run)["TCPServer"] is IsolatedTCPServer
    assert "TCPServer" in hypercorn.trio.run.worker_serve.__code__.co_names
