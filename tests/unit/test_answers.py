"""Reassembling streamed answers, and telling an unload request from a real one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from foreman.answers import (
    EventStreamResult,
    Family,
    StreamError,
    StreamResult,
    decode_body,
    event_data,
    is_unload_request,
    openai_error_document,
    replay_stream,
)
from foreman.jobs import Endpoint


def lines(*chunks: dict[str, Any]) -> list[bytes]:
    return [json.dumps(c).encode() + b"\n" for c in chunks]


def feed(endpoint: Endpoint, raw: list[bytes]) -> StreamResult:
    stream = StreamResult(endpoint)
    for line in raw:
        stream.add(line)
    return stream


def test_chat_stream_reassembles_into_the_unstreamed_answer():
    raw = lines(
        {"model": "m", "message": {"role": "assistant", "content": "Hel"}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "lo"}, "done": False},
        {
            "model": "m",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "eval_count": 2,
        },
    )
    stream = feed(Endpoint.CHAT, raw)

    assert stream.done
    assert stream.lines == 3
    assert stream.result() == {
        "model": "m",
        "message": {"role": "assistant", "content": "Hello"},
        "done": True,
        "done_reason": "stop",
        "eval_count": 2,
    }


def test_chat_stream_keeps_thinking_and_tool_calls():
    call = {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    raw = lines(
        {"message": {"role": "assistant", "content": "", "thinking": "Let me "}, "done": False},
        {"message": {"role": "assistant", "content": "", "thinking": "check."}, "done": False},
        {"message": {"role": "assistant", "content": "", "tool_calls": [call]}, "done": False},
        {"message": {"role": "assistant", "content": ""}, "done": True},
    )
    message = feed(Endpoint.CHAT, raw).result()["message"]

    assert message == {
        "role": "assistant",
        "content": "",
        "thinking": "Let me check.",
        "tool_calls": [call],
    }


def test_chat_final_chunk_without_message_still_gets_one():
    raw = lines({"message": {"content": "hi"}, "done": False}, {"done": True})
    assert feed(Endpoint.CHAT, raw).result()["message"] == {
        "role": "assistant",
        "content": "hi",
    }


def test_generate_stream_reassembles_response_and_thinking():
    raw = lines(
        {"model": "m", "response": "", "thinking": "hmm", "done": False},
        {"model": "m", "response": "4", "done": False},
        {"model": "m", "response": "2", "done": False},
        {"model": "m", "response": "", "done": True, "context": [1, 2, 3]},
    )
    assert feed(Endpoint.GENERATE, raw).result() == {
        "model": "m",
        "response": "42",
        "thinking": "hmm",
        "done": True,
        "context": [1, 2, 3],
    }


def test_stream_without_its_final_chunk_is_not_done():
    stream = feed(Endpoint.GENERATE, lines({"response": "par", "done": False}))
    assert not stream.done
    assert stream.result()["response"] == "par"


def test_blank_lines_are_skipped():
    stream = feed(Endpoint.GENERATE, [b"\n", b"  \r\n", *lines({"response": "x", "done": True})])
    assert stream.lines == 1
    assert stream.result()["response"] == "x"


def test_in_band_error_line_raises_stream_error_with_ollamas_message():
    stream = StreamResult(Endpoint.CHAT)
    stream.add(lines({"message": {"content": "a"}, "done": False})[0])
    with pytest.raises(StreamError, match="model runner has unexpectedly stopped"):
        stream.add(b'{"error":"model runner has unexpectedly stopped"}\n')
    assert not stream.done


@pytest.mark.parametrize("line", [b"not json\n", b'{"response": \n'])
def test_a_line_that_is_not_json_raises_stream_error(line):
    with pytest.raises(StreamError, match="not JSON"):
        StreamResult(Endpoint.GENERATE).add(line)


@pytest.mark.parametrize("line", [b"[1, 2]\n", b'"text"\n', b"3\n"])
def test_a_line_that_is_not_an_object_raises_stream_error(line):
    with pytest.raises(StreamError, match="not a JSON object"):
        StreamResult(Endpoint.GENERATE).add(line)


def test_decode_body_reads_json_or_keeps_the_text():
    assert decode_body(b'{"a": [1]}') == {"a": [1]}
    assert decode_body(b"<html>bad gateway</html>") == {"raw": "<html>bad gateway</html>"}
    assert decode_body(b"\xff oops") == {"raw": "\ufffd oops"}


@pytest.mark.parametrize("keep_alive", [0, 0.0, "0", "0s", "0m", "0ms", "0.0s", " 0h "])
@pytest.mark.parametrize(
    ("endpoint", "request_body"),
    [
        (Endpoint.GENERATE, {"model": "m"}),
        (Endpoint.GENERATE, {"model": "m", "prompt": ""}),
        (Endpoint.CHAT, {"model": "m"}),
        (Endpoint.CHAT, {"model": "m", "messages": []}),
    ],
)
def test_empty_request_with_zero_keep_alive_is_an_unload(endpoint, request_body, keep_alive):
    assert is_unload_request(endpoint, {**request_body, "keep_alive": keep_alive})


@pytest.mark.parametrize(
    ("endpoint", "request_body"),
    [
        (Endpoint.GENERATE, {"model": "m"}),  # no keep_alive: a load request
        (Endpoint.GENERATE, {"model": "m", "keep_alive": "5m"}),
        (Endpoint.GENERATE, {"model": "m", "keep_alive": -1}),
        (Endpoint.GENERATE, {"model": "m", "keep_alive": False}),
        (Endpoint.GENERATE, {"model": "m", "keep_alive": ""}),
        (Endpoint.GENERATE, {"model": "m", "keep_alive": "soon"}),
        (Endpoint.GENERATE, {"model": "m", "keep_alive": None}),
        (Endpoint.GENERATE, {"model": "m", "keep_alive": 0, "prompt": "hi"}),
        (Endpoint.CHAT, {"model": "m", "keep_alive": 0, "messages": [{"role": "user"}]}),
        # the prompt belongs to generate, not chat
        (Endpoint.CHAT, {"model": "m", "keep_alive": 0, "prompt": "hi", "messages": [{}]}),
    ],
)
def test_a_request_with_work_or_a_live_keep_alive_is_not_an_unload(endpoint, request_body):
    assert not is_unload_request(endpoint, request_body)


@pytest.mark.parametrize("endpoint", [Endpoint.V1_CHAT, Endpoint.V1_COMPLETIONS])
def test_openai_routes_never_count_as_unload(endpoint):
    assert not is_unload_request(endpoint, {"model": "m", "keep_alive": 0})


# -- /v1 streams (Server-Sent Events) -------------------------------------------------------


def sse(*chunks: dict[str, Any] | str) -> list[bytes]:
    return [
        b"data: " + (c if isinstance(c, str) else json.dumps(c)).encode() + b"\n\n" for c in chunks
    ]


def feed_events(endpoint: Endpoint, events: list[bytes]) -> EventStreamResult:
    stream = EventStreamResult(endpoint)
    for event in events:
        stream.add(event)
    return stream


def chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def test_openai_chat_stream_reassembles_into_a_chat_completion():
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    events = sse(
        chat_chunk({"role": "assistant", "content": "Hel"}),
        chat_chunk({"role": "assistant", "reasoning": "easy"}),
        chat_chunk({"role": "assistant", "content": "lo"}),
        chat_chunk({"role": "assistant", "content": ""}, "stop"),
        {**chat_chunk({}), "choices": [], "usage": usage},
        "[DONE]",
    )
    stream = feed_events(Endpoint.V1_CHAT, events)

    assert stream.done
    assert stream.result() == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello", "reasoning": "easy"},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


def test_openai_tool_call_arguments_streamed_in_pieces_are_joined():
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "add", "arguments": '{"a":'},
    }
    events = sse(
        chat_chunk({"role": "assistant", "tool_calls": [first]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        chat_chunk({}, "tool_calls"),
        "[DONE]",
    )
    message = feed_events(Endpoint.V1_CHAT, events).result()["choices"][0]["message"]

    [call] = message["tool_calls"]
    assert call["id"] == "call_1"
    assert call["function"] == {"name": "add", "arguments": '{"a": 1}'}


def test_openai_completion_stream_reassembles_into_a_text_completion():
    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": "m",
            "choices": [{"text": text, "index": 0, "finish_reason": finish}],
        }

    events = sse(chunk("4"), chunk("2"), chunk("", "stop"), "[DONE]")
    assert feed_events(Endpoint.V1_COMPLETIONS, events).result() == {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "m",
        "choices": [{"text": "42", "index": 0, "finish_reason": "stop"}],
    }


def test_openai_stream_is_done_only_after_the_done_marker():
    stream = feed_events(Endpoint.V1_CHAT, sse(chat_chunk({"content": "x"}, "stop")))
    assert not stream.done
    stream.add(b"data: [DONE]\n\n")
    assert stream.done


def test_openai_stream_skips_comments_and_joins_multi_line_data():
    stream = EventStreamResult(Endpoint.V1_COMPLETIONS)
    stream.add(b": keep-alive\n\n")
    stream.add(b'data: {"choices":\ndata: [{"text": "hi", "index": 0}]}\n\n')
    assert stream.events == 1
    assert stream.result()["choices"][0]["text"] == "hi"


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"error": {"message": "model not found", "type": "api_error"}}\n\n',
        b'data: {"error": "model not found"}\n\n',
    ],
)
def test_openai_error_event_raises_stream_error(event):
    with pytest.raises(StreamError, match=r"^model not found$"):
        EventStreamResult(Endpoint.V1_CHAT).add(event)


@pytest.mark.parametrize(
    ("event", "match"),
    [(b"data: nope\n\n", "not JSON"), (b"data: [1]\n\n", "not a JSON object")],
)
def test_openai_event_that_is_not_an_object_raises_stream_error(event, match):
    with pytest.raises(StreamError, match=match):
        EventStreamResult(Endpoint.V1_CHAT).add(event)


def test_event_data_reads_data_lines_only():
    assert event_data(b"event: x\ndata: a\ndata:b\n\n") == "a\nb"
    assert event_data(b": comment\n\n") is None


# -- error shapes and replays ----------------------------------------------------------------


def test_each_family_writes_its_own_error_shape():
    assert Family.of("/api/chat") is Family.OLLAMA
    assert Family.of(Endpoint.V1_CHAT) is Family.OPENAI
    assert json.loads(Family.OLLAMA.error_body(400, "bad")) == {"error": "bad"}
    assert json.loads(Family.OPENAI.error_body(404, "gone")) == {
        "error": {"message": "gone", "type": "not_found_error", "param": None, "code": None}
    }
    assert Family.OLLAMA.stream_error("cut") == b'{"error": "cut"}\n'
    openai = Family.OPENAI.stream_error("cut")
    assert openai.startswith(b"data: ")
    assert openai.endswith(b"\n\n")
    assert json.loads(openai[6:])["error"]["message"] == "cut"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (413, "invalid_request_error"), (404, "not_found_error")]
    + [(s, "api_error") for s in (401, 429, 500, 502)],
)
def test_openai_error_type_follows_the_status(status, kind):
    assert openai_error_document(status, "x")["error"]["type"] == kind


@pytest.mark.parametrize(
    "result",
    [
        {"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": True},
        {"model": "m", "response": "Hi", "done": True, "eval_count": 1},
    ],
)
def test_a_native_replay_reassembles_to_the_stored_result(result):
    endpoint = Endpoint.CHAT if "message" in result else Endpoint.GENERATE
    content_type, body = replay_stream(endpoint, result)
    assert content_type == "application/x-ndjson"
    assert feed(endpoint, body.splitlines(keepends=True)).result() == result


@pytest.mark.parametrize(
    ("endpoint", "result"),
    [
        (
            Endpoint.V1_CHAT,
            {
                "id": "c",
                "object": "chat.completion",
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"total_tokens": 3},
            },
        ),
        (
            Endpoint.V1_COMPLETIONS,
            {
                "id": "c",
                "object": "text_completion",
                "model": "m",
                "choices": [{"text": "Hi", "index": 0, "finish_reason": "stop"}],
            },
        ),
    ],
)
def test_an_openai_replay_reassembles_to_the_stored_result(endpoint, result):
    content_type, body = replay_stream(endpoint, result)
    assert content_type == "text/event-stream"
    assert body.endswith(b"data: [DONE]\n\n")
    events = [e + b"\n\n" for e in body.split(b"\n\n") if e]
    stream = feed_events(endpoint, events)
    assert stream.done
    assert stream.result() == result


@pytest.mark.parametrize("text", ["0", "0s", "0h0m", "0.0s", "-0m", "0ms"])
def test_every_spelling_of_a_zero_duration_is_an_unload(text: str) -> None:
    assert is_unload_request(Endpoint.GENERATE, {"model": "m", "keep_alive": text})


@pytest.mark.parametrize("text", ["5m", "0h1m", "1", "0x", "", "m0"])
def test_non_zero_or_malformed_durations_are_not_an_unload(text: str) -> None:
    assert not is_unload_request(Endpoint.GENERATE, {"model": "m", "keep_alive": text})
