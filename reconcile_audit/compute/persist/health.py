"""The health read-back: what the latest finished run of a tenant scope says (``summary --json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from reconcile_audit.compute.db import read_sql
from reconcile_audit.compute.lifecycle import DEFAULT_SLA_DAYS
from reconcile_audit.compute.persist.acks import findings_with_acks, scope_counts
from reconcile_audit.compute.persist.session import (
    as_utc,
    describe_error,
    read_frame,
    state_database_missing,
    state_session,
    table_exists,
    utc_now,
)
from reconcile_audit.compute.schemas import COUNT_NAMES, ClassCounts, HealthStatus, RunStatus
from reconcile_audit.errors import PersistError


@dataclass(frozen=True)
class AttemptView:
    """One attempt of a run key, as the health check shows it."""

    run_key: str
    run_id: str | None
    status: RunStatus
    started_at: datetime | None
    finished_at: datetime | None
    counts: ClassCounts
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key,
            "run_id": self.run_id,
            "status": str(self.status),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "total": self.counts.total,
            "counts": {**self.counts.by_class(), "non_match": self.counts.non_match},
            "error": self.error,
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


@dataclass(frozen=True)
class Health:
    """What the latest finished attempt of a tenant scope says about the audit's health.

    ``not_run``: no finished attempt (or no tables); ``failed``: the latest attempt failed or was
    abandoned; ``incomplete``: the latest attempt ran to the end but read too few escrows;
    ``stale``: the latest attempt completed more than ``stale_after_hours`` before
    ``checked_at``; ``findings``: it completed with at least one finding that no acknowledgement
    covers (as the acknowledgements stand at ``checked_at``); ``healthy``: it completed, and every
    invoice matches or its finding is acknowledged.

    ``unacknowledged``, ``acknowledged`` and ``overdue`` count the findings of the scope's latest
    completed run (``overdue``: unacknowledged and open longer than the SLA); None when the run
    predates finding ids, or no run completed.

    ``latest`` is that attempt and ``last_completed`` the newest completed one (the stored result
    the findings come from), ordered by the database's writes, not by any client's clock. The flat
    fields (``run_key`` ... ``error``) repeat ``latest`` for readers of the first version.
    """

    status: HealthStatus
    tenant_id: str | None
    checked_at: datetime
    stale_after_hours: float
    run_key: str | None = None
    run_status: RunStatus | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    counts: ClassCounts | None = None
    ledger_min: int | None = None
    ledger_max: int | None = None
    error: str | None = None
    latest: AttemptView | None = None
    last_completed: AttemptView | None = None
    unacknowledged: int | None = None
    acknowledged: int | None = None
    overdue: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("checked_at", "started_at", "finished_at"):
            data[name] = _iso(getattr(self, name))
        if self.counts is not None:
            data["counts"]["non_match"] = self.counts.non_match
        data["latest"] = None if self.latest is None else self.latest.to_dict()
        data["last_completed"] = None if self.last_completed is None else self.last_completed.to_dict()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)


def _attempt(row: dict[str, Any]) -> AttemptView:
    return AttemptView(
        run_key=row["run_key"],
        run_id=row.get("run_id"),
        status=RunStatus(row["status"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        counts=ClassCounts(**{name: int(row[name]) for name in COUNT_NAMES}),
        error=row["error_message"],
    )


def latest_summary(
    url: str,
    tenant_id: str | None = None,
    *,
    stale_after_hours: float = 25.0,
    now: datetime | None = None,
    sla_days: int = DEFAULT_SLA_DAYS,
) -> Health:
    """The health of one tenant scope from its latest finished attempt (see :class:`Health`).

    Raises :class:`PersistError` when the state database cannot be reached.
    """
    checked_at = as_utc(now) if now is not None else utc_now()
    health = Health(HealthStatus.NOT_RUN, tenant_id, checked_at, stale_after_hours)
    if state_database_missing(url):
        return health
    try:
        with state_session(url) as conn:
            if table_exists(conn, "reconciliation_attempts"):
                rows = read_frame(conn, read_sql("persist/latest_attempts.sql"), (tenant_id,))
            elif table_exists(conn, "reconciliation_runs"):  # not yet migrated: a read needs no DDL
                rows = read_frame(conn, read_sql("persist/latest_finished_run.sql"), (tenant_id,))
                rows = rows.with_columns(is_completed=rows["status"] == RunStatus.COMPLETED)
            else:
                return health
    except Exception as exc:
        raise PersistError(f"cannot read the latest run: {describe_error(exc, url)}") from exc
    if rows.is_empty():
        return health
    latest_row = rows.row(0, named=True)
    latest = _attempt(latest_row)
    completed = [row for row in rows.iter_rows(named=True) if row["is_completed"]]
    last_completed = _attempt(completed[0]) if completed else None
    ended = latest.finished_at or latest.started_at
    finding_counts = _finding_counts(url, tenant_id, checked_at, sla_days, last_completed)
    # Only findings nobody owns make a scope unhealthy; before finding ids (an older run), all do.
    unowned = latest.counts.non_match if finding_counts is None else finding_counts["unacknowledged"]
    if latest.status == RunStatus.INCOMPLETE:
        status = HealthStatus.INCOMPLETE
    elif latest.status != RunStatus.COMPLETED:
        status = HealthStatus.FAILED
    elif ended is None or checked_at - ended > timedelta(hours=stale_after_hours):
        status = HealthStatus.STALE
    else:
        status = HealthStatus.FINDINGS if unowned else HealthStatus.HEALTHY
    return Health(
        status=status,
        tenant_id=tenant_id,
        checked_at=checked_at,
        stale_after_hours=stale_after_hours,
        run_key=latest.run_key,
        run_status=latest.status,
        started_at=latest.started_at,
        finished_at=latest.finished_at,
        counts=latest.counts,
        ledger_min=latest_row["ledger_min"],
        ledger_max=latest_row["ledger_max"],
        error=latest.error,
        latest=latest,
        last_completed=last_completed,
        **(finding_counts or {}),
    )


def _finding_counts(
    url: str, tenant_id: str | None, now: datetime, sla_days: int, last_completed: AttemptView | None
) -> dict[str, int] | None:
    if last_completed is None:
        return None
    counts = scope_counts(findings_with_acks(url, now, sla_days=sla_days), tenant_id)
    if sum(counts.values()) == 0 and last_completed.counts.non_match:
        return None  # its findings were stored before they had ids (migration 0008)
    # A finding without an id (no invoice id) cannot be acknowledged, so it always counts.
    counts["unacknowledged"] = last_completed.counts.non_match - counts["acknowledged"]
    return counts
