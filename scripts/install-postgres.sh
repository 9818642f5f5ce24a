#!/usr/bin/env bash
# Makes sure PostgreSQL's server programs (initdb, pg_ctl, postgres) are on this machine,
# for the tests that start a throwaway cluster of their own. Looks in the directory
# FOREMAN_POSTGRES_BINDIR names if set, else on PATH, then under Debian's
# /usr/lib/postgresql/*/bin; installs Debian's `postgresql` when they are missing and we
# may (root with apt-get); otherwise says why the PostgreSQL tests will skip.
# With FOREMAN_REQUIRE_POSTGRES=1 (CI) a missing server is an error instead.
# No cluster is created or started here: the tests start their own.
set -uo pipefail

found() {
    local dir
    if [ -n "${FOREMAN_POSTGRES_BINDIR:-}" ]; then
        dir=$FOREMAN_POSTGRES_BINDIR
        [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]
        return
    fi
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 \
        && command -v postgres >/dev/null 2>&1; then
        return 0
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
            return 0
        fi
    done
    return 1
}

if found; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL from the system's packages for the PostgreSQL tests"
    for attempt in 1 2 3; do
        if apt-get update -qq >/dev/null \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends postgresql >/dev/null; then
            break
        fi
        echo "apt-get failed (attempt $attempt of 3)"
        sleep $((attempt * 5))
    done
fi
if found; then
    exit 0
fi
if [ "${FOREMAN_REQUIRE_POSTGRES:-0}" = 1 ]; then
    echo "error: no PostgreSQL server (initdb, pg_ctl, postgres): install Debian's" \
        "postgresql package" >&2
    exit 1
fi
echo "note: no PostgreSQL server found; the PostgreSQL tests will be skipped"
