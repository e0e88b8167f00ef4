"""History: each finding measured against the earlier runs of the same tenant scope.

Reads the state database that :mod:`reconcile_audit.compute.persist` writes, with two queries over the
runs and the (invoice, run)-indexed findings table, then joins them with the current frame in
polars; nothing is asked per invoice. Only completed runs count as history: a failed run's
findings are not a reliable picture of the ledger.

Each non-match row gets its stable finding id and a state (:mod:`reconcile_audit.compute.lifecycle`):
``persisting`` when the previous completed run had the same finding id open, and then
``first_seen_at`` is the start of that finding id's unbroken streak of runs;
``reopened`` when it was open in an earlier run and came back, or its acknowledgement lapsed;
``acknowledged`` while an acknowledgement holds; ``new`` otherwise. Invoices that were non-match
in the previous run and are now a match or no longer extracted are ``resolved``. Invoices are
matched by ``invoice_id`` (unique in the source); a row without one is always new.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final

import polars as pl

from reconcile_audit.compute.db import read_sql
from reconcile_audit.compute.lifecycle import (
    AGE_BUCKETS,
    OPEN_STATES,
    mark_states,
    state_counts,
    streak_starts,
    with_identity,
)
from reconcile_audit.compute.persist.acks import read_acknowledgements
from reconcile_audit.compute.persist.session import (
    as_utc,
    describe_error,
    read_frame,
    state_database_missing,
    state_session,
    table_exists,
)
from reconcile_audit.compute.result import AuditResult
from reconcile_audit.compute.schemas import (
    ACKNOWLEDGEMENTS,
    CLASSES,
    HISTORY_FINDINGS,
    LIFECYCLE,
    RESOLVED_FINDINGS,
    TREND,
    ClassCounts,
    FindingClass,
    conform,
    filled_at,
)
from reconcile_audit.compute.settings import Settings
from reconcile_audit.compute.sharding import in_shard

logger = logging.getLogger(__name__)

TREND_RUNS: Final = 30
"""Runs in the trend, the current one included."""


@dataclass(frozen=True)
class HistoryComparison:
    """The current findings against earlier runs.

    ``findings``: :data:`~reconcile_audit.compute.schemas.HISTORY_FINDINGS` (FINDINGS plus the
    lifecycle columns: finding id, evidence, state, age, acknowledgement), rows in the input's order.
    ``resolved``: :data:`~reconcile_audit.compute.schemas.RESOLVED_FINDINGS`. ``trend``:
    :data:`~reconcile_audit.compute.schemas.TREND`, at most :data:`TREND_RUNS` runs, oldest first, the
    current run last. ``previous_counts``: the previous completed run's counts, or ``None``.
    ``warning``: why the history is empty when the state database could not be read.
    """

    findings: pl.DataFrame
    resolved: pl.DataFrame
    trend: pl.DataFrame
    previous_counts: ClassCounts | None
    previous_run_key: str | None
    earlier_runs: int  # earlier completed runs in the trend
    warning: str | None = None

    def for_tenant(self, tenant_id: str) -> HistoryComparison:
        """The comparison narrowed to one tenant's findings; the trend and the previous counts
        are the whole scope's, so they are left out."""
        return replace(
            self,
            findings=self.findings.filter(pl.col("tenant_id") == tenant_id),
            resolved=self.resolved.filter(pl.col("tenant_id") == tenant_id),
            trend=self.trend.clear(),
            previous_counts=None,
        )

    def findings_by_age(self) -> dict[tuple[str, str], int]:
        """Open (non-match) findings per (ageing bucket, state), every pair present."""
        grouped = (
            self.findings.filter(pl.col("finding_state").is_not_null())
            .group_by("age_bucket", "finding_state")
            .len()
        )
        counts = {(row[0], row[1]): int(row[2]) for row in grouped.iter_rows()}
        return {
            (name, state.value): counts.get((name, state.value), 0)
            for name, _, _ in AGE_BUCKETS
            for state in OPEN_STATES
        }

    def state_counts(self) -> dict[str, int]:
        """Open findings per state, ``unacknowledged`` and ``overdue`` (:func:`~reconcile_audit.compute.lifecycle.state_counts`)."""
        return state_counts(self.findings)


_PREVIOUS_FINDINGS: Final = pl.Schema(
    {
        "invoice_id": pl.String,
        "tenant_id": pl.String,
        "contract_id": pl.String,
        "class": pl.String,
        "reason_code": pl.String,
        "reason": pl.String,
        "explanation": pl.String,
        "first_seen_at": pl.Datetime("us", "UTC"),
    }
)
_PREVIOUS_RUNS: Final = pl.Schema(
    {"run_key": pl.String, "started_at": pl.Datetime("us", "UTC"), "total": pl.Int64}
    | {name: pl.Int64 for name in CLASSES}
)


_APPEARANCES: Final = pl.Schema(
    {
        "invoice_id": pl.String,
        "class": pl.String,
        "reason_code": pl.String,
        "recency": pl.Int64,
        "started_at": pl.Datetime("us", "UTC"),
        # The previous run's rows only (recency 1); null on older ones.
        "tenant_id": pl.String,
        "contract_id": pl.String,
        "reason": pl.String,
        "explanation": pl.String,
    }
)
_EARLIER_FINDINGS: Final = pl.Schema(
    {
        "invoice_id": pl.String,
        "class": pl.String,
        "reason_code": pl.String,
        "last_seen_at": pl.Datetime("us", "UTC"),
    }
)


@dataclass(frozen=True)
class _Stored:
    """What the state database says about the scope before this run."""

    runs: pl.DataFrame  # _PREVIOUS_RUNS, newest first
    appearances: pl.DataFrame  # _APPEARANCES: every earlier finding of the previous run's invoices
    earlier: pl.DataFrame  # _EARLIER_FINDINGS: every finding of an earlier run
    acks: pl.DataFrame  # ACKNOWLEDGEMENTS given before now

    @property
    def previous(self) -> pl.DataFrame:
        """_PREVIOUS_FINDINGS: the previous run's findings, each with the start of its invoice's
        streak. An id twice in one run (the source should prevent it) reports the smallest values."""
        latest = (
            self.appearances.filter(pl.col("recency") == 1)
            .group_by("invoice_id")
            .agg(
                pl.col(name).min()
                for name in _PREVIOUS_FINDINGS
                if name not in ("invoice_id", "first_seen_at")
            )
        )
        starts = streak_starts(self.appearances, key="invoice_id")
        return conform(latest.join(starts, on="invoice_id", how="left"), _PREVIOUS_FINDINGS, "history").sort(
            "invoice_id"
        )

    @classmethod
    def empty(cls) -> _Stored:
        return cls(
            pl.DataFrame(schema=_PREVIOUS_RUNS),
            pl.DataFrame(schema=_APPEARANCES),
            pl.DataFrame(schema=_EARLIER_FINDINGS),
            pl.DataFrame(schema=ACKNOWLEDGEMENTS),
        )


def _read_history(url: str, tenant_id: str | None, run_key: str, now: datetime) -> tuple[_Stored, str | None]:
    if state_database_missing(url):
        return _Stored.empty(), "no earlier runs: the state database does not exist yet"
    params = (tenant_id, run_key, now)
    with state_session(url) as conn:
        if not (table_exists(conn, "reconciliation_runs") and table_exists(conn, "reconciliation_findings")):
            return _Stored.empty(), "no earlier runs: the state database has no reconciliation tables yet"
        runs = read_frame(conn, read_sql("history/previous_runs.sql"), (*params, TREND_RUNS - 1))
        appearances = read_frame(conn, read_sql("history/finding_streaks.sql"), params)
        earlier = read_frame(conn, read_sql("history/earlier_findings.sql"), params)
        acks = read_acknowledgements(conn, now)
    return _Stored(
        conform(runs, _PREVIOUS_RUNS, "history"),
        conform(appearances, _APPEARANCES, "history"),
        conform(earlier, _EARLIER_FINDINGS, "history"),
        acks,
    ), None


def _marked(current: pl.DataFrame, stored: _Stored, now: datetime, sla_days: int) -> pl.DataFrame:
    return mark_states(
        current,
        streaks=streak_starts(stored.appearances),
        earlier_ids=with_identity(stored.earlier).get_column("finding_id").drop_nulls(),
        acks=stored.acks,
        now=now,
        sla_days=sla_days,
    )


def _with_lifecycle(findings: pl.DataFrame, marked_open: pl.DataFrame) -> pl.DataFrame:
    """``findings`` with the LIFECYCLE columns of ``marked_open``, its open rows marked (``_position``:
    their positions), null for every match, as a match has no life. The marking joins only the
    open rows: joined whole, each join copied every finding (0.5 GB at 1M invoices)."""
    rows = marked_open.get_column("_position")
    return findings.with_columns(
        filled_at(findings, rows, marked_open.get_column(name).cast(dtype))
        for name, dtype in LIFECYCLE.items()
    )


def _with_previous_explanation(marked: pl.DataFrame, previous: pl.DataFrame) -> pl.DataFrame:
    """The explanation the previous run stored for a finding still open tonight (not for a new
    one): "explained yesterday by ...; still unreconciled in the database"."""
    earlier = previous.select("invoice_id", pl.col("explanation").alias("previous_explanation")).unique(
        "invoice_id", keep="first"
    )
    return marked.join(earlier, on="invoice_id", how="left", maintain_order="left").with_columns(
        pl.when(pl.col("finding_state").is_not_null() & (pl.col("finding_state") != "new"))
        .then(pl.col("previous_explanation"))
        .alias("previous_explanation")
    )


def _resolved(result: AuditResult, previous: pl.DataFrame) -> pl.DataFrame:
    """Previous findings that are no longer findings. A merge of shards holds no plain match, so
    it cannot tell a match from an invoice no longer extracted: ``no_longer_found`` says so."""
    gone = "not_extracted" if result.knows_every_class else "no_longer_found"
    # Only the invoices of the previous findings are looked up: the distinct ids of every row
    # tonight took 0.2 GB at 1M invoices.
    now_class = result.classes_of(previous.get_column("invoice_id")).rename({"class": "_now_class"})
    return (
        previous.join(
            now_class.unique("invoice_id", keep="first"), on="invoice_id", how="left", maintain_order="left"
        )
        .filter(pl.col("_now_class").is_null() | (pl.col("_now_class") == "match"))
        .with_columns(
            pl.when(pl.col("_now_class").is_null())
            .then(pl.lit(gone))
            .otherwise(pl.lit("match"))
            .alias("resolved_as")
        )
        .select(list(RESOLVED_FINDINGS))
    )


def _trend(runs: pl.DataFrame, counts: ClassCounts, run_key: str, now: datetime) -> pl.DataFrame:
    this_run = pl.DataFrame(
        [{"run_key": run_key, "started_at": now, **counts, "current": True}],
        schema=TREND,
    )
    earlier = runs.reverse().with_columns(pl.lit(False).alias("current"))
    return pl.concat([conform(earlier, TREND, "history"), this_run]).tail(TREND_RUNS)


def compare_with_history(
    result: AuditResult, settings: Settings, *, run_key: str, now: datetime
) -> HistoryComparison:
    """Mark each finding new or persisting, list the resolved ones and the trend of the last runs.

    Reads ``settings.state_url()`` for ``settings.tenant_id``'s scope, excluding
    ``run_key`` itself and runs that started at or after ``now``. An unreadable or empty state
    database gives an empty history (every non-match row new) and a logged warning; it never
    raises over the findings.
    """
    now = as_utc(now)
    current = result.findings
    url = settings.state_url()
    try:
        stored, warning = _read_history(url, settings.tenant_id, run_key, now)
    except Exception as exc:
        stored = _Stored.empty()
        warning = f"history unavailable, every finding is marked new: {describe_error(exc, url)}"
    # A shard is compared with the earlier whole runs' findings of its own invoices only: the
    # others are not "resolved", they are in another shard.
    stored = replace(
        stored,
        appearances=in_shard(stored.appearances, settings.shard),
    )
    previous, runs = stored.previous, stored.runs
    if warning is not None:
        logger.warning("history for run %r: %s", run_key, warning)
    previous_run = runs.row(0, named=True) if runs.height else None
    open_rows = current.with_row_index("_position").filter(pl.col("class").ne_missing(FindingClass.MATCH))
    marked_open = _with_previous_explanation(
        _marked(open_rows, stored, now, settings.finding_sla_days), previous
    )
    marked = conform(_with_lifecycle(current, marked_open), HISTORY_FINDINGS, "history")
    return HistoryComparison(
        findings=marked,
        resolved=_resolved(result, previous),
        trend=_trend(runs, result.counts, run_key, now),
        previous_counts=(ClassCounts.of(previous_run) if previous_run else None),
        previous_run_key=previous_run["run_key"] if previous_run else None,
        earlier_runs=runs.height,
        warning=warning,
    )


_LIFE_RUNS: Final = pl.Schema(
    {
        "run_key": pl.String,
        "scope_tenant_id": pl.String,
        "started_at": pl.Datetime("us", "UTC"),
        "invoice_id": pl.String,
        "finding_id": pl.String,
        "class": pl.String,
        "reason_code": pl.String,
        "reason": pl.String,
        "evidence": pl.String,
        "finding_state": pl.String,
        "first_seen_at": pl.Datetime("us", "UTC"),
    }
)


@dataclass(frozen=True)
class FindingLife:
    """One finding's whole life: every completed run it appeared in, with its evidence and state
    that night (``runs``, oldest first), and every acknowledgement row about it."""

    finding_id: str
    runs: pl.DataFrame
    acknowledgements: pl.DataFrame
    warning: str | None = None  # why the life could not be read


def finding_life(settings: Settings, finding_id: str) -> FindingLife:
    """Read one finding's life from the state database (the notebook's drill-down cell). An
    unreadable state database gives an empty life with a ``warning``: an analyst's look never
    fails the run whose record the notebook is."""
    invoice_id = finding_id.rsplit(":", 1)[0] if ":" in finding_id else finding_id
    url = settings.state_url()
    empty = FindingLife(finding_id, pl.DataFrame(schema=_LIFE_RUNS), pl.DataFrame(schema=ACKNOWLEDGEMENTS))
    if state_database_missing(url):
        return empty
    try:
        with state_session(url) as conn:
            if not table_exists(conn, "reconciliation_findings"):
                return empty
            runs = conform(
                read_frame(conn, read_sql("history/finding_life.sql"), (invoice_id,)), _LIFE_RUNS, "history"
            )
            acks = read_acknowledgements(conn, datetime.now(UTC))
    except Exception as exc:
        warning = f"cannot read the life of {finding_id!r}: {describe_error(exc, url)}"
        logger.warning("%s", warning)
        return replace(empty, warning=warning)
    # Rows stored before finding ids existed get theirs from their class and reason code.
    computed = with_identity(runs.select("invoice_id", "class", "reason_code")).get_column("finding_id")
    runs = runs.with_columns(pl.coalesce(pl.col("finding_id"), computed).alias("finding_id"))
    matches = pl.col("finding_id") == finding_id
    if ":" not in finding_id:  # an invoice id: all its findings
        matches = pl.lit(True)
    return FindingLife(
        finding_id,
        runs.filter(matches),
        acks.filter(
            pl.col("finding_id").is_in(runs.filter(matches).get_column("finding_id").unique().implode())
        ),
    )
