#!/usr/bin/env bash
# Makes sure a Chromium for the browser tests is on this machine, from the system's
# packages (the tests never download a browser). Installs Debian's `chromium` when it is
# missing and we may (root with apt-get); otherwise says why the browser tests will skip.
# With FOREMAN_REQUIRE_BROWSER=1 (CI) a missing browser is an error instead.
set -uo pipefail

found() { command -v "${FOREMAN_CHROMIUM:-chromium}" >/dev/null 2>&1; }

if found; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Chromium from the system's packages for the browser tests"
    for attempt in 1 2 3; do
        if apt-get update -qq >/dev/null \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                chromium >/dev/null; then
            break
        fi
        echo "apt-get failed (attempt $attempt of 3)"
        sleep $((attempt * 5))
    done
fi
if found; then
    exit 0
fi
if [ "${FOREMAN_REQUIRE_BROWSER:-0}" = 1 ]; then
    echo "error: no Chromium (install Debian's chromium package or set FOREMAN_CHROMIUM)" >&2
    exit 1
fi
echo "note: no Chromium found; the browser tests will be skipped"
