"""The health read-back: what the latest finished run of a tenant scope says (``summary --json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from reconcile_audit.compute.db import read_sql
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
class Health:
    """The latest finished run of a tenant scope and what it says about the audit's health.

    ``not_run``: no finished run (or no tables); ``failed``: the latest run failed; ``stale``:
    the latest run completed more than ``stale_after_hours`` before ``checked_at``;
    ``healthy``: it completed with every invoice a match; ``findings``: it completed with at
    least one non-match invoice.
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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("checked_at", "started_at", "finished_at"):
            value = getattr(self, name)
            data[name] = value.isoformat() if value is not None else None
        if self.counts is not None:
            data["counts"]["non_match"] = self.counts.non_match
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)


def latest_summary(
    url: str,
    tenant_id: str | None = None,
    *,
    stale_after_hours: float = 25.0,
    now: datetime | None = None,
) -> Health:
    """The health of one tenant scope from its latest finished run (see :class:`Health`).

    Raises :class:`PersistError` when the state database cannot be reached.
    """
    checked_at = as_utc(now) if now is not None else utc_now()
    health = Health(HealthStatus.NOT_RUN, tenant_id, checked_at, stale_after_hours)
    if state_database_missing(url):
        return health
    try:
        with state_session(url, lock_wait_seconds=2.0) as conn:
            if not table_exists(conn, "reconciliation_runs"):
                return health
            latest = read_frame(conn, read_sql("persist/latest_finished_run.sql"), (tenant_id,))
    except Exception as exc:
        raise PersistError(f"cannot read the latest run: {describe_error(exc, url)}") from exc
    if latest.is_empty():
        return health
    run = latest.row(0, named=True)
    counts = ClassCounts(**{name: int(run[name]) for name in COUNT_NAMES})
    ended = run["finished_at"] or run["started_at"]
    if run["status"] == RunStatus.FAILED:
        status = HealthStatus.FAILED
    elif checked_at - ended > timedelta(hours=stale_after_hours):
        status = HealthStatus.STALE
    else:
        status = HealthStatus.FINDINGS if counts.non_match else HealthStatus.HEALTHY
    return Health(
        status=status,
        tenant_id=tenant_id,
        checked_at=checked_at,
        stale_after_hours=stale_after_hours,
        run_key=run["run_key"],
        run_status=RunStatus(run["status"]),
        started_at=run["started_at"],
        finished_at=run["finished_at"],
        counts=counts,
        ledger_min=run["ledger_min"],
        ledger_max=run["ledger_max"],
        error=run["error_message"],
    )


