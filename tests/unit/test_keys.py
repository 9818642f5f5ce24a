"""API keys: the file's format, constant-time lookup, scopes per route, reloading."""

from __future__ import annotations

from pathlib import Path

import pytest

from foreman.keys import (
    ALL_SCOPES,
    KeyFile,
    KeysError,
    Scope,
    parse_keys,
    presented_key,
    required_scopes,
    same_secret,
)

GOOD = """
# name   key                         scopes
app      inference-0123456789abcdef  inference
batch    jobs-0123456789abcdefghij   jobs,inference   # trailing comment
root     admin-0123456789abcdefghi   admin
"""


def test_a_keys_file_gives_each_name_its_scopes_and_admin_implies_all():
    ring = parse_keys(GOOD)
    by_name = {k.name: k for k in ring.keys}
    assert by_name["app"].scopes == {Scope.INFERENCE}
    assert by_name["batch"].scopes == {Scope.JOBS, Scope.INFERENCE}
    assert by_name["root"].scopes == ALL_SCOPES
    assert by_name["root"].admin


def test_authenticate_finds_the_key_and_nothing_else():
    ring = parse_keys(GOOD)
    found = ring.authenticate("jobs-0123456789abcdefghij")
    assert found is not None
    assert found.name == "batch"
    assert ring.authenticate("jobs-0123456789abcdefghiJ") is None
    assert ring.authenticate("") is None
    assert ring.authenticate(None) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("app key-that-is-long-enough", "line 1: expected `NAME KEY SCOPE"),
        ("app short inference", "shorter than 16 characters"),
        ("app 0123456789abcdefgh everything", "unknown scope 'everything'"),
        ("a b 0123456789abcdefgh inference", "expected `NAME KEY SCOPE"),
        ("a/b 0123456789abcdefgh inference", "name must be"),
        (
            "a 0123456789abcdefgh jobs\n\nb 0123456789abcdefgh jobs",
            "line 3: the key of 'b' is also another name's key",
        ),
        ("a 0123456789abcdefgh jobs\na 0123456789abcdefgX jobs", "line 2: the name 'a'"),
        # a header cannot carry these as written: such a key would load and never match
        ("a 0123456789abcdefgé inference", "line 1: the key of 'a' holds characters other"),
        ("a 0123456789abcdefg\u2019x inference", "other than printable ASCII"),
        ("a 0123456789abcdefg\x7f inference", "other than printable ASCII"),
        ("a 0123456789abcdefg\x01 inference", "other than printable ASCII"),
    ],
)
def test_a_bad_line_is_named_and_the_key_never_appears(text, reason):
    with pytest.raises(KeysError) as caught:
        parse_keys(text, "keys")
    message = str(caught.value)
    assert reason in message
    assert "0123456789abcdefg" not in message
    assert "\n" not in message


def test_bearer_and_service_key_headers_both_carry_a_key():
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("bearer   abc ", None) == "abc"
    assert presented_key(None, "xyz") == "xyz"
    assert presented_key("Basic abc", "xyz") == "xyz"
    assert presented_key("Basic abc", None) is None
    assert presented_key(None, None) is None


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", "/health", None),
        ("GET", "/ready", None),
        ("POST", "/api/chat", {Scope.INFERENCE}),
        ("POST", "/api/embed", {Scope.INFERENCE}),
        ("GET", "/api/tags", {Scope.INFERENCE}),
        ("POST", "/api/show", {Scope.INFERENCE}),
        ("POST", "/v1/chat/completions", {Scope.INFERENCE}),
        ("GET", "/v1/models/llama3", {Scope.INFERENCE}),
        ("POST", "/api/pull", {Scope.ADMIN}),
        ("DELETE", "/api/delete", {Scope.ADMIN}),
        ("POST", "/api/blobs/sha256:00", {Scope.ADMIN}),
        ("GET", "/metrics", {Scope.ADMIN}),
        ("DELETE", "/jobs", {Scope.ADMIN}),
        ("POST", "/jobs", {Scope.JOBS}),
        ("GET", "/jobs/01J/events", {Scope.JOBS}),
        ("DELETE", "/jobs/01J", {Scope.JOBS}),
        ("GET", "/no/such/route", ALL_SCOPES),
    ],
)
def test_each_route_needs_its_scope(method, path, needed):
    assert required_scopes(method, path) == needed


def test_a_reload_that_fails_keeps_the_keys_in_force(tmp_path: Path):
    path = tmp_path / "keys"
    path.write_text("a 0123456789abcdefgh inference\n")
    keys = KeyFile(path)
    keys.load()
    assert not keys.changed()
    path.write_text("a broken line with too many fields\n")
    assert keys.changed()
    assert keys.reload() is False
    assert keys.ring.authenticate("0123456789abcdefgh") is not None
    path.write_text("b 0123456789abcdefgX jobs\n")
    assert keys.reload() is True
    assert keys.ring.authenticate("0123456789abcdefgh") is None
    assert keys.ring.authenticate("0123456789abcdefgX") is not None


def test_only_a_reload_that_puts_new_keys_in_force_is_announced(tmp_path: Path):
    path = tmp_path / "keys"
    path.write_text("a 0123456789abcdefgh inference\n")
    keys = KeyFile(path)
    keys.load()
    heard: list[str] = []
    keys.on_reload(lambda: heard.append("reloaded"))
    path.write_text("a broken line with too many fields\n")
    assert keys.reload() is False
    assert heard == []
    path.write_text("b 0123456789abcdefgX jobs\n")
    assert keys.reload() is True
    assert heard == ["reloaded"]


def test_an_empty_or_missing_keys_file_fails_at_start(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(KeysError, match="holds no keys"):
        KeyFile(empty).load()
    with pytest.raises(KeysError, match="cannot read keys file"):
        KeyFile(tmp_path / "missing").load()


def test_a_secret_matches_only_itself() -> None:
    assert same_secret("metrics-0123456789", "metrics-0123456789")
    assert not same_secret("metrics-0123456789", "metrics-012345678")
    assert not same_secret("metrics-0123456789", "metrics-0123456789 ")
    assert not same_secret("metrics-0123456789", "")
    # a header may carry bytes that are not UTF-8; they are compared, not refused
    assert not same_secret("metrics-0123456789", "metrics-\udcff")
    assert same_secret("metrics-\udcff", "metrics-\udcff")


def test_fields_after_the_scopes_load_and_old_lines_still_do():
    ring = parse_keys(
        "capped 0123456789abcdefgh inference,jobs max_queued=3 weight=4\n"
        "plain 0123456789abcdefgX jobs\n"
    )
    capped, plain = ring.keys
    assert (capped.name, capped.max_queued, capped.weight) == ("capped", 3, 4)
    assert (plain.max_queued, plain.weight) == (None, 1)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ("weight", "expected `NAME KEY SCOPE"),
        ("colour=3", "unknown field 'colour' (known: max_queued=N, weight=N)"),
        ("weight=0", "weight must be a whole number from 1 to 1000"),
        ("weight=1001", "weight must be a whole number from 1 to 1000"),
        ("weight=2 weight=2", "weight is given twice"),
        ("max_queued=0", "max_queued must be a whole number from 1"),
        ("max_queued=-1", "max_queued must be a whole number from 1"),
        ("max_queued=1.5", "max_queued must be a whole number from 1"),
        ("max_queued=\u00b2", "max_queued must be a whole number from 1"),
        ("max_queued=99999999999", "max_queued must be a whole number from 1"),
        ("max_queued=2 max_queued=3", "max_queued is given twice"),
    ],
)
def test_a_bad_field_is_one_line_naming_the_key_and_never_its_secret(fields, reason):
    secret = "0123456789abcdefgh"
    with pytest.raises(KeysError) as caught:
        parse_keys(f"# keys\napp {secret} inference {fields}")
    message = str(caught.value)
    assert "line 2" in message
    assert reason in message
    assert secret not in message
    assert "\n" not in message


def test_a_field_whose_value_holds_a_key_is_never_repeated():
    with pytest.raises(KeysError) as caught:
        parse_keys("app 0123456789abcdefgh inference secret=0123456789abcdefgh")
    assert "0123456789abcdefgh" not in str(caught.value)
