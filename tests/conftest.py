"""Shared fixtures: real databases of both dialects and the service guards (``services.py``).

Builders of sample data are in ``factories.py``; the services themselves in ``services.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg
import pytest

from reconcile_audit.compute import db
from reconcile_audit.face.demo import sourcedb
from tests.services import PG_ADMIN_URL, admin_execute, unavailable


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of the real server, checked reachable once."""
    try:
        admin_execute("SELECT 1")
    except Exception as exc:  # any driver error means the server is not usable
        unavailable(f"PostgreSQL at {PG_ADMIN_URL} ({exc})")
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
def pg_database(pg_server: str) -> Iterator[str]:
    """A fresh database for this test session; dropped at the end."""
    name = f"reconcile_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin_execute(f'CREATE DATABASE "{name}"')
    base = pg_server.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A clean schema inside the session database for one test: every table dropped after."""
    yield pg_database
    with pg.connect(pg_database, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE")
        cursor.execute("CREATE SCHEMA public")


@pytest.fixture(params=["duckdb", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each dialect the tool supports: a DuckDB file, the real PostgreSQL."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"duckdb://{tmp_path / 'database.duckdb'}"


@pytest.fixture
def state_url(database_url: str) -> str:
    """Where a test's runs and findings are kept (the tool migrates it on first use)."""
    return database_url


@pytest.fixture
def source_url(database_url: str) -> str:
    """A source database with the platform's tables, empty."""
    with db.connect(database_url) as conn:
        sourcedb.create_source_schema(conn)
    return database_url
