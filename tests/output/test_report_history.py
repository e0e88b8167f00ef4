"""The report and the metrics fed by the real history and persist stages (embedded DuckDB state)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconcile_audit.compute import history, persist
from reconcile_audit.compute.result import AuditResult
from reconcile_audit.compute.schemas import count_classes
from reconcile_audit.compute.settings import Settings
from reconcile_audit.output.metrics import RunMetricsInput, build_registry
from reconcile_audit.output.report import render_report
from tests import factories
from tests.factories import STARTED, facts, finding, frame, mismatch


def record(run_key: str, findings: pl.DataFrame, started_offset_days: int) -> persist.RunRecord:
    counts = count_classes(findings)
    started = STARTED - timedelta(days=started_offset_days)
    return persist.RunRecord(
        run_key=run_key,
        tenant_id=None,
        started_at=started,
        finished_at=started + timedelta(minutes=1),
        status="completed",
        counts=counts,
    )


def settings_for(tmp_path: Path) -> Settings:
    url = f"duckdb:///{tmp_path / 'state.duckdb'}"
    return factories.settings(database_url=url, state_database_url=url)


def counter(registry_text: str) -> float:
    for family in text_string_to_metric_families(registry_text):
        for sample in family.samples:
            if sample.name == "escrow_reconciliation_mismatches_total":
                return sample.value
    raise AssertionError("no mismatch counter")


def test_report_from_real_history_and_a_monotonic_counter(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    url = settings.state_database_url.reveal()
    persist.migrate(url)

    yesterday = frame(
        [
            finding("OK-1"),
            mismatch("STAYS-1", 125_000, 12_499_900_000, drift_rank=2),
            mismatch("FIXED-1", 200_000, 10_000_000_000, drift_rank=1),
        ]
    )
    assert persist.persist_run(url, record("night-1", yesterday, 1), yesterday).ok
    after_first = persist.cumulative_mismatches(url, None)

    today = frame(
        [
            finding("OK-1"),
            mismatch("STAYS-1", 125_000, 12_499_900_000, drift_rank=1),
            finding("FIXED-1"),
            finding("NEW-1", "unlinked", reason="No escrow address is known", contract_id=None),
        ]
    )
    comparison = history.compare_with_history(AuditResult.of(today), settings, run_key="night-2", now=STARTED)
    report = render_report(AuditResult.of(today), comparison, facts(run_id="night-2"))

    text = report.text
    new = text[text.index("New findings") : text.index("Persisting, not acknowledged")]
    persisting = text[text.index("Persisting, not acknowledged") : text.index("Resolved since")]
    resolved = text[text.index("Resolved since") : text.index("FINDINGS, WORST FIRST")]
    assert "NEW-1" in new and "STAYS-1" not in new
    assert "STAYS-1 [Mismatch] for 1 day, first seen 2026-11-23" in persisting
    assert "FIXED-1 [was Mismatch, now matches]" in resolved
    assert "Mismatch                     1   change: \u22121" in text
    trend = text[text.index("TREND OF THE LAST 2 RUNS") : text.index("Audit record")]
    assert trend.count("(this run)") == 1 and "findings 2: 2 mismatch" in trend

    assert persist.persist_run(url, record("night-2", today, 0), today).ok
    after_second = persist.cumulative_mismatches(url, None)
    assert after_second == after_first + 1 == 3
    texts = [
        generate_latest(
            build_registry(
                RunMetricsInput(
                    success=True, finished_at_epoch=1.0, duration_seconds=1.0, cumulative_mismatches=n
                )
            )
        ).decode()
        for n in (after_first, after_second)
    ]
    assert counter(texts[0]) < counter(texts[1])
