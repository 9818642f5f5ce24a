"""Several upstreams: `[[upstream]]` tables in foreman.toml, a repeated `--ollama`, a
comma-separated FOREMAN_OLLAMA_URL; one line for each thing that is wrong with them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from foreman.config import ConfigError, Settings, add_arguments, render, resolve, resolve_all
from foreman.upstream_specs import UpstreamSpec, default_name

EXAMPLE = """
[[upstream]]
url = "http://10.0.0.5:11434"   # required
name = "gpu0"                    # optional; default host:port; unique
slots = 4                        # optional, default 1
models = ["llama3*", "qwen*"]    # optional globs

[[upstream]]
url = "http://10.0.0.6:11434/"
"""

GPU0 = UpstreamSpec("http://10.0.0.5:11434", "gpu0", 4, ("llama3*", "qwen*"))
SECOND = UpstreamSpec("http://10.0.0.6:11434", "10.0.0.6:11434")


def parse_flags(*argv: str) -> dict[str, str | list[str] | None]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return vars(parser.parse_args(list(argv)))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "foreman.toml"
    path.write_text(text)
    return path


def from_file(tmp_path: Path, text: str, **env: str) -> Settings:
    return resolve(parse_flags("--config", str(write(tmp_path, text))), env)


def test_upstream_tables_give_the_upstreams_with_their_defaults(tmp_path: Path) -> None:
    settings = from_file(tmp_path, EXAMPLE)
    assert settings.upstreams == (GPU0, SECOND)
    # the old single-URL view: every URL, for logs and old callers
    assert settings.ollama_url == "http://10.0.0.5:11434,http://10.0.0.6:11434"


def test_nothing_given_is_one_upstream_at_the_default_url_as_before() -> None:
    settings = resolve(parse_flags(), {})
    assert settings.upstreams == (UpstreamSpec("http://127.0.0.1:11434", "127.0.0.1:11434"),)
    assert settings.ollama_url == "http://127.0.0.1:11434"
    assert Settings(ollama_url="http://x:1").upstreams == (UpstreamSpec("http://x:1", "x:1"),)


def test_a_repeated_flag_and_a_comma_separated_variable_give_one_slot_each() -> None:
    flags = parse_flags("--ollama", "http://a:1/", "--ollama", "https://b:2")
    expected = (UpstreamSpec("http://a:1", "a:1"), UpstreamSpec("https://b:2", "b:2"))
    assert resolve(flags, {}).upstreams == expected
    assert resolve(flags, {}).ollama_url == "http://a:1,https://b:2"
    env = {"FOREMAN_OLLAMA_URL": " http://a:1/ , https://b:2 "}
    assert resolve(parse_flags(), env).upstreams == expected


def test_a_flag_beats_the_environment_which_beats_the_files_tables(tmp_path: Path) -> None:
    path = str(write(tmp_path, EXAMPLE))
    env = {"FOREMAN_OLLAMA_URL": "http://e:1,http://e:2"}
    by_env = resolve(parse_flags("--config", path), env)
    assert [u.name for u in by_env.upstreams] == ["e:1", "e:2"]
    by_flag = resolve(parse_flags("--config", path, "--ollama", "http://f:1"), env)
    assert by_flag.upstreams == (UpstreamSpec("http://f:1", "f:1"),)


def test_the_files_ollama_url_still_works_alone_or_as_a_list(tmp_path: Path) -> None:
    one = from_file(tmp_path, 'ollama_url = "http://a:1"\n')
    assert one.upstreams == (UpstreamSpec("http://a:1", "a:1"),)
    two = from_file(tmp_path, 'ollama_url = "http://a:1, http://b:1"\n')
    assert [u.url for u in two.upstreams] == ["http://a:1", "http://b:1"]


def test_a_default_name_never_carries_a_password() -> None:
    assert default_name("http://me:secret@gpu.lan:11434/ollama") == "gpu.lan:11434"
    settings = resolve(parse_flags("--ollama", "http://me:secret@gpu.lan:11434"), {})
    assert settings.upstreams[0].name == "gpu.lan:11434"


TABLE_ERRORS = [
    # (the tables, the line after "<file>: ")
    (
        '[[upstream]]\nurl = "http://a:1"\n[[upstream]]\nurl = "http://b:1"\nname = "gpu1"\n'
        "slots = 0\n",
        "upstream 2 (gpu1): slots must be a whole number of at least 1",
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\nslots = true\n',
        "upstream 1 (a:1): slots must be a whole number of at least 1",
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\nslots = 1.5\n',
        "upstream 1 (a:1): slots must be a whole number of at least 1",
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\nslots = "2"\n',
        "upstream 1 (a:1): slots must be a whole number of at least 1",
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\nslots = -3\n',
        "upstream 1 (a:1): slots must be a whole number of at least 1",
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\nslot = 2\n',
        "upstream 1 (a:1): unknown key 'slot' (known: models, name, slots, url)",
    ),
    ('[[upstream]]\nname = "gpu0"\n', "upstream 1 (gpu0): url is missing"),
    ("[[upstream]]\nurl = 11434\n", "upstream 1: url must be a string"),
    (
        '[[upstream]]\nurl = "127.0.0.1:11434"\n',
        "upstream 1: url '127.0.0.1:11434' must be an http:// or https:// URL with a host",
    ),
    (
        '[[upstream]]\nname = "gpu0"\nurl = "http://host:99999"\n',
        "upstream 1 (gpu0): url 'http://host:99999' has an invalid port",
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\nname = "gpu 0"\n',
        "upstream 1: name must be 1 to 64 visible ASCII characters, without spaces",
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\nname = 7\n',
        "upstream 1: name must be 1 to 64 visible ASCII characters, without spaces",
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\nmodels = []\n',
        "upstream 1 (a:1): models must be a non-empty list of model names or globs,"
        ' such as ["llama3*"]',
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\nmodels = "llama3"\n',
        "upstream 1 (a:1): models must be a non-empty list",
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\nmodels = ["llama3", 3]\n',
        "upstream 1 (a:1): models must be a non-empty list",
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\nmodels = [" "]\n',
        "upstream 1 (a:1): models must be a non-empty list",
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\nname = "gpu0"\n'
        '[[upstream]]\nurl = "http://b:1"\nname = "gpu0"\n',
        "upstream 2 (gpu0): name 'gpu0' is already the name of upstream 1;"
        " each upstream needs a name of its own",
    ),
    (
        '[[upstream]]\nurl = "http://a:1/x"\n[[upstream]]\nurl = "http://a:1/y"\n',
        "upstream 2 (a:1): name 'a:1' is already the name of upstream 1",
    ),
    (
        '[[upstream]]\nurl = "http://a:1"\n[[upstream]]\nurl = "http://b:1"\nname = "a:1"\n',
        "upstream 2 (a:1): name 'a:1' is already the name of upstream 1",
    ),
    ('upstream = { url = "http://a:1" }\n', "upstream must be one or more [[upstream]] tables"),
    ("upstream = []\n", "upstream must be one or more [[upstream]] tables"),
    ('upstream = ["http://a:1"]\n', "upstream 1: must be a table ([[upstream]])"),
    (
        'ollama_url = "http://a:1"\n[[upstream]]\nurl = "http://b:1"\n',
        "give either ollama_url or [[upstream]] tables, not both",
    ),
]


@pytest.mark.parametrize(("text", "expected"), TABLE_ERRORS)
def test_a_bad_upstream_table_fails_with_one_line_naming_file_and_table(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        resolve(parse_flags("--config", str(path)), {})
    line = str(caught.value)
    assert line.startswith(f"{path}: {expected}")
    assert "\n" not in line
    assert caught.value.__cause__ is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (("http://a:1", "b:2"), "--ollama='b:2': must be an http:// or https:// URL with a host"),
        (("http://a:1", "http://c:x"), "--ollama='http://c:x': has an invalid port"),
        (
            ("http://a:1", "http://a:1/v2"),
            "--ollama='http://a:1/v2': has the same host:port (a:1) as another URL;"
            " an upstream's name must be unique",
        ),
        (("http://a:1", " "), "--ollama='http://a:1, ': has an empty URL between its commas"),
    ],
)
def test_each_url_of_a_list_is_checked_and_a_bad_one_is_named(
    given: tuple[str, ...], expected: str
) -> None:
    argv = [part for url in given for part in ("--ollama", url)]
    with pytest.raises(ConfigError) as caught:
        resolve(parse_flags(*argv), {})
    assert str(caught.value).startswith(expected)
    with pytest.raises(ConfigError) as caught:
        resolve(parse_flags(), {"FOREMAN_OLLAMA_URL": ",".join(given)})
    assert str(caught.value).startswith(expected.replace("--ollama", "FOREMAN_OLLAMA_URL"))


def test_foreman_config_prints_the_upstreams_as_tables_that_read_back(tmp_path: Path) -> None:
    resolved = resolve_all(parse_flags("--config", str(write(tmp_path, EXAMPLE))), {})
    text = render(resolved.values, resolved.sources)
    path = tmp_path / "foreman.toml"
    assert f"[[upstream]]  # {path}:upstream 1\n" in text
    assert f"[[upstream]]  # {path}:upstream 2\n" in text
    assert 'name = "gpu0"\nslots = 4\nmodels = ["llama3*", "qwen*"]\n' in text
    assert 'name = "10.0.0.6:11434"\nslots = 1\n' in text
    printed = tmp_path / "printed.toml"
    printed.write_text(text)
    again = resolve(parse_flags("--config", str(printed)), {})
    assert again.upstreams == (GPU0, SECOND)


def test_foreman_config_says_where_flag_and_environment_upstreams_came_from() -> None:
    for flags, env, source in [
        (parse_flags("--ollama", "http://a:1", "--ollama", "http://b:1"), {}, "--ollama"),
        (parse_flags(), {"FOREMAN_OLLAMA_URL": "http://a:1,http://b:1"}, "FOREMAN_OLLAMA_URL"),
    ]:
        resolved = resolve_all(flags, env)
        text = render(resolved.values, resolved.sources)
        assert text.count(f"[[upstream]]  # {source}\n") == 2
        assert 'url = "http://b:1"\nname = "b:1"\nslots = 1\n' in text
        assert "\nollama_url = " not in text
    resolved = resolve_all(parse_flags(), {})
    assert '[[upstream]]  # default\nurl = "http://127.0.0.1:11434"' in render(
        resolved.values, resolved.sources
    )
