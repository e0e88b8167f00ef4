"""The per-tenant run lease: a row, not an advisory lock, so it behaves the same on both dialects
and no connection stays open for the whole run (see the package docstring)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from reconcile_audit.compute.db import duckdb_path, read_sql
from reconcile_audit.compute.persist.migrate import migrate_connection
from reconcile_audit.compute.persist.session import (
    LOCK_WAIT_SECONDS,
    describe_error,
    duckdb_lock_holder,
    read_frame,
    state_session,
    transaction,
    utc_now,
)
from reconcile_audit.compute.settings import Shard
from reconcile_audit.errors import LeaseHeldError, PersistError, StateLockedError

logger = logging.getLogger(__name__)

ALL_TENANTS: Final = "(all tenants)"
# Short, with a heartbeat: a holder that dies frees the scope within minutes.
LEASE_TTL: Final = timedelta(minutes=10)


@dataclass(frozen=True)
class Lease:
    """The lease held inside :func:`run_lease`."""

    tenant_id: str | None
    holder: str
    token: str
    acquired_at: datetime
    expires_at: datetime
    shard: Shard | None = None

    @property
    def scope(self) -> str:
        return _scope(self.tenant_id, self.shard)

    @property
    def label(self) -> str:
        return _tenant_label(self.tenant_id, self.shard)


def _scope(tenant_id: str | None, shard: Shard | None = None) -> str:
    # A shard of a scope is a scope of its own: the shards of one run key run side by side.
    whole = "all" if tenant_id is None else f"tenant:{tenant_id}"
    return whole if shard is None else f"{whole}#{shard.label}"


def _tenant_label(tenant_id: str | None, shard: Shard | None = None) -> str:
    whole = ALL_TENANTS if tenant_id is None else tenant_id
    return whole if shard is None else f"{whole}, shard {shard}"


def _holder_text(row: Mapping[str, Any]) -> str:
    return (
        f"{row['holder']} since {row['acquired_at']:%Y-%m-%d %H:%M:%S} UTC"
        f" (lease expires {row['expires_at']:%Y-%m-%d %H:%M:%S} UTC)"
    )


def holder_name(run_id: str) -> str:
    """Who holds a lease: ``host:pid:run_id``, so a later run on the same host can tell a dead one."""
    return f"{socket.gethostname()}:{os.getpid()}:{run_id}"


def _holder_is_dead(holder: str) -> bool:
    """Whether ``holder`` names a process of this host that no longer exists."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host, or another naming: only its expiry can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False


def _acquire(
    url: str,
    tenant_id: str | None,
    holder: str,
    ttl: timedelta,
    lock_wait_seconds: float,
    shard: Shard | None,
) -> Lease:
    acquired_at = utc_now()
    lease = Lease(tenant_id, holder, uuid.uuid4().hex, acquired_at, acquired_at + ttl, shard)
    scope = lease.scope
    with state_session(url, lock_wait_seconds=lock_wait_seconds) as conn:
        migrate_connection(conn)
        with transaction(conn):
            before = read_frame(conn, read_sql("persist/lease_holder.sql"), (scope,))
            dead_token = ""
            if not before.is_empty() and _holder_is_dead(before.row(0, named=True)["holder"]):
                dead_token = before.row(0, named=True)["token"]
            won = conn.rows(
                read_sql("persist/lease_acquire.sql"),
                (scope, tenant_id, holder, lease.token, lease.acquired_at, lease.expires_at, dead_token),
            )
            # Read again after the write: on PostgreSQL a concurrent winner commits in between.
            current = before if won else read_frame(conn, read_sql("persist/lease_holder.sql"), (scope,))
    if not won:
        raise LeaseHeldError(lease.label, _holder_text(current.row(0, named=True)))
    if not before.is_empty():
        logger.warning(
            "took over the lease for %s from %s, %s",
            lease.label,
            _holder_text(before.row(0, named=True)),
            "whose process is gone" if dead_token else "which had expired",
        )
    return lease


def _renew(url: str, lease: Lease, ttl: timedelta, lock_wait_seconds: float) -> bool:
    """One heartbeat; False when the lease is no longer ours. A failed write is only logged: the
    lease then expires on its own within ``ttl``, which is the point of a short one."""
    try:
        with state_session(url, lock_wait_seconds=lock_wait_seconds) as conn, transaction(conn):
            kept = conn.rows(read_sql("persist/lease_renew.sql"), (lease.scope, lease.token, utc_now() + ttl))
    except Exception as exc:
        logger.warning("lease heartbeat for %s failed: %s", lease.label, describe_error(exc, url))
        return True
    if not kept:
        logger.error("the lease for %s is no longer this run's (broken or taken over)", lease.label)
    return bool(kept)


def break_lease(url: str, tenant_id: str | None, shard: Shard | None = None) -> str | None:
    """Remove the scope's lease whoever holds it (``reconcile-audit unlock``); return whose it was."""
    try:
        with state_session(url) as conn:
            migrate_connection(conn)
            with transaction(conn):
                removed = read_frame(conn, read_sql("persist/lease_break.sql"), (_scope(tenant_id, shard),))
    except Exception as exc:
        raise PersistError(f"cannot break the run lease: {describe_error(exc, url)}") from exc
    if removed.is_empty():
        return None
    held = _holder_text(removed.row(0, named=True))
    logger.warning("broke the lease for %s held by %s", _tenant_label(tenant_id, shard), held)
    return held


def _release(url: str, lease: Lease, lock_wait_seconds: float) -> None:
    try:
        with state_session(url, lock_wait_seconds=lock_wait_seconds) as conn, transaction(conn):
            released = conn.rows(read_sql("persist/lease_release.sql"), (lease.scope, lease.token))
    except Exception as exc:  # the lease expires on its own; do not mask the run's outcome
        logger.error("could not release the lease for %s: %s", lease.label, describe_error(exc, url))
        return
    if not released:
        logger.warning("the lease for %s had expired and was taken over during the run", lease.label)


@contextmanager
def run_lease(
    url: str,
    tenant_id: str | None,
    holder: str,
    ttl: timedelta = LEASE_TTL,
    *,
    lock_wait_seconds: float = LOCK_WAIT_SECONDS,
    heartbeat: bool = True,
    shard: Shard | None = None,
) -> Iterator[Lease]:
    """Hold the tenant scope's lease for the block: one run at a time per tenant.

    No connection stays open inside the block; a heartbeat thread pushes the expiry ``ttl`` out
    every ``ttl / 5``, so a run killed without a chance to release (SIGKILL, a lost host) frees
    its scope within ``ttl``, not hours. A live lease held by someone else raises
    :class:`LeaseHeldError` naming the holder and since when; an expired one, or one whose holder
    process is gone from this host, is taken over (with a warning). ``heartbeat=False`` holds the
    lease as a holder that died would: it expires after ``ttl``. A DuckDB state file held open by another process for longer than
    ``lock_wait_seconds`` also raises :class:`LeaseHeldError`, naming that process. Other
    database failures raise :class:`PersistError`.
    """
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    try:
        lease = _acquire(url, tenant_id, holder, ttl, lock_wait_seconds, shard)
    except LeaseHeldError:
        raise
    except Exception as exc:
        locker = duckdb_lock_holder(exc)
        if locker is not None:
            raise StateLockedError(
                f"the state database file {duckdb_path(url)} stayed locked for {lock_wait_seconds:g} s: "
                f"{locker} has it open (a file lock, not a run lease); try again when it is closed"
            ) from exc
        raise PersistError(f"cannot take the run lease: {describe_error(exc, url)}") from exc
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ttl.total_seconds() / 5):
            if not _renew(url, lease, ttl, lock_wait_seconds):
                return

    beating = threading.Thread(target=beat, name="reconcile-audit-lease", daemon=True)
    if heartbeat:
        beating.start()
    try:
        yield lease
    finally:
        stop.set()
        if heartbeat:
            beating.join()
        _release(url, lease, lock_wait_seconds)
