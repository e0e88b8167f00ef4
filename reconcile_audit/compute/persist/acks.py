"""Acknowledgements: a person's "known, owned, here is why" about a finding, kept append-only in
``reconciliation_acknowledgements``, and what they make of the latest run's findings.

A finding is acknowledged with the evidence it has in the latest completed run of its tenant
scope (``open_findings``); the rule for when an acknowledgement holds is
:func:`reconcile_audit.compute.lifecycle.with_acknowledgements`, the same for the next run's
history and for the health check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from reconcile_audit.compute.db import Connection, read_sql
from reconcile_audit.compute.lifecycle import AckAction, age_days, overdue, with_acknowledgements
from reconcile_audit.compute.persist.migrate import migrate_connection
from reconcile_audit.compute.persist.session import (
    as_utc,
    describe_error,
    read_frame,
    state_database_missing,
    state_session,
    table_exists,
    transaction,
)
from reconcile_audit.compute.schemas import ACKNOWLEDGEMENTS
from reconcile_audit.errors import PersistError

OPEN_FINDINGS = pl.Schema(
    {
        "scope_tenant_id": pl.String,
        "run_started_at": pl.Datetime("us", "UTC"),
        "finding_id": pl.String,
        "invoice_id": pl.String,
        "tenant_id": pl.String,
        "class": pl.String,
        "reason_code": pl.String,
        "reason": pl.String,
        "evidence": pl.String,
        "finding_state": pl.String,
        "first_seen_at": pl.Datetime("us", "UTC"),
    }
)


@dataclass(frozen=True)
class Acknowledgement:
    """What a person says about one or more findings (``action`` ack or unack)."""

    action: AckAction
    by: str
    reason: str
    at: datetime
    until: datetime | None = None

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError("an acknowledgement needs a reason")
        if not self.by.strip():
            raise ValueError("an acknowledgement needs a name (--by)")
        if self.until is not None and as_utc(self.until) <= as_utc(self.at):
            raise ValueError(f"--until {self.until.isoformat()} has already passed")


def read_acknowledgements(conn: Connection, now: datetime) -> pl.DataFrame:
    """Every ACKNOWLEDGEMENTS row given up to ``now``, oldest first; none before migration 0008."""
    if not table_exists(conn, "reconciliation_acknowledgements"):
        return pl.DataFrame(schema=ACKNOWLEDGEMENTS)
    return read_frame(conn, read_sql("persist/acknowledgements.sql"), (now,)).cast(dict(ACKNOWLEDGEMENTS))


def _read(conn: Connection, now: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(OPEN_FINDINGS, ACKNOWLEDGEMENTS given up to ``now``)."""
    if not table_exists(conn, "reconciliation_acknowledgements"):  # the findings have no ids yet
        return pl.DataFrame(schema=OPEN_FINDINGS), pl.DataFrame(schema=ACKNOWLEDGEMENTS)
    findings = read_frame(conn, read_sql("persist/open_findings.sql"))
    return findings.cast(dict(OPEN_FINDINGS)), read_acknowledgements(conn, now)


def findings_with_acks(url: str, now: datetime, *, sla_days: int) -> pl.DataFrame:
    """The open findings of every scope's latest completed run, judged against the
    acknowledgements as they stand at ``now``: OPEN_FINDINGS plus the acknowledgement columns,
    ``ack_holds``, ``age_days`` and ``overdue``. Empty before migration 0008.

    Raises :class:`PersistError` when the state database cannot be read.
    """
    now = as_utc(now)
    if state_database_missing(url):
        return _judged(
            pl.DataFrame(schema=OPEN_FINDINGS), pl.DataFrame(schema=ACKNOWLEDGEMENTS), now, sla_days
        )
    try:
        with state_session(url) as conn:
            findings, acks = _read(conn, now)
    except Exception as exc:
        raise PersistError(
            f"cannot read the findings and acknowledgements: {describe_error(exc, url)}"
        ) from exc
    return _judged(findings, acks, now, sla_days)


def _judged(findings: pl.DataFrame, acks: pl.DataFrame, now: datetime, sla_days: int) -> pl.DataFrame:
    return (
        with_acknowledgements(findings, acks, now)
        .with_columns(age_days(now).alias("age_days"))
        .with_columns(overdue(sla_days).alias("overdue"))
    )


def scope_counts(judged: pl.DataFrame, tenant_id: str | None) -> dict[str, int]:
    """``acknowledged``, ``unacknowledged`` and ``overdue`` findings of one tenant scope's latest
    run, among those with a finding id."""
    scope = judged.filter(pl.col("scope_tenant_id").eq_missing(tenant_id))
    acknowledged = int(scope.get_column("ack_holds").sum())
    return {
        "acknowledged": acknowledged,
        "unacknowledged": scope.height - acknowledged,
        "overdue": int(scope.get_column("overdue").sum()),
    }


def targets(
    judged: pl.DataFrame,
    *,
    finding_or_invoice: str | None = None,
    tenant_id: str | None = None,
    reason_code: str | None = None,
) -> pl.DataFrame:
    """The open findings a command names: one finding id or every finding of one invoice, or in
    bulk every finding of a tenant (and reason code). One row per finding id, the newest run's."""
    frame = judged
    if finding_or_invoice is not None:
        frame = frame.filter(
            (pl.col("finding_id") == finding_or_invoice) | (pl.col("invoice_id") == finding_or_invoice)
        )
    if tenant_id is not None:
        frame = frame.filter(pl.col("tenant_id") == tenant_id)
    if reason_code is not None:
        frame = frame.filter(pl.col("reason_code") == reason_code)
    return frame.sort("finding_id", "run_started_at", descending=[False, True]).unique(
        "finding_id", keep="first", maintain_order=True
    )


def record(url: str, findings: pl.DataFrame, acknowledgement: Acknowledgement) -> int:
    """Append one row per finding of ``findings`` (from :func:`targets`); returns how many.

    An ``ack`` keeps each finding's current evidence, so it lapses when the evidence changes.
    Raises :class:`PersistError` when the state database refuses the write.
    """
    rows = [
        (
            row["finding_id"],
            row["invoice_id"],
            row["tenant_id"],
            acknowledgement.action.value,
            row["evidence"] if acknowledgement.action == AckAction.ACK else None,
            acknowledgement.by,
            as_utc(acknowledgement.at),
            acknowledgement.reason,
            None if acknowledgement.until is None else as_utc(acknowledgement.until),
        )
        for row in findings.iter_rows(named=True)
    ]
    try:
        with state_session(url) as conn:
            migrate_connection(conn)
            with transaction(conn):
                for params in rows:
                    conn.execute(read_sql("persist/insert_acknowledgement.sql"), params)
    except Exception as exc:
        raise PersistError(f"cannot record the acknowledgement: {describe_error(exc, url)}") from exc
    return len(rows)


def acknowledgements(url: str, now: datetime) -> pl.DataFrame:
    """Every row of the acknowledgements table up to ``now``, oldest first (``acks --all``)."""
    if state_database_missing(url):
        return pl.DataFrame(schema=ACKNOWLEDGEMENTS)
    try:
        with state_session(url) as conn:
            return _read(conn, as_utc(now))[1]
    except Exception as exc:
        raise PersistError(f"cannot read the acknowledgements: {describe_error(exc, url)}") from exc


def holding(judged: pl.DataFrame) -> pl.DataFrame:
    """The acknowledgements that hold now, one row per finding (``acks``)."""
    return judged.filter(pl.col("ack_holds"))
