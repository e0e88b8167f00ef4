"""Persist: the tool's own tables, one row per run, its non-match findings, the per-tenant lease,
and the health read-back. Works on PostgreSQL (ADBC) and on an embedded DuckDB file alike.

Tables (``reconcile_audit/sql/migrations/<dialect>/``, applied by :func:`migrate`):

- ``reconciliation_runs``: one row per ``run_key`` (unique). ``results`` is a capped JSON digest
  of the non-match rows, never the whole list: ``{"cap", "non_match", "omitted", "order",
  "rows"}`` with at most :data:`RESULTS_JSON_CAP` rows, worst first (largest drift, then by
  class). The complete list is ``reconciliation_findings``.
- ``reconciliation_findings``: one row per non-match invoice per run, keyed by ``(run_id,
  finding_no)`` where ``finding_no`` is the row's 1-based position in the run's findings frame
  (``results.parquet``); indexed by ``(invoice_id, run_id)`` for history.
- ``reconciliation_leases``: one row per tenant scope while a run holds it.

A run whose findings cannot be stored is written as ``failed`` with its counts kept
(``PersistOutcome.marked_failed``), so :func:`cumulative_mismatches`, which sums every finished
run, already includes its mismatches.

The tenant scope: ``tenant_id=None`` is the all-tenants run, a scope of its own. Health,
cumulative counts, leases and history always compare a run with runs of the same scope.

The lease is a row, not a PostgreSQL advisory lock, so that it behaves the same on both
dialects and needs no connection held for the whole run: the runner takes it and a Jupyter
kernel in another process then opens the same DuckDB file, which DuckDB allows only after the
runner's connection is closed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import polars as pl
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from reconcile_audit.compute.classify import COUNT_NAMES, ClassCounts
from reconcile_audit.compute.db import Connection, dialect_of, duckdb_path, open_connection, read_sql
from reconcile_audit.compute.schemas import CLASSES, FINDINGS, conform
from reconcile_audit.compute.settings import redact_url, url_password
from reconcile_audit.errors import LeaseHeldError, PersistError
from reconcile_audit.resources import SQL_DIR

logger = logging.getLogger(__name__)

RESULTS_JSON_CAP: Final = 1000
"""At most this many non-match rows go into ``reconciliation_runs.results``."""

RESULTS_COLUMNS: Final = (
    "finding_no",
    "invoice_id",
    "tenant_id",
    "contract_id",
    "class",
    "reason_code",
    "reason",
    "db_funded_base_units",
    "chain_funded_base_units",
    "delta_base_units",
    "token_decimals",
    "flags",
)

# Worst first within the capped digest: drifts have a rank; other classes by how actionable.
_CLASS_SEVERITY: Final = {"mismatch": 0, "error": 1, "missing_on_chain": 2, "unlinked": 3}
RESULTS_ORDER: Final = "drift_rank ascending (largest drift first), then mismatch, error, missing_on_chain, unlinked, then finding_no"

RunStatus = Literal["running", "completed", "failed"]
HealthStatus = Literal["not_run", "stale", "healthy", "findings", "failed"]
ALL_TENANTS: Final = "(all tenants)"

_STAGING: Final = "reconcile_findings_staging"
_DUCKDB_LOCK = re.compile(r"Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")


@dataclass(frozen=True)
class RunRecord:
    """What ``reconciliation_runs`` stores about one run. Timestamps must be timezone-aware."""

    run_key: str
    tenant_id: str | None
    started_at: datetime
    finished_at: datetime | None
    status: RunStatus
    total: int
    match: int
    mismatch: int
    missing_on_chain: int
    unlinked: int
    error: int
    ledger_min: int | None = None
    ledger_max: int | None = None
    error_message: str | None = None

    def __post_init__(self) -> None:
        if self.status not in ("running", "completed", "failed"):
            raise ValueError(f"status must be running, completed or failed, not {self.status!r}")
        for name in ("started_at", "finished_at"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")
        ClassCounts(total=self.total, **{name: getattr(self, name) for name in CLASSES})

    @property
    def counts(self) -> ClassCounts:
        return ClassCounts(total=self.total, **{name: getattr(self, name) for name in CLASSES})

    @classmethod
    def from_counts(cls, counts: Any, **fields: Any) -> RunRecord:
        """Build from any object with ``total`` and one attribute per class ."""
        return cls(**asdict(ClassCounts.of(counts)), **fields)


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


@dataclass(frozen=True)
class Lease:
    """The lease held inside :func:`run_lease`."""

    tenant_id: str | None
    holder: str
    token: str
    acquired_at: datetime
    expires_at: datetime


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


# --- connections and transactions --------------------------------------------------------------


def describe_error(exc: BaseException, url: str) -> str:
    """``exc`` as one line naming its type, with the state database's password redacted."""
    text = f"{type(exc).__name__}: {exc}".replace(url, redact_url(url))
    password = url_password(url)
    if password:
        text = text.replace(password, "***")
    return " ".join(text.split())


def _duckdb_lock_holder(exc: BaseException) -> str | None:
    match = _DUCKDB_LOCK.search(str(exc))
    if match is None:
        return None
    return f"process {match['pid']} ({match['program']})"


@contextmanager
def state_session(url: str, *, lock_wait_seconds: float = 0.0) -> Iterator[Connection]:
    """A connection that is always closed: a DuckDB file stays open for no longer than one call.

    Another process holding the DuckDB file is retried for ``lock_wait_seconds``, because
    brief readers (a health check) hold it only for a moment.
    """
    retrying = Retrying(
        retry=retry_if_exception(lambda exc: _duckdb_lock_holder(exc) is not None),
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
def _transaction(conn: Connection) -> Iterator[None]:
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


def _now() -> datetime:
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
    frame = pl.from_arrow(conn.arrow(sql, params))
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.col(pl.Datetime(time_zone="*")).dt.convert_time_zone("UTC"))


# --- migrations --------------------------------------------------------------------------------


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


def _pending(conn: Connection) -> list[Migration]:
    applied: set[int] = set()
    if table_exists(conn, "reconcile_audit_schema_migrations"):
        applied = {int(row[0]) for row in conn.rows(read_sql("migrations/applied.sql"))}
    return [migration for migration in migrations(conn.dialect) if migration.version not in applied]


def _migrate(conn: Connection) -> tuple[int, ...]:
    # Read first: an up-to-date database needs no DDL rights, no lock and no CREATE ... IF NOT
    # EXISTS, which PostgreSQL checks against the schema's CREATE privilege even when it exists.
    if not _pending(conn):
        return ()
    with _transaction(conn):
        if conn.dialect == "postgres":
            conn.execute(read_sql("migrations/lock.postgres.sql"))
        conn.execute(read_sql("migrations/schema_migrations.sql"))
        pending = _pending(conn)  # again under the lock: a concurrent migrate may have finished
        for migration in pending:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(read_sql("migrations/record.sql"), (migration.version, migration.name, _now()))
    if pending:
        logger.info("state database: applied migrations %s", [m.version for m in pending])
    return tuple(m.version for m in pending)


def migrate(url: str) -> None:
    """Create or update the tool's tables. Idempotent; safe to run concurrently on PostgreSQL.

    Raises :class:`PersistError` with the redacted cause when the database cannot be migrated.
    """
    try:
        with state_session(url) as conn:
            _migrate(conn)
    except Exception as exc:
        raise PersistError(
            f"cannot migrate the state database {redact_url(url)}: {describe_error(exc, url)}"
        ) from exc


# --- runs and findings -------------------------------------------------------------------------


def _run_params(record: RunRecord, results: str | None) -> tuple[Any, ...]:
    return (
        record.run_key,
        record.tenant_id,
        as_utc(record.started_at),
        as_utc(record.finished_at) if record.finished_at is not None else None,
        record.status,
        record.total,
        record.match,
        record.mismatch,
        record.missing_on_chain,
        record.unlinked,
        record.error,
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
    record = RunRecord(run_key, tenant_id, started_at, None, "running", **asdict(ClassCounts.zero()))
    try:
        with state_session(url) as conn:
            _migrate(conn)
            with _transaction(conn):
                _replace_run(conn, record, None)
    except Exception as exc:
        raise PersistError(f"cannot record the start of run {run_key!r}: {describe_error(exc, url)}") from exc


def non_match_rows(findings: pl.DataFrame) -> pl.DataFrame:
    """The FINDINGS rows to store: every class but ``match``, numbered by frame position.

    NUL characters, which PostgreSQL text cannot hold, become U+FFFD on both dialects so that
    one hostile id cannot keep a whole run out of the database.
    """
    frame = conform(findings, FINDINGS, "persist").select(list(FINDINGS))
    strings = [name for name, dtype in FINDINGS.items() if dtype == pl.String]
    return (
        frame.with_row_index("finding_no", offset=1)
        .with_columns(
            pl.col("finding_no").cast(pl.Int32),
            pl.col(strings).str.replace_all("\x00", "\ufffd", literal=True),
        )
        .filter(pl.col("class").ne_missing("match"))
    )


def results_digest(rows: pl.DataFrame, *, cap: int = RESULTS_JSON_CAP) -> dict[str, Any]:
    """The capped JSON value for ``reconciliation_runs.results`` from :func:`non_match_rows`."""
    worst = (
        rows.sort(
            pl.col("drift_rank"),
            pl.col("class").replace_strict(
                _CLASS_SEVERITY, default=len(_CLASS_SEVERITY), return_dtype=pl.Int64
            ),
            pl.col("finding_no"),
            nulls_last=True,
        )
        .head(cap)
        .select(RESULTS_COLUMNS)
    )
    return {
        "cap": cap,
        "non_match": rows.height,
        "omitted": rows.height - worst.height,
        "order": RESULTS_ORDER,
        "rows": worst.to_dicts(),
    }


def _insert_findings(conn: Connection, run_id: int, rows: pl.DataFrame) -> None:
    if rows.is_empty():
        return
    # The oldest compat level gives large_string instead of string_view, which ADBC's
    # PostgreSQL COPY writer does not take.
    table = rows.to_arrow(compat_level=pl.CompatLevel.oldest())
    if conn.dialect == "postgres":
        with conn.raw.cursor() as cursor:
            cursor.adbc_ingest(_STAGING, table, mode="create", temporary=True)
        conn.execute(read_sql("persist/insert_findings.postgres.sql"), (run_id,))
        conn.execute(read_sql("persist/drop_staging.postgres.sql"))
        return
    conn.raw.register(_STAGING, table)
    try:
        conn.execute(read_sql("persist/insert_findings.duckdb.sql"), (run_id,))
    finally:
        conn.raw.unregister(_STAGING)


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
            _migrate(conn)
            with _transaction(conn):
                run_id = _replace_run(conn, record, json.dumps(digest, ensure_ascii=False, default=str))
                _insert_findings(conn, run_id, rows)
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
        status="failed",
        finished_at=record.finished_at or _now(),
        error_message=f"findings not stored: {cause}",
    )
    try:
        with state_session(url) as conn, _transaction(conn):
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


def state_database_missing(url: str) -> bool:
    """A DuckDB state file that does not exist yet: read it as "never ran", without creating it."""
    if dialect_of(url) != "duckdb":
        return False
    path = duckdb_path(url)
    return path != ":memory:" and not Path(path).exists()


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
    checked_at = as_utc(now) if now is not None else _now()
    health = Health("not_run", tenant_id, checked_at, stale_after_hours)
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
    if run["status"] == "failed":
        status: HealthStatus = "failed"
    elif checked_at - ended > timedelta(hours=stale_after_hours):
        status = "stale"
    else:
        status = "findings" if counts.non_match else "healthy"
    return Health(
        status=status,
        tenant_id=tenant_id,
        checked_at=checked_at,
        stale_after_hours=stale_after_hours,
        run_key=run["run_key"],
        run_status=run["status"],
        started_at=run["started_at"],
        finished_at=run["finished_at"],
        counts=counts,
        ledger_min=run["ledger_min"],
        ledger_max=run["ledger_max"],
        error=run["error_message"],
    )


# --- the lease ---------------------------------------------------------------------------------


def default_holder() -> str:
    """Who is asking, for the lease row and the message a second run prints."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


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
    acquired_at = _now()
    lease = Lease(tenant_id, holder, uuid.uuid4().hex, acquired_at, acquired_at + ttl)
    scope = _scope(tenant_id)
    with state_session(url, lock_wait_seconds=lock_wait_seconds) as conn:
        _migrate(conn)
        with _transaction(conn):
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
        with state_session(url, lock_wait_seconds=lock_wait_seconds) as conn, _transaction(conn):
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
        locker = _duckdb_lock_holder(exc)
        if locker is not None:
            raise LeaseHeldError(
                _tenant_label(tenant_id), f"{locker} has the state database {duckdb_path(url)} open"
            ) from exc
        raise PersistError(f"cannot take the run lease: {describe_error(exc, url)}") from exc
    try:
        yield lease
    finally:
        _release(url, lease, lock_wait_seconds)
