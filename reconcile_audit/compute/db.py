"""Connections to the two kinds of database: PostgreSQL (ADBC, Arrow-native) and DuckDB files.

Both speak DB-API with ``$1`` placeholders and return Arrow tables, so the stages above hold one
code path. Values are always bound, never formatted into SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Literal

import adbc_driver_postgresql.dbapi as pg
import duckdb
import pyarrow as pa

from reconcile_audit.errors import ConfigError
from reconcile_audit.resources import SQL_DIR

Dialect = Literal["postgres", "duckdb"]


def dialect_of(url: str) -> Dialect:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgres"
    if url.startswith("duckdb://"):
        return "duckdb"
    raise ConfigError("DATABASE_URL", "expected postgresql://... or duckdb:///path")


def duckdb_path(url: str) -> str:
    """``duckdb:///abs/path`` -> ``/abs/path``; ``duckdb://rel/path`` -> ``rel/path``; ``duckdb://:memory:``."""
    rest = url[len("duckdb://") :]
    return rest or ":memory:"


class Connection:
    """A thin wrapper that gives both backends the same four calls."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect

    def arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """Run one query and return its whole result as an Arrow table."""
        if self.dialect == "duckdb":
            # A relation streams straight to Arrow; a DB-API result would copy every row once more.
            return self.raw.sql(sql, params=list(params) or None).to_arrow_table()
        with self.raw.cursor() as cursor:
            cursor.execute(sql, tuple(params) if params else None)
            return cursor.fetch_arrow_table()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        if self.dialect == "duckdb":
            # DuckDB 2 refuses new work on a connection that holds an unfinished result.
            self.raw.execute(sql, list(params)).fetchall()
            return
        with self.raw.cursor() as cursor:
            cursor.execute(sql, tuple(params) if params else None)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.dialect == "duckdb":
            return self.raw.execute(sql, list(params)).fetchall()
        with self.raw.cursor() as cursor:
            cursor.execute(sql, tuple(params) if params else None)
            return cursor.fetchall()

    def commit(self) -> None:
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def close(self) -> None:
        self.raw.close()


def open_connection(url: str, *, read_only: bool = False, autocommit: bool = False) -> Connection:
    dialect = dialect_of(url)
    if dialect == "duckdb":
        path = duckdb_path(url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return Connection(duckdb.connect(path, read_only=read_only), "duckdb")
    normalized = "postgresql://" + url.split("://", 1)[1]
    return Connection(pg.connect(normalized, autocommit=autocommit), "postgres")


@contextmanager
def connect(url: str, *, read_only: bool = False, autocommit: bool = False) -> Iterator[Connection]:
    connection = open_connection(url, read_only=read_only, autocommit=autocommit)
    try:
        yield connection
    finally:
        connection.close()


# libpq words the cause last: '... connection to server at "h", port 5432 failed: FATAL:  database
# "x" does not exist'. The part after the last "failed:" is what an operator needs.
_CONNECT_FAILED: Final = re.compile(
    r"Failed to connect|could not connect|connection to server", re.IGNORECASE
)
_LAST_CAUSE: Final = re.compile(r".*failed:\s*(?P<cause>.+)$", re.DOTALL)


def connection_cause(message: str) -> str | None:
    """The real cause of a failed connection, in one line ("database "x" does not exist"), or
    None when ``message`` is not about connecting."""
    if not _CONNECT_FAILED.search(message):
        return None
    match = _LAST_CAUSE.match(message)
    return " ".join((match["cause"] if match else message).replace("FATAL:", "").split())


def check_source_exists(url: str) -> None:
    """A DuckDB source is an existing file: a mistyped path must not become a new, empty database
    (which the state database, when it is the same URL, would otherwise create)."""
    if dialect_of(url) == "duckdb":
        path = duckdb_path(url)
        if path == ":memory:" or not Path(path).is_file():
            raise ConfigError("DATABASE_URL", f"no DuckDB database file at {path!r}")


@contextmanager
def connect_source(url: str) -> Iterator[Connection]:
    """A connection to the audited database that cannot write to it.

    DuckDB opens the file read-only, and a path that does not exist is an error, not a new empty
    database. On PostgreSQL every statement of the session runs in a READ ONLY transaction, so even
    a data-modifying query slipped into a custom extract file is refused by the server.
    """
    if dialect_of(url) == "duckdb":
        check_source_exists(url)
        connection = Connection(duckdb.connect(duckdb_path(url), read_only=True), "duckdb")
    else:
        connection = open_connection(url, autocommit=True)
        connection.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    try:
        yield connection
    finally:
        connection.close()


def read_sql(name: str) -> str:
    """The text of ``reconcile_audit/sql/<name>``."""
    return (SQL_DIR / name).read_text(encoding="utf-8")
