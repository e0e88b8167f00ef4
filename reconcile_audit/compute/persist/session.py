"""Connections to the state database: always closed, retried briefly while another process holds
a DuckDB file, and one-transaction blocks; plus the small readers every persist module shares."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import polars as pl
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from reconcile_audit.compute.db import (
    Connection,
    connection_cause,
    dialect_of,
    duckdb_path,
    open_connection,
    read_sql,
)
from reconcile_audit.compute.settings import redact_url, url_password
from reconcile_audit.errors import StateUnavailableError

logger = logging.getLogger(__name__)

_DUCKDB_LOCK: Final = re.compile(r"Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")


# PostgreSQL's words for a role that may not create or write there (42501, 3F000, 25006).
_READ_ONLY_SIGNS: Final = (
    "permission denied",
    "no schema has been selected to create in",
    "read-only transaction",
)
_NOT_WRITABLE: Final = (
    "; the state database must be writable by this role: point RECONCILE_STATE_DATABASE_URL at one "
    "that is, or run `reconcile-audit migrate` once as the schema's owner"
)


def _redacted(exc: BaseException, url: str) -> str:
    """``exc`` as its type and message, with the state database's password masked."""
    text = f"{type(exc).__name__}: {exc}".replace(url, redact_url(url))
    password = url_password(url)
    return text.replace(password, "***") if password else text


def describe_error(exc: BaseException, url: str) -> str:
    """``exc`` as one line, password masked: a failed connection as its real cause ("database "x"
    does not exist"), anything else naming its type, with what to do when the role may not write
    there."""
    text = _redacted(exc, url)
    cause = connection_cause(text)
    if cause is not None:
        return f"the connection failed: {cause}"
    if any(sign in text.lower() for sign in _READ_ONLY_SIGNS):
        text += _NOT_WRITABLE
    return " ".join(text.split())


def ping(url: str) -> None:
    """Connect to a PostgreSQL state database once: :class:`StateUnavailableError` with the real
    cause in one line when it cannot be reached. (A DuckDB state file is created on first use.)"""
    if dialect_of(url) == "duckdb":
        return
    try:
        with state_session(url) as conn:
            conn.rows("SELECT 1")
    except Exception as exc:
        text = _redacted(exc, url)
        cause = connection_cause(text) or " ".join(text.split())
        raise StateUnavailableError(
            f"cannot connect to the state database {redact_url(url)}: {cause}"
        ) from None


def duckdb_lock_holder(exc: BaseException) -> str | None:
    match = _DUCKDB_LOCK.search(str(exc))
    if match is None:
        return None
    return f"process {match['pid']} ({match['program']})"


# How long to wait for a DuckDB state file another process has open: every opener (the run, its
# lease heartbeat, a health check, a second tenant's run) holds it only for one short call.
LOCK_WAIT_SECONDS: Final = 10.0


@contextmanager
def state_session(url: str, *, lock_wait_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[Connection]:
    """A connection that is always closed: a DuckDB file stays open for no longer than one call.

    Another process holding the DuckDB file is retried for ``lock_wait_seconds`` (bounded),
    because every opener holds it only for a moment.
    """
    retrying = Retrying(
        retry=retry_if_exception(lambda exc: duckdb_lock_holder(exc) is not None),
        stop=stop_after_delay(lock_wait_seconds),
        wait=wait_fixed(0.1),
        reraise=True,
    )
    connection = retrying(open_connection, url)
    try:
        yield connection
    finally:
        connection.close()


@contextmanager
def transaction(conn: Connection) -> Iterator[None]:
    if conn.dialect == "duckdb":
        conn.execute("BEGIN TRANSACTION")  # DuckDB's Python connection autocommits otherwise
    try:
        yield
    except BaseException:
        try:
            conn.rollback()
        except Exception as rollback_exc:  # a dead connection must not mask the original error
            logger.debug("rollback failed: %s", type(rollback_exc).__name__)
        raise
    else:
        conn.commit()


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC. Naive timestamps are refused: their zone would be a guess."""
    if value.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    return value.astimezone(UTC)


def table_exists(conn: Connection, table: str) -> bool:
    return bool(conn.rows(read_sql("persist/table_exists.sql"), (table,))[0][0])


def read_frame(conn: Connection, sql: str, params: tuple[Any, ...] = ()) -> pl.DataFrame:
    """A query's result as polars, with every timestamp in UTC (DuckDB uses the session zone)."""
    return conn.frame(sql, params).with_columns(
        pl.col(pl.Datetime(time_zone="*")).dt.convert_time_zone("UTC")
    )


def state_database_missing(url: str) -> bool:
    """A DuckDB state file that does not exist yet: read it as "never ran", without creating it."""
    if dialect_of(url) != "duckdb":
        return False
    path = duckdb_path(url)
    return path != ":memory:" and not Path(path).exists()
