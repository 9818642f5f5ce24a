"""The stub's pure parts: durations, names, deterministic output, options, faults, routing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.stub import expected_embedding, expected_text, make_fault, normalise_name
from foreman.stub.durations import DurationError, parse_go_duration, parse_keep_alive
from foreman.stub.faults import FaultBook, FaultError, FaultKind
from foreman.stub.generation import token_budget
from foreman.stub.routes import classify, host_allowed
from foreman.stub.slots import OptionError, RunnerOptions


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("-1m", -60.0),
        ("+2h", 7200.0),
        ("1h2m3s4ms", 3723.004),
        ("10us", 1e-5),
    ],
)
def test_go_durations_parse_like_go(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("", 'time: invalid duration ""'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("m", 'time: invalid duration "m"'),
        (".s", 'time: invalid duration ".s"'),
        ("1h30", 'time: missing unit in duration "1h30"'),
    ],
)
def test_go_duration_errors_copy_go_messages(text: str, message: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_go_duration(text)
    assert str(caught.value) == message


def test_keep_alive_accepts_numbers_and_strings_and_negative_means_forever() -> None:
    assert parse_keep_alive(None) is None
    assert parse_keep_alive(30) == 30.0
    assert parse_keep_alive(0.5) == 0.5
    assert parse_keep_alive("0") == 0.0
    assert parse_keep_alive(-1) == math.inf
    assert parse_keep_alive("-1m") == math.inf


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "Unsupported type: 'bool'"),
        ([1], "Unsupported type: '[]interface {}'"),
        ({"a": 1}, "Unsupported type: 'map[string]interface {}'"),
    ],
)
def test_keep_alive_rejects_other_json_types(value: object, message: str) -> None:
    with pytest.raises(DurationError, match=message.replace("[", r"\[").replace("{", r"\{")):
        parse_keep_alive(value)


@given(hours=st.integers(0, 99), minutes=st.integers(0, 59), millis=st.integers(0, 999))
def test_composed_go_durations_sum_their_parts(hours: int, minutes: int, millis: int) -> None:
    text = f"{hours}h{minutes}m{millis}ms"
    assert parse_go_duration(text) == pytest.approx(hours * 3600 + minutes * 60 + millis / 1000)


def test_model_names_match_like_ollama() -> None:
    assert normalise_name("llama3") == "llama3:latest"
    assert normalise_name("LLaMA3:Latest") == "llama3:latest"
    assert normalise_name("registry.ollama.ai/library/qwen2.5:7b") == "qwen2.5:7b"
    assert normalise_name("me/custom") == "me/custom:latest"


def test_expected_text_is_deterministic_and_depends_on_the_request() -> None:
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
    first = expected_text("/api/chat", body)
    assert first == expected_text("/api/chat", dict(body, model="LLAMA3:latest"))
    assert len(first.split()) == 8
    assert first != expected_text("/api/chat", dict(body, model="mistral"))
    other = {"model": "llama3", "messages": [{"role": "user", "content": "hello"}]}
    assert first != expected_text("/api/chat", other)
    seeded = dict(body, options={"seed": 7})
    assert expected_text("/api/chat", seeded) != first
    assert expected_text("/v1/chat/completions", {**body, "seed": 7}) == expected_text(
        "/api/chat", seeded
    )


def test_expected_text_honours_num_predict_and_max_tokens() -> None:
    body = {"model": "llama3", "prompt": "why?", "options": {"num_predict": 3}}
    capped = expected_text("/api/generate", body)
    full = expected_text("/api/generate", {"model": "llama3", "prompt": "why?"})
    assert full.startswith(capped)
    assert len(capped.split()) == 3
    v1 = {"model": "llama3", "prompt": "why?", "max_tokens": 3}
    assert expected_text("/v1/completions", v1) == capped
    assert token_budget(8, 3) == (3, "length")
    assert token_budget(8, -1) == (8, "stop")
    assert token_budget(8, None) == (8, "stop")


def test_expected_text_rejects_non_text_endpoints() -> None:
    with pytest.raises(ValueError, match="not a text endpoint"):
        expected_text("/api/embed", {"model": "x"})


@given(st.text(max_size=50), st.integers(1, 64))
def test_embeddings_are_unit_vectors(text: str, dims: int) -> None:
    vector = expected_embedding("nomic-embed-text", text, dims=dims)
    assert len(vector) == dims
    assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0)
    assert vector == expected_embedding("NOMIC-EMBED-TEXT:latest", text, dims=dims)


def test_runner_options_compare_like_needs_reload() -> None:
    base = RunnerOptions.from_options({}, 4096)
    assert base.compatible(RunnerOptions.from_options({"temperature": 0.1}, 4096))
    assert not RunnerOptions.from_options({"num_ctx": 8192}, 4096).compatible(base)
    assert RunnerOptions.from_options({"num_gpu": 20}, 4096).compatible(base)
    gpu_a = RunnerOptions.from_options({"num_gpu": 20}, 4096)
    assert not gpu_a.compatible(RunnerOptions.from_options({"num_gpu": 10}, 4096))
    assert not RunnerOptions.from_options({"use_mmap": False}, 4096).compatible(base)
    with pytest.raises(OptionError):
        RunnerOptions.from_options({"num_ctx": "big"}, 4096)


def test_fault_book_consumes_counts_in_order_and_filters() -> None:
    book = FaultBook()
    book.add(make_fault("status", count=2, path="/api/chat", status=503))
    book.add(make_fault("reset", count=None, model="mistral"))
    assert book.take("/api/generate", "llama3:latest", "generate") is None
    first = book.take("/api/chat", "llama3:latest", "chat")
    assert first is not None
    assert first.kind is FaultKind.STATUS
    assert book.take("/api/chat", None, "chat") is first
    assert book.take("/api/chat", None, "chat") is None
    for _ in range(3):
        fault = book.take("/api/generate", "mistral:latest", "generate")
        assert fault is not None
        assert fault.kind is FaultKind.RESET
    assert [f["kind"] for f in book.to_list()] == ["reset"]


def test_fault_descriptions_are_validated() -> None:
    with pytest.raises(FaultError):
        make_fault("explode")
    with pytest.raises(FaultError):
        make_fault("status", status=200)
    with pytest.raises(FaultError):
        make_fault("cut", count=0)


def test_requests_are_classified_before_validation() -> None:
    chat = {"model": "llama3", "messages": [{"role": "user", "content": "x"}]}
    assert classify("/api/chat", chat) == ("chat", "llama3:latest")
    assert classify("/api/chat", {"model": "llama3"}) == ("load", "llama3:latest")
    assert classify("/api/generate", {"model": "a", "keep_alive": 0}) == ("unload", "a:latest")
    assert classify("/api/generate", {"model": "a", "keep_alive": "0s"}) == ("unload", "a:latest")
    assert classify("/api/generate", {"model": "a", "prompt": "p"}) == ("generate", "a:latest")
    assert classify("/v1/chat/completions", chat) == ("v1-chat", "llama3:latest")
    assert classify("/api/embed", {"model": "e", "input": ["x"]}) == ("embed", "e:latest")
    assert classify("/api/embed", {"model": "e", "input": []}) == ("load", "e:latest")
    assert classify("/nowhere", None) == ("unknown", None)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:11434", True),
        ("localhost", True),
        ("[::1]:11434", True),
        ("10.1.2.3", True),
        ("box.local", True),
        ("0.0.0.0:11434", True),
        ("example.com", False),
        ("8.8.8.8:11434", False),
        (None, True),
    ],
)
def test_host_check_follows_ollama(host: str | None, allowed: bool) -> None:
    assert host_allowed(host) is allowed
