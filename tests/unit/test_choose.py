"""Which upstream a relayed request goes to, and how several answers are put together."""

from __future__ import annotations

import httpx

from foreman import choose
from foreman.fleet import Fleet, Member
from foreman.upstream import Upstream
from foreman.upstream_specs import UpstreamSpec

CLIENT = httpx.AsyncClient(base_url="http://127.0.0.1:9")


def member(name: str, *, online: bool = True, tags: tuple[str, ...] | None = None) -> Member:
    upstream = Upstream(CLIENT)
    m = Member(UpstreamSpec(url=f"http://{name}:11434", name=name), relay=upstream, probes=upstream)
    m.online = online
    m.tags = None if tags is None else frozenset(tags)
    return m


def test_a_lone_upstream_is_always_the_choice_whatever_its_flag() -> None:
    only = member("a", online=False)
    fleet = Fleet((only,))
    assert choose.candidates(fleet) == [only]
    assert choose.first_healthy(fleet) is only
    assert choose.holding_model(fleet, "llama3") is only
    assert choose.for_embedding(fleet, "nomic-embed-text:latest") is only
    assert choose.for_embedding(fleet, "nomic-embed-text:latest", avoid=only) is None


def test_only_healthy_upstreams_are_chosen_in_a_fleet() -> None:
    a, b = member("a", online=False), member("b")
    fleet = Fleet((a, b))
    assert choose.candidates(fleet) == [b]
    assert choose.first_healthy(fleet) is b
    b.online = False
    assert choose.first_healthy(fleet) is None
    assert choose.for_embedding(fleet, None) is None


def test_a_question_about_a_model_goes_to_an_upstream_that_lists_it() -> None:
    a, b = member("a", tags=("llama3:latest",)), member("b", tags=("mistral:latest",))
    fleet = Fleet((a, b))
    assert choose.holding_model(fleet, "mistral") is b
    assert choose.holding_model(fleet, "llama3") is a
    # listed nowhere: the first healthy one, whose 404 is the answer
    assert choose.holding_model(fleet, "phi3") is a


def test_an_embedding_goes_where_its_model_is_loaded_even_when_busier() -> None:
    a, b = member("a", tags=("e:latest",)), member("b", tags=("e:latest",))
    b.embedding_models["e:latest"] = 1.0
    b.embeddings_in_flight = 5
    assert choose.for_embedding(Fleet((a, b)), "e:latest") is b


def test_an_embedding_goes_to_the_least_busy_upstream_that_lists_it() -> None:
    a, b, c = member("a", tags=("e:latest",)), member("b"), member("c", tags=("e:latest",))
    b.tags = frozenset()
    a.embeddings_in_flight = 1
    fleet = Fleet((a, b, c))
    assert choose.for_embedding(fleet, "e:latest") is c
    c.embeddings_in_flight = 1
    c.running = 1
    # equal embeddings in flight: the one running fewer chat jobs
    assert choose.for_embedding(fleet, "e:latest") is a
    # listed nowhere: the least busy of all
    assert choose.for_embedding(fleet, "other:latest") is b


def test_an_embedding_retried_goes_elsewhere() -> None:
    a, b = member("a"), member("b")
    a.embedding_models["e:latest"] = 1.0
    fleet = Fleet((a, b))
    assert choose.for_embedding(fleet, "e:latest") is a
    assert choose.for_embedding(fleet, "e:latest", avoid=a) is b
    b.online = False
    assert choose.for_embedding(fleet, "e:latest", avoid=a) is None


def test_an_upstream_whose_configuration_excludes_a_model_is_not_chosen_for_it() -> None:
    a = member("a", tags=("e:latest",))
    a.spec = UpstreamSpec(url="http://a:11434", name="a", models=("llama*",))
    b = member("b", tags=("e:latest",))
    b.embeddings_in_flight = 3
    assert choose.for_embedding(Fleet((a, b)), "e:latest") is b
    assert choose.holding_model(Fleet((a, b)), "e") is b


def test_the_union_of_model_lists_keeps_each_model_once_as_first_listed() -> None:
    first = {"models": [{"name": "llama3:latest", "size": 1}, {"name": "qwen:7b", "size": 2}]}
    second = {"models": [{"name": "qwen:7b", "size": 99}, {"model": "mistral", "size": 3}, 7]}
    merged = choose.union_tags([first, None, {"models": "x"}, second])
    assert merged == {
        "models": [
            {"name": "llama3:latest", "size": 1},
            {"name": "qwen:7b", "size": 2},
            {"model": "mistral", "size": 3},
        ]
    }
    # names as Ollama matches them: `llama3` is `llama3:latest`
    assert choose.union_tags([first, {"models": [{"name": "llama3"}]}]) == first


def test_the_union_of_openai_model_lists_is_by_id() -> None:
    first = {"object": "list", "data": [{"id": "llama3:latest", "owned_by": "a"}]}
    second = {"object": "list", "data": [{"id": "llama3:latest", "owned_by": "b"}, {"id": "m"}]}
    assert choose.union_openai_models([first, second]) == {
        "object": "list",
        "data": [{"id": "llama3:latest", "owned_by": "a"}, {"id": "m"}],
    }


def test_loaded_models_keep_every_copy() -> None:
    one = {"models": [{"name": "e:latest"}]}
    assert choose.all_loaded([one, one, {}]) == {"models": [{"name": "e:latest"}] * 2}
