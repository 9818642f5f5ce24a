"""What `foreman migrate-db` and `foreman backup` know of database URLs: which `--db` is
one, and that a password never reaches the operator's terminal."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from foreman.config import is_database_url, mask_password
from foreman.migrate_db import backup_source, redact, run
from foreman.store import StoreError


def test_a_postgresql_url_is_a_database_url_and_a_path_is_not() -> None:
    assert is_database_url("postgresql://foreman@db/foreman")
    assert is_database_url("postgres://foreman@db/foreman")
    assert is_database_url("PostgreSQL://db/foreman")
    # a URL that went through Path keeps its scheme
    assert is_database_url(Path("postgresql://foreman@db/foreman"))
    for path in ("foreman.db", "/var/lib/foreman/foreman.db", "postgres", "./postgresql.db"):
        assert not is_database_url(path)
        assert not is_database_url(Path(path))


def test_backup_refuses_a_postgresql_database_in_one_line_pointing_at_pg_dump() -> None:
    assert backup_source(Path("/x/foreman.db")) == Path("/x/foreman.db")
    assert backup_source("foreman.db") == Path("foreman.db")
    with pytest.raises(StoreError, match="pg_dump") as refused:
        backup_source("postgresql://foreman:pw@db/foreman")
    assert "\n" not in str(refused.value)
    assert "pw" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://foreman:s3cret@db:5432/q", "postgresql://foreman:***@db:5432/q"),
        ("postgresql://foreman@db/q", "postgresql://foreman@db/q"),
        (
            "postgresql://foreman:p%40ss@db/q?sslmode=require",
            "postgresql://foreman:***@db/q?sslmode=require",
        ),
        (
            "postgresql://db/q?user=f&password=s3cret&x=1",
            "postgresql://db/q?user=f&password=***&x=1",
        ),
        ("postgresql:///q?host=/run/pg", "postgresql:///q?host=/run/pg"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert mask_password(url) == shown


def test_a_message_that_quotes_the_password_loses_it_in_either_spelling() -> None:
    url = "postgresql://foreman:p%40ss-word@db/q?password=other"
    message = 'bad "postgresql://foreman:p%40ss-word@db/q": p@ss-word and other'
    assert redact(message, url) == 'bad "postgresql://foreman:***@db/q": *** and ***'
    assert redact("nothing secret", "postgresql://db/q") == "nothing secret"


def test_migrate_db_refuses_a_target_that_is_no_postgresql_url(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run(tmp_path / "f.db", "sqlite:///x.db", out, err) == 2
    assert err.getvalue().count("\n") == 1
    assert "not a PostgreSQL URL" in err.getvalue()
    assert out.getvalue() == ""


def test_migrate_db_refuses_a_missing_file_without_reaching_the_server(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    # nothing listens there: the file is refused first
    url = f"postgresql://u:hidden@/q?host={tmp_path}&port=9"
    assert run(tmp_path / "none.db", url, out, err) == 1
    assert err.getvalue() == f"foreman: error: no database at {tmp_path / 'none.db'}\n"
    assert not (tmp_path / "none.db").exists()
