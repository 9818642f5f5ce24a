"""What a native request must look like before it becomes a job."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.jobs import Endpoint
from foreman.validate import (
    MAX_DEADLINE,
    MAX_MODEL_CHARS,
    MAX_PRIORITY,
    InvalidRequest,
    check_deadline,
    check_idempotency_key,
    check_ref,
    inference_request,
    parse_json_object,
    parse_priority,
)

NATIVE = [Endpoint.CHAT, Endpoint.GENERATE]
OPENAI = [Endpoint.V1_CHAT, Endpoint.V1_COMPLETIONS]


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing request body"),
        (b"  \n\t", "missing request body"),
        (b'{"model": "m\xff"}', "request body is not valid UTF-8"),
        (b"{model: m}", "request body is not valid JSON: "),
        (b'{"model": "m"', "request body is not valid JSON: "),
        (b'["model", "m"]', "request body must be a JSON object"),
        (b'"m"', "request body must be a JSON object"),
        (b"null", "request body must be a JSON object"),
    ],
)
@pytest.mark.parametrize("endpoint", NATIVE)
def test_a_body_that_is_not_a_json_object_is_rejected(endpoint, raw, message):
    with pytest.raises(InvalidRequest) as caught:
        inference_request(endpoint, raw)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "model is required (a non-empty string)"),
        ({"model": ""}, "model is required (a non-empty string)"),
        ({"model": "   "}, "model is required (a non-empty string)"),
        ({"model": None}, "model is required (a non-empty string)"),
        ({"model": 3}, "model is required (a non-empty string)"),
        ({"model": "m", "stream": "yes"}, "stream must be true or false"),
        ({"model": "m", "stream": 1}, "stream must be true or false"),
        ({"model": "m", "options": []}, "options must be a JSON object"),
        ({"model": "m", "options": "num_ctx=8"}, "options must be a JSON object"),
    ],
)
@pytest.mark.parametrize("endpoint", NATIVE)
def test_bad_common_fields_are_rejected_with_their_message(endpoint, fields, message):
    with pytest.raises(InvalidRequest) as caught:
        inference_request(endpoint, body(**fields))
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "messages", ["hi", {"role": "user"}, [{"role": "user"}, "hi"], [["user", "hi"]], 3]
)
def test_chat_messages_must_be_a_list_of_objects(messages):
    with pytest.raises(InvalidRequest) as caught:
        inference_request(Endpoint.CHAT, body(model="m", messages=messages))
    assert str(caught.value) == "messages must be a list of objects"


@pytest.mark.parametrize("prompt", [["hi"], 3, {"text": "hi"}, True])
def test_generate_prompt_must_be_a_string(prompt):
    with pytest.raises(InvalidRequest) as caught:
        inference_request(Endpoint.GENERATE, body(model="m", prompt=prompt))
    assert str(caught.value) == "prompt must be a string"


def test_invalid_request_is_a_value_error():
    assert issubclass(InvalidRequest, ValueError)


def test_a_valid_chat_request_streams_by_default_and_keeps_the_whole_body():
    fields = {
        "model": "Llama3",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_ctx": 8192, "temperature": 0},
        "format": "json",
        "extra": [1, 2],
    }
    req = inference_request(Endpoint.CHAT, body(**fields))

    assert req.endpoint is Endpoint.CHAT
    assert req.model == "Llama3"
    assert req.model_key == 'llama3:latest {"num_ctx":8192}'
    assert req.stream is True
    assert req.body == fields


@pytest.mark.parametrize(("given", "stream"), [(None, True), (True, True), (False, False)])
def test_stream_is_taken_as_given_and_null_means_true(given, stream):
    req = inference_request(Endpoint.GENERATE, body(model="m", prompt="x", stream=given))
    assert req.stream is stream


def test_generate_without_a_prompt_is_accepted():
    req = inference_request(Endpoint.GENERATE, body(model="m", keep_alive=0))
    assert req.model_key == "m:latest"
    assert "prompt" not in req.body


def test_chat_without_messages_is_accepted():
    req = inference_request(Endpoint.CHAT, body(model="m"))
    assert req.stream is True


@pytest.mark.parametrize("endpoint", NATIVE)
def test_null_options_messages_and_prompt_are_accepted(endpoint):
    req = inference_request(endpoint, body(model="m", options=None, messages=None, prompt=None))
    assert req.model_key == "m:latest"


def test_the_other_endpoints_fields_are_not_checked():
    # Ollama ignores them; foreman passes them through untouched
    assert inference_request(Endpoint.CHAT, body(model="m", prompt=3)).body["prompt"] == 3
    assert inference_request(Endpoint.GENERATE, body(model="m", messages="x")).model == "m"


def test_parse_json_object_accepts_an_object_with_surrounding_whitespace():
    assert parse_json_object(b'  {"a": 1}\n') == {"a": 1}


# -- the OpenAI-compatible routes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing request body"),
        (b"\xff", "request body is not valid UTF-8"),
        (b"[]", "request body must be a JSON object"),
        (body(), "model is required (a non-empty string)"),
        (body(model=" "), "model is required (a non-empty string)"),
        (body(model="m", stream="no"), "stream must be true or false"),
    ],
)
@pytest.mark.parametrize("endpoint", OPENAI)
def test_openai_bodies_get_the_same_common_checks(endpoint, raw, message):
    with pytest.raises(InvalidRequest) as caught:
        inference_request(endpoint, raw)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("endpoint", OPENAI)
def test_openai_requests_do_not_stream_unless_asked(endpoint):
    fields = {"model": "m", "messages": [], "prompt": "x"}
    assert inference_request(endpoint, body(**fields)).stream is False
    assert inference_request(endpoint, body(**fields, stream=None)).stream is False
    assert inference_request(endpoint, body(**fields, stream=True)).stream is True


@pytest.mark.parametrize("messages", [None, "hi", [1]])
def test_openai_chat_requires_a_list_of_message_objects(messages):
    fields = {"model": "m"} if messages is None else {"model": "m", "messages": messages}
    with pytest.raises(InvalidRequest) as caught:
        inference_request(Endpoint.V1_CHAT, body(**fields))
    assert str(caught.value) == "messages must be a list of objects"


def test_openai_completion_prompt_must_be_a_string_when_given():
    with pytest.raises(InvalidRequest, match="prompt must be a string"):
        inference_request(Endpoint.V1_COMPLETIONS, body(model="m", prompt=["a", "b"]))
    assert inference_request(Endpoint.V1_COMPLETIONS, body(model="m")).model == "m"


def test_openai_residency_key_is_the_model_name_alone():
    req = inference_request(
        Endpoint.V1_CHAT, body(model="Llama3", messages=[], options={"num_ctx": 8192})
    )
    assert req.model_key == "llama3:latest"


# -- job options ------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", [None, "note:42", "x" * 256])
def test_check_ref_accepts_short_printable_refs(ref):
    assert check_ref(ref) == ref


@pytest.mark.parametrize("ref", ["", "x" * 257, "a\nb", 42, ["x"]])
def test_check_ref_rejects_everything_else(ref):
    with pytest.raises(InvalidRequest) as caught:
        check_ref(ref)
    assert str(caught.value) == "ref must be a printable string of 1 to 256 characters"


@pytest.mark.parametrize("key", [None, "k", "x" * 255])
def test_check_idempotency_key_accepts_short_printable_keys(key):
    assert check_idempotency_key(key) == key


@pytest.mark.parametrize("key", ["", "x" * 256, "a\tb"])
def test_check_idempotency_key_rejects_everything_else(key):
    with pytest.raises(InvalidRequest) as caught:
        check_idempotency_key(key)
    assert str(caught.value) == (
        "Idempotency-Key must be a printable string of 1 to 255 characters"
    )


@pytest.mark.parametrize(
    ("raw", "priority"),
    [(None, 0), ("0", 0), (" 7 ", 7), ("-3", -3), (str(MAX_PRIORITY), MAX_PRIORITY)],
)
def test_parse_priority_reads_a_whole_number(raw, priority):
    assert parse_priority(raw) == priority


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("high", "X-Foreman-Priority must be a whole number"),
        ("1.5", "X-Foreman-Priority must be a whole number"),
        ("", "X-Foreman-Priority must be a whole number"),
        (str(MAX_PRIORITY + 1), "X-Foreman-Priority must be between"),
        (str(-MAX_PRIORITY - 1), "X-Foreman-Priority must be between"),
    ],
)
def test_parse_priority_rejects_other_values(raw, message):
    with pytest.raises(InvalidRequest) as caught:
        parse_priority(raw)
    assert str(caught.value).startswith(message)


# -- what can be stored and shown again -------------------------------------------------------

LONE = "request body holds a lone surrogate escape"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "\\ud800"}',
        b'{"model": "m", "messages": [{"role": "user", "content": "a\\udfffb"}]}',
        b'{"model": "m", "prompt": "\\uDC00"}',
        b'{"model": "m", "options": {"stop": ["\\ud83d"]}}',
        b'{"model": "m", "\\ud800": 1}',
        b'{"model": "m", "format": {"deep": [[["\\ude00x"]]]}}',
    ],
)
@pytest.mark.parametrize("endpoint", NATIVE + OPENAI)
def test_a_lone_surrogate_anywhere_in_the_body_is_refused(endpoint, raw):
    with pytest.raises(InvalidRequest) as caught:
        inference_request(endpoint, raw.replace(b'"m",', b'"m", "messages": [],', 1))
    assert str(caught.value).startswith(LONE)


def test_paired_surrogate_escapes_and_an_escaped_backslash_are_plain_text():
    # an emoji written as two escapes is one character; "\\ud800" is six characters
    data = parse_json_object(b'{"model": "m", "prompt": "\\ud83d\\ude00 \\\\ud800"}')
    assert data["prompt"] == "\U0001f600 \\ud800"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model": "m", "options": {"temperature": NaN}}', "NaN is not a JSON value"),
        (b'{"model": "m", "options": {"num_ctx": Infinity}}', "Infinity is not a JSON value"),
        (b'{"model": "m", "seed": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"model": "m", "options": {"num_ctx": 1e400}}', "number too large for a float"),
        (b'{"model": "m", "x": -1.5e999}', "number too large for a float"),
    ],
)
def test_numbers_json_cannot_hold_are_refused(raw, message):
    with pytest.raises(InvalidRequest) as caught:
        inference_request(Endpoint.GENERATE, raw)
    assert message in str(caught.value)


def test_the_largest_floats_json_can_hold_are_accepted():
    data = parse_json_object(b'{"a": 1e308, "b": -1.7976931348623157e308, "c": 5e-324}')
    assert data == {"a": 1e308, "b": -1.7976931348623157e308, "c": 5e-324}


@pytest.mark.parametrize("model", ["m\n", "m\x00", "\x1b[31mm", "x" * (MAX_MODEL_CHARS + 1)])
@pytest.mark.parametrize("endpoint", NATIVE + OPENAI)
def test_a_model_name_must_be_printable_and_short(endpoint, model):
    with pytest.raises(InvalidRequest) as caught:
        inference_request(endpoint, body(model=model, messages=[]))
    assert str(caught.value).startswith("model must be a printable name of at most")


def test_a_long_printable_model_name_within_the_limit_is_accepted():
    model = "registry.example.com:5000/team/Llama 3 ü:" + "x" * 400
    assert len(model) <= MAX_MODEL_CHARS
    assert inference_request(Endpoint.CHAT, body(model=model)).model == model


_text_with_surrogates = st.text(
    st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=6
)
_any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: json.dumps writes them as Python does
    | _text_with_surrogates,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(_text_with_surrogates, inner, max_size=3)
    ),
    max_leaves=12,
)


@given(st.dictionaries(_text_with_surrogates, _any_json, max_size=4))
def test_whatever_is_accepted_can_be_stored_and_shown_as_json(data):
    raw = json.dumps(data).encode()  # ASCII: every surrogate as an escape
    try:
        parsed = parse_json_object(raw)
    except InvalidRequest:
        return
    # strict JSON, and UTF-8 text: what SQLite stores and an answer can carry
    json.dumps(parsed, allow_nan=False, ensure_ascii=False).encode("utf-8")


# -- deadlines --------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.001, 1, 3600.5, MAX_DEADLINE])
def test_check_deadline_turns_seconds_from_now_into_a_time(seconds):
    assert check_deadline(seconds, 1_000.0) == 1_000.0 + seconds
    assert check_deadline(None, 1_000.0) is None


@pytest.mark.parametrize(
    "seconds", [0, -1, MAX_DEADLINE + 1, 1e308, math.inf, -math.inf, math.nan, 10**400]
)
def test_check_deadline_refuses_what_is_not_a_time_within_a_year(seconds):
    with pytest.raises(InvalidRequest) as caught:
        check_deadline(seconds, 1_000.0)
    assert str(caught.value).startswith("deadline must be a positive number of seconds from now")


@pytest.mark.parametrize("seconds", ["60", True, [60], {"s": 60}])
def test_check_deadline_refuses_what_is_not_a_number(seconds):
    with pytest.raises(InvalidRequest) as caught:
        check_deadline(seconds, 1_000.0)
    assert str(caught.value) == "deadline must be a number of seconds from now"
