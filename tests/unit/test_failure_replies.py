"""What a client of a synchronous request sees of a failed job, per route family."""

from __future__ import annotations

import json

from foreman.api.errors import failure_line, failure_reply
from foreman.jobs import Endpoint
from foreman.tickets import Ending, Failed, Reply

NATIVE_404 = Reply(
    404, (("Content-Type", "application/json; charset=utf-8"),), b'{"error":"no model"}', 7
)


def test_a_native_answer_to_a_v1_job_is_put_in_openais_shape() -> None:
    failed = Failed(Ending.FAILED, "no model", 7, upstream=NATIVE_404, answered_by="/api/chat")
    reply = failure_reply(Endpoint.V1_CHAT, failed)
    assert reply.status == 404
    assert reply.headers == NATIVE_404.headers
    assert json.loads(reply.body)["error"]["message"] == "no model"
    assert reply.queue_ms == 7


def test_an_answer_from_the_jobs_own_route_goes_to_the_client_as_it_came() -> None:
    own = Failed(Ending.FAILED, "no model", upstream=NATIVE_404, answered_by="/api/chat")
    assert failure_reply(Endpoint.CHAT, own).body == NATIVE_404.body
    v1 = Failed(Ending.FAILED, "x", upstream=NATIVE_404, answered_by="/v1/chat/completions")
    assert failure_reply(Endpoint.V1_CHAT, v1).body == NATIVE_404.body


def test_without_ollamas_answer_foreman_answers_502_or_503_when_put_back() -> None:
    failed = failure_reply(Endpoint.CHAT, Failed(Ending.FAILED, "ollama timed out"))
    assert (failed.status, json.loads(failed.body)) == (502, {"error": "ollama timed out"})
    back = failure_reply(Endpoint.V1_CHAT, Failed(Ending.PUT_BACK, "shutting down"))
    assert back.status == 503
    assert json.loads(back.body)["error"]["message"] == "shutting down"


def test_a_failure_mid_stream_is_ollamas_own_line_or_one_in_the_familys_framing() -> None:
    assert failure_line(Endpoint.CHAT, Failed(Ending.FAILED, "x", line=b"own\n")) == b"own\n"
    line = failure_line(Endpoint.CHAT, Failed(Ending.FAILED, "cut"))
    assert json.loads(line) == {"error": "cut"}
