"""Runs and their attempts.

``reconciliation_runs`` holds one row per run key: the key's result, written with its findings in
one transaction. ``reconciliation_attempts`` holds one row per execution (the runner's run id).
A completed result is replaced only by a later *completed* attempt of the key; a failed attempt
is recorded as an attempt and leaves the completed result, its findings and the history intact.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import polars as pl

from reconcile_audit.compute.db import Connection, read_sql
from reconcile_audit.compute.persist.findings import (
    insert_findings,
    results_digest,
    stored_rows,
    stranded_rows,
)
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
from reconcile_audit.compute.settings import Shard, redact_url
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
    # The attempt this record ends: the runner's run id. None: a new attempt of its own.
    attempt: str | None = None
    shard: Shard | None = None  # the part of run_key's invoices this run reconciled; None: all

    @property
    def stored_key(self) -> str:
        """The key of the ``reconciliation_runs`` row: the run key, or its shard's own key."""
        return self.run_key if self.shard is None else self.shard.key_of(self.run_key)

    def __post_init__(self) -> None:
        if self.attempt is None:
            object.__setattr__(self, "attempt", f"{self.run_key}:{uuid.uuid4().hex}")
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
    marked_failed: bool = False  # the attempt was recorded as failed, with its counts, after the error
    kept_completed: bool = False  # a failed attempt left the key's earlier completed result in place
    state_unreachable: bool = False  # nothing was tried: the state database could not be reached


def _shard_columns(shard: Shard | None) -> tuple[int | None, int | None]:
    """``shard_index`` and ``shard_count``: both null for a whole run."""
    return (None, None) if shard is None else (shard.index, shard.count)


def _run_params(record: RunRecord, results: str | None) -> tuple[Any, ...]:
    """``upsert_run.sql``'s parameters, in order."""
    # reconciliation_runs knows running, completed and failed (its first migration's CHECK): an
    # incomplete result is stored there as failed, its attempt keeps the finer status.
    status = RunStatus.FAILED if record.status == RunStatus.INCOMPLETE else record.status
    return (
        record.stored_key,
        record.tenant_id,
        as_utc(record.started_at),
        as_utc(record.finished_at) if record.finished_at is not None else None,
        str(status),
        *(record.counts[name] for name in COUNT_NAMES),
        record.ledger_min,
        record.ledger_max,
        record.error_message,
        results,
        # $16: a failed attempt writes the row only when the key has no completed result.
        record.status == RunStatus.COMPLETED,
        None if record.shard is None else record.run_key,
        *_shard_columns(record.shard),
    )


def _upsert_run(conn: Connection, record: RunRecord, results: str | None) -> int | None:
    """The key's result row; None when a completed result was kept (``record`` is a failure)."""
    written = conn.rows(read_sql("persist/upsert_run.sql"), _run_params(record, results))
    return int(written[0][0]) if written else None


def _record_attempt(conn: Connection, record: RunRecord) -> None:
    conn.execute(
        read_sql("persist/upsert_attempt.sql"),
        (
            record.attempt,
            record.run_key,
            record.tenant_id,
            str(record.status),
            as_utc(record.started_at),
            as_utc(record.finished_at) if record.finished_at is not None else None,
            *(record.counts[name] for name in COUNT_NAMES),
            record.ledger_min,
            record.ledger_max,
            record.error_message,
            *_shard_columns(record.shard),
        ),
    )


def _write(conn: Connection, record: RunRecord, rows: pl.DataFrame, results: str | None) -> int | None:
    """The attempt, and the key's result when this record may hold it. Returns the result row's
    id, or None when a completed result of the key was kept (``record`` is a failure)."""
    _record_attempt(conn, record)
    run_id = _upsert_run(conn, record, results)
    if run_id is None:
        return None
    conn.execute(read_sql("persist/delete_findings.sql"), (run_id,))
    insert_findings(conn, run_id, rows)
    return run_id


def start_run(
    url: str,
    run_key: str,
    tenant_id: str | None,
    started_at: datetime,
    *,
    attempt: str | None = None,
    shard: Shard | None = None,
) -> None:
    """Record a new attempt of ``run_key`` as running. The key's stored result is not touched.

    Migrates first. Raises :class:`PersistError` (redacted cause) when the database refuses.
    """
    record = RunRecord(
        run_key,
        tenant_id,
        started_at,
        None,
        RunStatus.RUNNING,
        ClassCounts.zero(),
        attempt=attempt,
        shard=shard,
    )
    try:
        with state_session(url) as conn:
            migrate_connection(conn)
            with transaction(conn):
                _record_attempt(conn, record)
    except Exception as exc:
        raise PersistError(f"cannot record the start of run {run_key!r}: {describe_error(exc, url)}") from exc


def abandon_stale_attempts(
    url: str, tenant_id: str | None, attempt: str, shard: Shard | None = None
) -> tuple[str, ...]:
    """Mark the scope's other attempts still ``running`` as abandoned; return their run ids.

    Only the holder of the scope's lease may call this: under the lease no other attempt can be
    alive, so one still marked running was killed or lost its host.
    """
    try:
        with state_session(url) as conn:
            migrate_connection(conn)
            with transaction(conn):
                rows = conn.rows(
                    read_sql("persist/abandon_stale_attempts.sql"),
                    (tenant_id, attempt, *_shard_columns(shard)),
                )
    except Exception as exc:
        raise PersistError(f"cannot close abandoned attempts: {describe_error(exc, url)}") from exc
    abandoned = tuple(str(row[0]) for row in rows)
    for run_id in abandoned:
        logger.warning("attempt %s never recorded an end; marked abandoned", run_id)
    return abandoned


def persist_run(
    url: str,
    record: RunRecord,
    findings: pl.DataFrame,
    stranded: pl.DataFrame | None = None,
    facts: Mapping[str, Any] | None = None,
) -> PersistOutcome:
    """End the attempt and, for a completed one, store the key's result and its non-match
    findings (and the matches with a flag), with its stranded escrows (class ``stranded``, after
    them), all in one transaction. ``facts`` go into the results digest under ``"facts"``: what
    a merge of shards needs that the rows do not say.

    A later completed attempt of the same ``run_key`` replaces the result and its findings; a
    failed one (``record.status`` failed) never does: it is stored as the key's result only when
    the key has no completed one (``kept_completed`` says so). Never raises: a failure is logged
    with its redacted cause and returned as ``ok=False``; the attempt is then recorded as
    ``failed`` with its counts when the database still allows it.
    """
    clock = time.perf_counter()
    try:
        rows = stored_rows(findings)
        digest = results_digest(rows.filter(pl.col("class") != "match"))
        if facts is not None:
            digest["facts"] = dict(facts)
        if stranded is not None and not stranded.is_empty():
            rows = pl.concat([rows, stranded_rows(stranded, first_no=findings.height + 1)])
        with state_session(url) as conn:
            migrate_connection(conn)
            with transaction(conn):
                run_id = _write(conn, record, rows, json.dumps(digest, ensure_ascii=False, default=str))
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
    if run_id is None:
        logger.warning(
            "run %r: this attempt failed; the key's earlier completed result is kept", record.run_key
        )
        return PersistOutcome(True, record.run_key, None, 0, 0, seconds, kept_completed=True)
    logger.info(
        "persisted run %r (id %s): %d rows (findings, flagged matches, stranded escrows), %d in the results digest, %.2f s",
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
        # Only the rows, not the findings: the findings table may be what failed.
        with state_session(url) as conn, transaction(conn):
            _record_attempt(conn, failed)
            _upsert_run(conn, failed, None)
    except Exception as exc:
        logger.error("could not mark run %r as failed either: %s", record.run_key, describe_error(exc, url))
        return False
    return True


def cumulative_mismatches(url: str, tenant_id: str | None) -> int:
    """The monotonic counter's value: per run key, the most mismatches a finished attempt counted,
    summed over the scope's keys (``sql/persist/cumulative_mismatches.sql``).

    0 before the first run. Raises :class:`PersistError` when the database cannot be read.
    """
    try:
        with state_session(url) as conn:
            if not table_exists(conn, "reconciliation_attempts"):
                return 0
            return int(conn.rows(read_sql("persist/cumulative_mismatches.sql"), (tenant_id,))[0][0])
    except Exception as exc:
        raise PersistError(f"cannot read the mismatch history: {describe_error(exc, url)}") from exc
