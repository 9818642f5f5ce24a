"""A throwaway PostgreSQL cluster for the tests that need a real server.

`postgres_cluster` starts one cluster per session, the first time a test asks for it (a run
that never asks pays nothing): `initdb` into a fresh temporary directory, listening only on
a Unix socket in that directory (no TCP port), with fsync off since its data are thrown
away. It is stopped and removed when the session ends, whether the tests passed or not; a
run killed before then leaves it to the next run, which stops and removes it.
`postgres_url` hands each test a database of its own, created for it and dropped after it.

PostgreSQL refuses to run as root; a root test run starts the server as `nobody`, which then
owns the cluster's directory.

The server programs come from the system's packages (`make postgres` installs Debian's):
initdb, pg_ctl and postgres on PATH or under /usr/lib/postgresql/*/bin, or in the directory
FOREMAN_POSTGRES_BINDIR names. Without them the tests that need the cluster skip, unless
FOREMAN_REQUIRE_POSTGRES=1 (set by CI), where they fail instead.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, LiteralString, NoReturn
from urllib.parse import quote

import attrs
import pytest

PROGRAMS = ("initdb", "pg_ctl", "postgres")
# a cluster's directory, in the system's temporary directory, and the file in it that names
# the test run (its process) the cluster belongs to
PREFIX = "foreman-pg-"
OWNER_FILE = "owner.pid"
# the user a root test run starts the server as
UNPRIVILEGED_USER = "nobody"
SUPERUSER = "postgres"
# only names the socket file: the socket lives in the cluster's own directory
PORT = 5432
# generous: a loaded machine must not fail a run by taking its time
START_TIMEOUT_S = 120
# trust: only the cluster's owner (and root) can reach its socket
INITDB_OPTIONS = (
    *("--username", SUPERUSER, "--auth", "trust"),
    *("--encoding", "UTF8", "--locale", "C", "--no-sync"),
)
WAITING = ("--wait", "--timeout", str(START_TIMEOUT_S))
# the data are thrown away: no need for a clean shutdown
STOP_OPTIONS = ("--mode", "immediate", *WAITING)
# a throwaway cluster: durability buys nothing, and each flush costs time
SETTINGS = {
    "listen_addresses": "''",
    "port": str(PORT),
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def server_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres together (pg_ctl starts the
    postgres beside it), or None when the machine has no PostgreSQL server.
    FOREMAN_POSTGRES_BINDIR names it, for a server installed elsewhere."""
    named = os.environ.get("FOREMAN_POSTGRES_BINDIR")
    candidates = [Path(named)] if named else []
    on_path = shutil.which("pg_ctl")
    if on_path is not None and not named:
        candidates.append(Path(on_path).resolve().parent)
        candidates.append(Path(on_path).parent)
    # Debian's layout (which puts none of them on PATH), newest version first
    versions = [] if named else Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda bindir: _version(bindir.parent.name), reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / program, os.X_OK) for program in PROGRAMS):
            return bindir
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


@attrs.frozen
class PostgresCluster:
    """A running cluster: where its socket is, and how to reach one of its databases."""

    root: Path
    bindir: Path
    user: pwd.struct_passwd | None
    names: Iterator[int] = attrs.field(factory=itertools.count)
    # the server's settings (`SETTINGS`, unless the cluster was made with others)
    settings: Mapping[str, str] = attrs.field(factory=lambda: dict(SETTINGS))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = SUPERUSER) -> str:
        """A libpq URL for `database` over the cluster's Unix socket."""
        host = quote(str(self.root), safe="/")
        return f"postgresql://{SUPERUSER}@/{database}?host={host}&port={PORT}"

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"test_{next(self.names)}"
        self._administer("CREATE DATABASE {}", name)
        return name

    def drop_database(self, name: str) -> None:
        """Drops `name`, ending any connection a test left open to it."""
        self._administer("DROP DATABASE {} WITH (FORCE)", name)

    def _administer(self, statement: LiteralString, database: str) -> None:
        # imported here: a run that never starts the cluster never loads the driver
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(sql.SQL(statement).format(sql.Identifier(database)))

    def run(self, *args: str | Path) -> None:
        """Runs one of the server's programs as the cluster's owner; a failure carries the
        program's output and the server's log."""
        program, *rest = args
        command = [str(self.bindir / program), *map(str, rest)]
        result = subprocess.run(
            command,
            cwd=self.root,
            env=_server_environment(),
            capture_output=True,
            text=True,
            check=False,
            timeout=START_TIMEOUT_S + 30,
            **_as_owner(self.user),
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\nserver log:\n{log[-4000:]}"
            )

    def start(self) -> None:
        self.run("initdb", "--pgdata", self.data, *INITDB_OPTIONS)
        # settings go into the configuration file (pg_ctl -o would go through a shell)
        settings = dict(self.settings, unix_socket_directories=f"'{self.root}'")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self.run("pg_ctl", "start", "--pgdata", self.data, "--log", self.log, *WAITING)

    def stop(self) -> None:
        """Stops the server at once, then removes it all."""
        try:
            if (self.data / "postmaster.pid").exists():
                try:
                    self.run("pg_ctl", "stop", "--pgdata", self.data, *STOP_OPTIONS)
                except (RuntimeError, subprocess.TimeoutExpired):
                    self._kill_postmaster()
                    raise
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def new_cluster(
    bindir: Path,
    user: pwd.struct_passwd | None,
    owner_pid: int | None = None,
    settings: Mapping[str, str] | None = None,
) -> PostgresCluster:
    """A cluster in a fresh temporary directory (not started yet), which records the test
    run it belongs to (`owner_pid`, this process by default). `settings` override
    `SETTINGS` one by one: a benchmark that compares commits with SQLite's synced ones
    turns fsync and synchronous_commit back on."""
    root = Path(tempfile.mkdtemp(prefix=PREFIX))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    (root / OWNER_FILE).write_text(str(os.getpid() if owner_pid is None else owner_pid))
    return PostgresCluster(
        root=root, bindir=bindir, user=user, settings={**SETTINGS, **(settings or {})}
    )


def sweep_abandoned(bindir: Path) -> list[Path]:
    """Stops and removes the clusters of earlier test runs that were killed before their
    teardown (their owner process is gone), so such runs do not leave servers behind;
    returns the directories removed. Clusters of runs still going are left alone."""
    swept = []
    for root in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
            uid = root.stat().st_uid
        except (OSError, ValueError):
            continue  # not one of ours, or one being created
        if _alive(owner) or (os.geteuid() != 0 and uid != os.geteuid()):
            continue
        user = pwd.getpwuid(uid) if os.geteuid() == 0 else None
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            PostgresCluster(root=root, bindir=bindir, user=user).stop()
        swept.append(root)
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _server_environment() -> dict[str, str]:
    """The test run's environment without libpq's PG* variables, which could point the
    programs at another server or directory."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    environment["LC_ALL"] = "C"
    return environment


def _as_owner(user: pwd.struct_passwd | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _missing(reason: str) -> NoReturn:
    if os.environ.get("FOREMAN_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway cluster for the session, started by the first test that asks."""
    bindir = server_bindir()
    if bindir is None:
        _missing("no PostgreSQL server on this machine (`make postgres` installs the system's)")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            pytest.fail(
                f"running as root and there is no user {UNPRIVILEGED_USER!r} to run "
                "PostgreSQL as (it refuses to run as root)"
            )
    sweep_abandoned(bindir)
    cluster = new_cluster(bindir, user)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A libpq URL (`postgresql://...`) to a fresh database of this test's own."""
    name = postgres_cluster.create_database()
    try:
        yield postgres_cluster.url(name)
    finally:
        postgres_cluster.drop_database(name)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres: needs a real PostgreSQL (a throwaway cluster, see tests/pg)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test that uses the cluster, so `-m "not postgres"` leaves them out."""
    for item in items:
        if "postgres_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
