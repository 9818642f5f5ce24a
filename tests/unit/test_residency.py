"""Residency keys: requests that share a loaded model get the same key, others do not."""

from __future__ import annotations

import pytest

from foreman.residency import (
    LOAD_OPTIONS,
    load_options,
    normalise_model,
    residency_key,
    split_key,
)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("llama3", "llama3:latest"),
        ("LLaMA3", "llama3:latest"),
        ("  llama3  ", "llama3:latest"),
        ("llama3:latest", "llama3:latest"),
        ("Llama3:8B-Instruct", "llama3:8b-instruct"),
        ("qwen2.5:0.5b", "qwen2.5:0.5b"),
        # Ollama's default namespace and registry name the same model
        ("library/llama3", "llama3:latest"),
        ("library/llama3:8b", "llama3:8b"),
        ("registry.ollama.ai/library/llama3", "llama3:latest"),
        ("Registry.Ollama.AI/library/llama3:8b", "llama3:8b"),
        ("registry.ollama.ai/someone/model", "someone/model:latest"),
        # another namespace is another model
        ("someone/llama3", "someone/llama3:latest"),
        ("someone/llama3:q4", "someone/llama3:q4"),
        # a registry with a port: the port is not a tag
        ("host:5000/ns/m", "host:5000/ns/m:latest"),
        ("HOST:5000/NS/M", "host:5000/ns/m:latest"),
        ("host:5000/ns/m:v2", "host:5000/ns/m:v2"),
        ("host:5000/library/m", "host:5000/library/m:latest"),
        ("hf.co/org/repo", "hf.co/org/repo:latest"),
        ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:q4_k_m"),
    ],
)
def test_normalise_model_gives_ollamas_canonical_spelling(name, canonical):
    assert normalise_model(name) == canonical


def test_normalise_model_is_idempotent():
    for name in ("llama3", "library/llama3:8b", "host:5000/ns/m", "someone/m"):
        once = normalise_model(name)
        assert normalise_model(once) == once


def test_the_same_model_spelled_differently_shares_a_key():
    keys = {
        residency_key("llama3"),
        residency_key("LLAMA3:latest"),
        residency_key("library/llama3"),
        residency_key("llama3", {"temperature": 0.2, "seed": 1}),
        residency_key("llama3", {"num_ctx": None}),
        residency_key("llama3", None),
        residency_key("llama3", "not an object"),
    }
    assert keys == {"llama3:latest"}


def test_a_port_in_the_registry_host_is_not_read_as_a_tag():
    assert residency_key("host:5000/ns/m") != residency_key("host/ns/m:5000")
    assert residency_key("host:5000/ns/m") == residency_key("host:5000/ns/m:latest")


def test_different_load_options_give_different_keys():
    plain = residency_key("llama3")
    small = residency_key("llama3", {"num_ctx": 4096})
    large = residency_key("llama3", {"num_ctx": 8192})
    assert len({plain, small, large}) == 3
    assert large == 'llama3:latest {"num_ctx":8192}'


def test_different_models_give_different_keys():
    assert residency_key("llama3") != residency_key("llama3:8b")
    assert residency_key("llama3") != residency_key("someone/llama3")


def test_load_option_order_does_not_change_the_key():
    a = residency_key("m", {"num_ctx": 8192, "num_gpu": 1, "temperature": 1})
    b = residency_key("m", {"top_k": 3, "num_gpu": 1, "num_ctx": 8192})
    assert a == b == 'm:latest {"num_ctx":8192,"num_gpu":1}'


def test_per_request_options_are_not_load_options():
    options = {
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 3,
        "num_predict": 10,
        "stop": ["x"],
    }
    assert load_options(options) == {}
    assert residency_key("m", options) == "m:latest"


def test_every_load_option_is_kept():
    options = {name: i + 1 for i, name in enumerate(LOAD_OPTIONS)}
    assert load_options(options) == options
    assert len({residency_key("m", {name: 1}) for name in LOAD_OPTIONS}) == len(LOAD_OPTIONS)


@pytest.mark.parametrize(
    ("model", "options"),
    [("llama3", None), ("host:5000/ns/m:v1", {"num_ctx": 8192, "use_mmap": False})],
)
def test_split_key_returns_what_the_key_was_made_from(model, options):
    name, opts = split_key(residency_key(model, options))
    assert name == normalise_model(model)
    assert opts == load_options(options)
