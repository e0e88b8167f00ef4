"""History against persisted runs on real PostgreSQL and DuckDB files: new, persisting, resolved, trend."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from reconcile_audit.compute import persist
from reconcile_audit.compute.history import TREND_RUNS, HistoryComparison, compare_with_history
from reconcile_audit.compute.lifecycle import age_bucket
from reconcile_audit.compute.persist import RunRecord
from reconcile_audit.compute.result import AuditResult
from reconcile_audit.compute.schemas import (
    HISTORY_FINDINGS,
    RESOLVED_FINDINGS,
    TREND,
    ClassCounts,
    count_classes,
)
from reconcile_audit.compute.settings import Settings
from tests import factories

DAY0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
NOW = DAY0 + timedelta(days=4, hours=3)  # the current run, a few hours into day 4


def frame(classes: dict[str | None, str], tenant: str | None = "t1") -> pl.DataFrame:
    """One finding per invoice of ``classes``, reasons naming class and invoice."""
    return factories.frame(
        [
            factories.finding(
                invoice_id, cls, tenant_id=tenant, reason_code=f"{cls}_code", reason=f"{cls} for {invoice_id}"
            )
            for invoice_id, cls in classes.items()
        ]
    )


def persisted(
    url: str,
    run_key: str,
    started_at: datetime,
    classes: dict[str | None, str],
    *,
    tenant: str | None = "t1",
    status: str = "completed",
) -> None:
    findings = frame(classes, tenant)
    record = RunRecord(
        counts=count_classes(findings),
        run_key=run_key,
        tenant_id=tenant,
        started_at=started_at,
        finished_at=started_at + timedelta(minutes=10),
        status=status,
    )
    outcome = persist.persist_run(url, record, findings)
    assert outcome.ok, outcome.error


def settings_for(url: str, tenant: str | None = "t1") -> Settings:
    return factories.settings(database_url=url, tenant_id=tenant)


def by_invoice(findings: pl.DataFrame) -> dict[str | None, dict[str, Any]]:
    return {row["invoice_id"]: row for row in findings.iter_rows(named=True)}


@pytest.mark.parametrize("spooled", [False, True], ids=["held", "spooled"])
def test_new_persisting_and_resolved_across_persisted_runs(
    state_url: str, spooled: bool, tmp_path: Path
) -> None:
    """Spooled (issue 14), the plain matches are on disk: D is still resolved as a match, X as
    no longer extracted, and every row comes back with its state."""
    day = [DAY0 + timedelta(days=n) for n in range(4)]
    persisted(
        state_url, "r0", day[0], {"A": "mismatch", "P": "error", "B": "error", "H": "match", "G": "unlinked"}
    )
    persisted(
        state_url, "r1", day[1], {"A": "mismatch", "P": "match", "B": "error", "H": "match", "G": "unlinked"}
    )
    persisted(state_url, "r2", day[2], {"A": "error", "P": "error", "B": "match", "H": "mismatch"})
    # Not history: a failed run, another tenant, the all-tenants scope, and the current key itself.
    failed_at = day[2] + timedelta(hours=12)
    persisted(state_url, "failed", failed_at, {"A": "match", "P": "match", "H": "match"}, status="failed")
    persisted(state_url, "other", day[3], {"A": "match", "B": "error"}, tenant="t2")
    persisted(state_url, "all", day[3], {"A": "match", "B": "error"}, tenant=None)
    persisted(state_url, "current", day[3] - timedelta(hours=1), {"A": "match", "B": "error"})
    persisted(
        state_url,
        "r3",
        day[3],
        {
            "A": "mismatch",
            "P": "missing_on_chain",
            "B": "match",
            "H": "mismatch",
            "D": "missing_on_chain",
            "X": "error",
        },
    )
    persisted(state_url, "future", NOW + timedelta(hours=1), {"A": "match"})

    current = frame(
        {
            "A": "mismatch",  # mismatch r0, r1, error r2, mismatch r3: this finding persists since r3
            "P": "error",  # error r0, match r1, error r2, missing_on_chain r3: reopened (another finding in r3)
            "B": "error",  # error r0, r1, match in r2, r3: the same finding came back, reopened
            "H": "mismatch",  # match r0, r1, non-match r2, r3: persisting since r2
            "G": "unlinked",  # non-match r0, r1, not extracted since: reopened
            "D": "match",  # non-match in r3: resolved as match
            "E": "error",  # never seen: new
            "M": "match",  # never a finding: no state
            None: "error",  # no id to follow: new
        }  # X (error in r3) is no longer extracted: resolved
    )
    result = AuditResult.of(current)
    if spooled:
        held, spool = factories.spooled(current, tmp_path / "spool", part_rows=4)
        result = AuditResult.of(held, spool=spool)
        assert result.counts == AuditResult.of(current).counts and result.findings.height == 7
    history = compare_with_history(result, settings_for(state_url), run_key="current", now=NOW)

    assert history.warning is None
    assert history.findings.schema == HISTORY_FINDINGS
    every = pl.concat(result.spool.every_row(history.findings)) if result.spool else history.findings
    assert every.schema == HISTORY_FINDINGS
    assert every["invoice_id"].to_list() == current["invoice_id"].to_list()
    rows = by_invoice(every)
    expected = {
        "A": ("persisting", day[3], 1),
        "P": ("reopened", NOW, 0),
        "B": ("reopened", NOW, 0),
        "H": ("persisting", day[2], 2),
        "G": ("reopened", NOW, 0),
        "E": ("new", NOW, 0),
        None: ("new", NOW, 0),
        "D": (None, None, None),
        "M": (None, None, None),
    }
    assert {k: (r["finding_state"], r["first_seen_at"], r["age_days"]) for k, r in rows.items()} == expected

    assert history.resolved.schema == RESOLVED_FINDINGS
    resolved = {row["invoice_id"]: row for row in history.resolved.iter_rows(named=True)}
    assert set(resolved) == {"D", "X"}
    assert (resolved["D"]["resolved_as"], resolved["D"]["class"], resolved["D"]["first_seen_at"]) == (
        "match",
        "missing_on_chain",
        day[3],
    )
    assert resolved["X"]["resolved_as"] == "not_extracted" and resolved["X"]["reason"] == "error for X"

    assert history.previous_run_key == "r3"
    assert history.previous_counts == ClassCounts(
        total=6, match=1, mismatch=2, missing_on_chain=2, unlinked=0, error=1
    )
    assert history.trend.schema == TREND
    assert history.trend["run_key"].to_list() == ["r0", "r1", "r2", "r3", "current"]
    assert history.trend["current"].to_list() == [False] * 4 + [True]
    last = history.trend.row(-1, named=True)
    assert (last["total"], last["match"], last["error"], last["mismatch"], last["unlinked"]) == (
        9,
        2,
        4,
        2,
        1,
    )
    assert history.earlier_runs == 4


def test_trend_keeps_the_last_thirty_runs_oldest_first(state_url: str) -> None:
    for n in range(TREND_RUNS + 5):
        persisted(
            state_url, f"run-{n:02d}", DAY0 - timedelta(days=40 - n), {"A": "mismatch"} if n % 2 else {}
        )
    current = frame({"A": "match"})
    history = compare_with_history(AuditResult.of(current), settings_for(state_url), run_key="now", now=NOW)
    assert history.trend.height == TREND_RUNS
    assert history.trend["run_key"].to_list() == [f"run-{n:02d}" for n in range(6, TREND_RUNS + 5)] + ["now"]
    assert history.trend["started_at"].is_sorted()
    assert history.previous_run_key == f"run-{TREND_RUNS + 4:02d}"
    assert history.resolved["invoice_id"].to_list() == []  # the previous run (even n) had no findings
    assert history.earlier_runs == TREND_RUNS - 1


def test_an_empty_state_database_gives_an_empty_history(
    state_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    current = frame({"A": "mismatch", "B": "match"})
    with caplog.at_level(logging.WARNING, logger="reconcile_audit.compute.history"):
        history = compare_with_history(
            AuditResult.of(current), settings_for(state_url), run_key="first", now=NOW
        )
    assert history.warning is not None and "no earlier runs" in history.warning
    assert any("no earlier runs" in r.getMessage() for r in caplog.records)
    assert history.findings["finding_state"].to_list() == ["new", None]
    assert history.findings["age_days"].to_list() == [0, None]
    assert history.resolved.is_empty() and history.resolved.schema == RESOLVED_FINDINGS
    assert history.trend["run_key"].to_list() == ["first"] and history.previous_counts is None
    if state_url.startswith("duckdb://"):
        assert not Path(state_url.removeprefix("duckdb://")).exists()  # reading never creates it


def test_an_unreadable_state_database_never_raises_over_findings(caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql://auditor:s3cr3t-pw@127.0.0.1:1/nowhere"
    current = frame({"A": "mismatch"})
    with caplog.at_level(logging.WARNING, logger="reconcile_audit.compute.history"):
        history = compare_with_history(AuditResult.of(current), settings_for(url), run_key="k", now=NOW)
    assert history.warning is not None and "history unavailable" in history.warning
    assert "s3cr3t-pw" not in history.warning
    assert caplog.records and all("s3cr3t-pw" not in r.getMessage() for r in caplog.records)
    assert history.findings["finding_state"].to_list() == ["new"]


def test_naive_now_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone"):
        compare_with_history(
            AuditResult.of(frame({})),
            settings_for(f"duckdb://{tmp_path / 's.duckdb'}"),
            run_key="k",
            now=datetime(2026, 1, 1),
        )


def test_findings_by_age_counts_open_findings_into_every_bucket_and_state() -> None:
    ages = pl.DataFrame({"age_days": [None, 0, 1, 2, 7, 8, 30, 31, 400]}, schema={"age_days": pl.Int64})
    states = [
        "match" if age is None else ("acknowledged" if age == 400 else "new") for age in ages["age_days"]
    ]
    findings = ages.with_columns(
        age_bucket(pl.col("age_days")).alias("age_bucket"),
        pl.Series("finding_state", [None if state == "match" else state for state in states]),
    )
    comparison = HistoryComparison(findings, pl.DataFrame(), pl.DataFrame(), None, None, 0)
    by_age = comparison.findings_by_age()
    assert len(by_age) == 4 * 4  # every bucket and open state, zeros included
    assert {key: n for key, n in by_age.items() if n} == {
        ("0-1", "new"): 2,
        ("2-7", "new"): 2,
        ("8-30", "new"): 2,
        ("over-30", "new"): 1,
        ("over-30", "acknowledged"): 1,
    }
    none = HistoryComparison(findings.clear(), pl.DataFrame(), pl.DataFrame(), None, None, 0)
    assert set(none.findings_by_age().values()) == {0}
