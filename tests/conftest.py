"""Shared fixtures: a fresh real PostgreSQL database per test session, and service guards.

In CI (``RECONCILE_AUDIT_REQUIRE_SERVICES=1``, set by ``.ci/run``) a missing service fails the
test instead of skipping it, so a green run always means the real parts were exercised.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_ADMIN_URL = os.environ.get("RECONCILE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_SERVICES = os.environ.get("RECONCILE_AUDIT_REQUIRE_SERVICES") == "1"


def unavailable(what: str) -> None:
    """Skip locally, fail in CI: a test that needs a real part never silently passes without it."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required in CI (RECONCILE_AUDIT_REQUIRE_SERVICES=1) but unavailable")
    pytest.skip(f"{what} unavailable")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"the {name!r} binary")
    return path  # type: ignore[return-value]


def _admin_execute(sql: str) -> None:
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(PG_ADMIN_URL, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(sql)


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of the real server, checked reachable once."""
    try:
        _admin_execute("SELECT 1")
    except Exception as exc:  # any driver error means the server is not usable
        unavailable(f"PostgreSQL at {PG_ADMIN_URL} ({exc})")
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
def pg_database(pg_server: str) -> Iterator[str]:
    """A fresh database for this test session; dropped at the end."""
    name = f"reconcile_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    base = pg_server.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A clean schema inside the session database for one test: every table dropped after."""
    import adbc_driver_postgresql.dbapi as pg

    yield pg_database
    with pg.connect(pg_database, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE")
        cursor.execute("CREATE SCHEMA public")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_pushgateway() -> Iterator[str]:
    """A real Pushgateway (Debian's binary) on a free loopback port, in memory only; yields its URL."""
    binary = require_binary("prometheus-pushgateway")
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Pushgateway did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
