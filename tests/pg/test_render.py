"""The store's statements in PostgreSQL's dialect (`store.pg.render`): pure, no server."""

from __future__ import annotations

import pytest

from foreman.store import PICK_STATEMENTS, PLACE_STATEMENTS
from foreman.store.pg import render


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        ("SELECT id FROM jobs WHERE id = ?", "SELECT id FROM jobs WHERE id = %s"),
        (
            "SELECT 1 FROM jobs WHERE model_key = :key AND priority = :prio",
            "SELECT 1 FROM jobs WHERE model_key = %(key)s AND priority = %(prio)s",
        ),
        (
            "SELECT 1 FROM jobs INDEXED BY jobs_queue WHERE state = 'queued'",
            "SELECT 1 FROM jobs WHERE state = 'queued'",
        ),
        (
            "WHERE upstream IS ? AND x IS NULL",
            "WHERE upstream IS NOT DISTINCT FROM %s AND x IS NULL",
        ),
        ("key_name IS :owner", "key_name IS NOT DISTINCT FROM %(owner)s"),
        ("ifnull(key_name, '')", "coalesce(key_name, '')"),
        ("max(turn, ifnull(x, turn))", "greatest(turn, coalesce(x, turn))"),
        ("BEGIN IMMEDIATE", "BEGIN"),
        ("SELECT '50%' FROM jobs", "SELECT '50%%' FROM jobs"),
        (
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE a = ? LIMIT ?)",
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE a = %s LIMIT %s) AS derived",
        ),
        (
            "SELECT count(*) FROM (SELECT m, lag(m) OVER (ORDER BY t) AS p FROM jobs) WHERE p = m",
            "SELECT count(*) FROM (SELECT m, lag(m) OVER (ORDER BY t) AS p FROM jobs) AS derived"
            " WHERE p = m",
        ),
        # a subquery that is not in FROM keeps no name
        (
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs LIMIT ?)",
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs LIMIT %s)",
        ),
    ],
)
def test_render_speaks_postgresql(sqlite: str, postgres: str) -> None:
    assert render(sqlite) == postgres


def test_only_the_statements_that_return_a_job_to_start_lock_it() -> None:
    rendered = {sql: render(sql) for sql, _ in PICK_STATEMENTS + PLACE_STATEMENTS}
    locking = [
        sql for sql, out in rendered.items() if out.endswith("FOR UPDATE OF jobs SKIP LOCKED")
    ]
    assert locking, rendered
    for sql in locking:
        assert sql.startswith("SELECT id, model_key, priority, enqueued_at, not_before, turn")
    for sql, out in rendered.items():
        assert "INDEXED BY" not in out
        assert "?" not in out
        if "count(" in sql or "max(" in sql or "min(" in sql:
            assert "FOR UPDATE" not in out, sql
