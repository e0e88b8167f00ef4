"""The per-tenant run lease: a row, not an advisory lock, so it behaves the same on both dialects
and no connection stays open for the whole run (see the package docstring)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from reconcile_audit.compute.db import duckdb_path, read_sql
from reconcile_audit.compute.persist.migrate import migrate_connection
from reconcile_audit.compute.persist.session import (
    describe_error,
    duckdb_lock_holder,
    read_frame,
    state_session,
    transaction,
    utc_now,
)
from reconcile_audit.errors import LeaseHeldError, PersistError

logger = logging.getLogger(__name__)

ALL_TENANTS: Final = "(all tenants)"


@dataclass(frozen=True)
class Lease:
    """The lease held inside :func:`run_lease`."""

    tenant_id: str | None
    holder: str
    token: str
    acquired_at: datetime
    expires_at: datetime


def _scope(tenant_id: str | None) -> str:
    return "all" if tenant_id is None else f"tenant:{tenant_id}"


def _tenant_label(tenant_id: str | None) -> str:
    return ALL_TENANTS if tenant_id is None else tenant_id


def _holder_text(row: Mapping[str, Any]) -> str:
    return (
        f"{row['holder']} since {row['acquired_at']:%Y-%m-%d %H:%M:%S} UTC"
        f" (lease expires {row['expires_at']:%Y-%m-%d %H:%M:%S} UTC)"
    )


def _acquire(url: str, tenant_id: str | None, holder: str, ttl: timedelta, lock_wait_seconds: float) -> Lease:
    acquired_at = utc_now()
    lease = Lease(tenant_id, holder, uuid.uuid4().hex, acquired_at, acquired_at + ttl)
    scope = _scope(tenant_id)
    with state_session(url, lock_wait_seconds=lock_wait_seconds) as conn:
        migrate_connection(conn)
        with transaction(conn):
            before = read_frame(conn, read_sql("persist/lease_holder.sql"), (scope,))
            won = conn.rows(
                read_sql("persist/lease_acquire.sql"),
                (scope, tenant_id, holder, lease.token, lease.acquired_at, lease.expires_at),
            )
            # Read again after the write: on PostgreSQL a concurrent winner commits in between.
            current = before if won else read_frame(conn, read_sql("persist/lease_holder.sql"), (scope,))
    if not won:
        raise LeaseHeldError(_tenant_label(tenant_id), _holder_text(current.row(0, named=True)))
    if not before.is_empty():
        logger.warning(
            "took over the expired lease for %s from %s",
            _tenant_label(tenant_id),
            _holder_text(before.row(0, named=True)),
        )
    return lease


def _release(url: str, lease: Lease, lock_wait_seconds: float) -> None:
    try:
        with state_session(url, lock_wait_seconds=lock_wait_seconds) as conn, transaction(conn):
            released = conn.rows(
                read_sql("persist/lease_release.sql"), (_scope(lease.tenant_id), lease.token)
            )
    except Exception as exc:  # the lease expires on its own; do not mask the run's outcome
        logger.error(
            "could not release the lease for %s: %s", _tenant_label(lease.tenant_id), describe_error(exc, url)
        )
        return
    if not released:
        logger.warning(
            "the lease for %s had expired and was taken over during the run", _tenant_label(lease.tenant_id)
        )


@contextmanager
def run_lease(
    url: str,
    tenant_id: str | None,
    holder: str,
    ttl: timedelta = timedelta(hours=6),
    *,
    lock_wait_seconds: float = 2.0,
) -> Iterator[Lease]:
    """Hold the tenant scope's lease for the block: one run at a time per tenant.

    No connection stays open inside the block. A live lease held by someone else raises
    :class:`LeaseHeldError` naming the holder and since when; an expired one is taken over (with
    a warning). A DuckDB state file held open by another process for longer than
    ``lock_wait_seconds`` also raises :class:`LeaseHeldError`, naming that process. Other
    database failures raise :class:`PersistError`.
    """
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    try:
        lease = _acquire(url, tenant_id, holder, ttl, lock_wait_seconds)
    except LeaseHeldError:
        raise
    except Exception as exc:
        locker = duckdb_lock_holder(exc)
        if locker is not None:
            raise LeaseHeldError(
                _tenant_label(tenant_id), f"{locker} has the state database {duckdb_path(url)} open"
            ) from exc
        raise PersistError(f"cannot take the run lease: {describe_error(exc, url)}") from exc
    try:
        yield lease
    finally:
        _release(url, lease, lock_wait_seconds)
