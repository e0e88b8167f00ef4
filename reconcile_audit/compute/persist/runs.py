"""One ``reconciliation_runs`` row per run key, written with the run's findings in one transaction."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import polars as pl

from reconcile_audit.compute.db import Connection, read_sql
from reconcile_audit.compute.persist.findings import insert_findings, non_match_rows, results_digest
from reconcile_audit.compute.persist.migrate import migrate_connection
from reconcile_audit.compute.persist.session import (
    as_utc,
    describe_error,
    state_session,
    table_exists,
    transaction,
    utc_now,
)
from reconcile_audit.compute.schemas import COUNT_NAMES, ClassCounts, RunStatus
from reconcile_audit.compute.settings import redact_url
from reconcile_audit.errors import PersistError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRecord:
    """What ``reconciliation_runs`` stores about one run. Timestamps must be timezone-aware."""

    run_key: str
    tenant_id: str | None
    started_at: datetime
    finished_at: datetime | None
    status: RunStatus
    counts: ClassCounts
    ledger_min: int | None = None
    ledger_max: int | None = None
    error_message: str | None = None

    def __post_init__(self) -> None:
        if self.status not in set(RunStatus):
            raise ValueError(f"status must be one of {', '.join(RunStatus)}, not {self.status!r}")
        for name in ("started_at", "finished_at"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")


@dataclass(frozen=True)
class PersistOutcome:
    """What :func:`persist_run` did. ``ok=False`` carries the redacted cause in ``error``."""

    ok: bool
    run_key: str
    run_id: int | None
    findings_written: int
    results_rows: int
    seconds: float
    error: str | None = None
    marked_failed: bool = False  # the run row was written as failed after the error


def _run_params(record: RunRecord, results: str | None) -> tuple[Any, ...]:
    return (
        record.run_key,
        record.tenant_id,
        as_utc(record.started_at),
        as_utc(record.finished_at) if record.finished_at is not None else None,
        str(record.status),
        *(record.counts[name] for name in COUNT_NAMES),
        record.ledger_min,
        record.ledger_max,
        record.error_message,
        results,
    )


def _upsert_run(conn: Connection, record: RunRecord, results: str | None) -> int:
    return int(conn.rows(read_sql("persist/upsert_run.sql"), _run_params(record, results))[0][0])


def _replace_run(conn: Connection, record: RunRecord, results: str | None) -> int:
    """Write the run row and drop the findings an earlier run with the same key left."""
    run_id = _upsert_run(conn, record, results)
    conn.execute(read_sql("persist/delete_findings.sql"), (run_id,))
    return run_id


def start_run(url: str, run_key: str, tenant_id: str | None, started_at: datetime) -> None:
    """Record ``run_key`` as running, replacing an earlier run with the same key and its findings.

    Migrates first. Raises :class:`PersistError` (redacted cause) when the database refuses.
    """
    record = RunRecord(run_key, tenant_id, started_at, None, RunStatus.RUNNING, ClassCounts.zero())
    try:
        with state_session(url) as conn:
            migrate_connection(conn)
            with transaction(conn):
                _replace_run(conn, record, None)
    except Exception as exc:
        raise PersistError(f"cannot record the start of run {run_key!r}: {describe_error(exc, url)}") from exc


def persist_run(url: str, record: RunRecord, findings: pl.DataFrame) -> PersistOutcome:
    """Finish the run row and bulk-write its non-match findings, in one transaction.

    Re-running the same ``run_key`` replaces the run's row and findings. Never raises: a failure
    is logged with its redacted cause and returned as ``ok=False``; the run row is then written
    as ``failed`` (keeping the counts) when the database still allows it, so the health check
    does not show a finished run whose findings are missing.
    """
    clock = time.perf_counter()
    try:
        rows = non_match_rows(findings)
        digest = results_digest(rows)
        with state_session(url) as conn:
            migrate_connection(conn)
            with transaction(conn):
                run_id = _replace_run(conn, record, json.dumps(digest, ensure_ascii=False, default=str))
                insert_findings(conn, run_id, rows)
    except Exception as exc:
        cause = describe_error(exc, url)
        logger.error("persisting run %r to %s failed: %s", record.run_key, redact_url(url), cause)
        return PersistOutcome(
            ok=False,
            run_key=record.run_key,
            run_id=None,
            findings_written=0,
            results_rows=0,
            seconds=time.perf_counter() - clock,
            error=cause,
            marked_failed=_mark_failed(url, record, cause),
        )
    seconds = time.perf_counter() - clock
    logger.info(
        "persisted run %r (id %s): %d non-match findings, %d in the results digest, %.2f s",
        record.run_key,
        run_id,
        rows.height,
        len(digest["rows"]),
        seconds,
    )
    return PersistOutcome(True, record.run_key, run_id, rows.height, len(digest["rows"]), seconds)


def _mark_failed(url: str, record: RunRecord, cause: str) -> bool:
    failed = replace(
        record,
        status=RunStatus.FAILED,
        finished_at=record.finished_at or utc_now(),
        error_message=f"findings not stored: {cause}",
    )
    try:
        with state_session(url) as conn, transaction(conn):
            _upsert_run(conn, failed, None)
    except Exception as exc:
        logger.error("could not mark run %r as failed either: %s", record.run_key, describe_error(exc, url))
        return False
    return True


def cumulative_mismatches(url: str, tenant_id: str | None) -> int:
    """Mismatches summed over every finished run of the scope: the monotonic counter's value.

    0 before the first run. Raises :class:`PersistError` when the database cannot be read.
    """
    try:
        with state_session(url) as conn:
            if not table_exists(conn, "reconciliation_runs"):
                return 0
            return int(conn.rows(read_sql("persist/cumulative_mismatches.sql"), (tenant_id,))[0][0])
    except Exception as exc:
        raise PersistError(f"cannot read the mismatch history: {describe_error(exc, url)}") from exc


