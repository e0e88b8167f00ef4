"""Versioned migrations of the tool's own tables, per dialect (``sql/migrations/<dialect>/NNNN_name.sql``)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from reconcile_audit.compute.db import Connection, duckdb_path, read_sql
from reconcile_audit.compute.persist.session import (
    describe_error,
    ping,
    state_session,
    table_exists,
    transaction,
    utc_now,
)
from reconcile_audit.compute.settings import redact_url
from reconcile_audit.errors import PersistError
from reconcile_audit.resources import SQL_DIR

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def migrations(dialect: str) -> tuple[Migration, ...]:
    """The numbered migrations of one dialect, oldest first (``NNNN_name.sql``)."""
    found = []
    for path in sorted((SQL_DIR / "migrations" / dialect).glob("[0-9][0-9][0-9][0-9]_*.sql")):
        version, _, name = path.stem.partition("_")
        found.append(Migration(int(version), name, _statements(path)))
    return tuple(found)


def _statements(path: Path) -> tuple[str, ...]:
    """The statements of a migration file: the drivers run one statement per call."""
    code = "\n".join(
        line for line in path.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("--")
    )
    return tuple(part.strip() for part in re.split(r";\s*$", code, flags=re.MULTILINE) if part.strip())


def pending_migrations(conn: Connection) -> list[Migration]:
    applied: set[int] = set()
    if table_exists(conn, "reconcile_audit_schema_migrations"):
        applied = {int(row[0]) for row in conn.rows(read_sql("migrations/applied.sql"))}
    return [migration for migration in migrations(conn.dialect) if migration.version not in applied]


def migrate_connection(conn: Connection) -> tuple[int, ...]:
    # Read first: an up-to-date database needs no DDL rights, no lock and no CREATE ... IF NOT
    # EXISTS, which PostgreSQL checks against the schema's CREATE privilege even when it exists.
    if not pending_migrations(conn):
        return ()
    with transaction(conn):
        if conn.dialect == "postgres":
            conn.execute(read_sql("migrations/lock.postgres.sql"))
        conn.execute(read_sql("migrations/schema_migrations.sql"))
        pending = pending_migrations(conn)  # again under the lock: a concurrent migrate may have finished
        for migration in pending:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(read_sql("migrations/record.sql"), (migration.version, migration.name, utc_now()))
    if pending:
        logger.info("state database: applied migrations %s", [m.version for m in pending])
    return tuple(m.version for m in pending)


def migrate(url: str) -> None:
    """Create or update the tool's tables. Idempotent; safe to run concurrently on PostgreSQL.

    Raises :class:`PersistError` with the redacted cause when the database cannot be migrated.
    """
    try:
        with state_session(url) as conn:
            migrate_connection(conn)
    except Exception as exc:
        raise PersistError(
            f"cannot migrate the state database {redact_url(url)}: {describe_error(exc, url)}"
        ) from exc


def check_state(url: str) -> str:
    """What ``reconcile-audit check`` says of the state database: reachable, migrated (or able to
    migrate on the first run) and writable. :class:`PersistError` naming what is wrong."""
    ping(url)
    try:
        with state_session(url) as conn:
            pending = pending_migrations(conn)
            latest = max((m.version for m in migrations(conn.dialect)), default=0)
            if conn.dialect == "duckdb":
                path = Path(duckdb_path(url))
                writable = os.access(path if path.exists() else path.parent, os.W_OK)
            elif pending:
                writable = bool(conn.rows(read_sql("persist/check_can_migrate.postgres.sql"))[0][0])
            else:
                writable = bool(conn.rows(read_sql("persist/check_writable.postgres.sql"))[0][0])
    except PersistError:
        raise
    except Exception as exc:
        raise PersistError(
            f"cannot read the state database {redact_url(url)}: {describe_error(exc, url)}"
        ) from exc
    if not writable:
        raise PersistError(
            f"the state database {redact_url(url)} is not writable by this role"
            + (" and has migrations pending" if pending else "")
            + ": point RECONCILE_STATE_DATABASE_URL at a writable one, or run `reconcile-audit migrate` "
            "once as the schema's owner"
        )
    if pending:
        return f"{redact_url(url)}: writable; migrations {[m.version for m in pending]} will be applied by the first run"
    return f"{redact_url(url)}: migrated to version {latest}, writable"
