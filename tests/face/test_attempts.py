"""A rerun never erases a completed run: attempts, not overwrites (real runner, kernel, databases).

Each test runs `reconcile-audit run` against a source database of either dialect and the
emulator, then makes a later attempt of the same run key fail or vanish, and checks what the
state database, the health check and the mismatch counter say afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from reconcile_audit.compute import persist
from reconcile_audit.compute.db import connect
from reconcile_audit.emulator.faults import FaultPlan
from reconcile_audit.emulator.server import Emulator
from reconcile_audit.face import demo
from reconcile_audit.face.cli import app

RUN_KEY = "acme:nightly"


@pytest.fixture
def source(database_url: str, dataset: demo.DemoData) -> str:
    demo.write_source_database(database_url, dataset)
    return database_url


def run(source: str, rpc_url: str, dataset: demo.DemoData, out: Path, **extra: str) -> int:
    env = {
        "DATABASE_URL": source,
        "RECONCILE_STATE_DATABASE_URL": "",
        "SOROBAN_RPC_URL": rpc_url,
        "ESCROW_ADDR_BY_INVOICE": dataset.escrow_addr_by_invoice,
        "RECONCILE_TENANT_ID": "",
        "ALERT_EMAIL_TO": "",
        "PUSHGATEWAY_URL": "",
        **extra,
    }
    args = ["run", "--run-key", RUN_KEY, "--output-dir", str(out), "--no-deliver"]
    return CliRunner().invoke(app, args, env=env, catch_exceptions=False).exit_code


def rows(url: str, sql: str) -> list[tuple]:
    with connect(url) as conn:
        return conn.rows(sql)


def test_a_failed_rerun_keeps_the_completed_result_its_findings_and_the_counter(
    source: str, emulator: Emulator, dataset: demo.DemoData, tmp_path: Path
) -> None:
    assert run(source, emulator.url, dataset, tmp_path / "first") == 1
    result_before = rows(source, "SELECT status, total, mismatch FROM reconciliation_runs")
    findings_before = rows(source, "SELECT count(*) FROM reconciliation_findings")
    counter_before = persist.cumulative_mismatches(source, None)
    assert result_before[0][0] == "completed" and result_before[0][2] > 0 and findings_before[0][0] > 0

    # The same night again, with the RPC gone: the attempt fails (exit 2) ... (no retries: six
    # backoffs against a closed port only made the test 20 s slower)
    second = tmp_path / "second"
    assert run(source, "http://127.0.0.1:1", dataset, second, RECONCILE_RPC_MAX_RETRIES="0") == 2

    # ... and the stored result, its findings and the monotonic counter are as they were.
    assert rows(source, "SELECT status, total, mismatch FROM reconciliation_runs") == result_before
    assert rows(source, "SELECT count(*) FROM reconciliation_findings") == findings_before
    assert persist.cumulative_mismatches(source, None) == counter_before
    assert [
        status for (status,) in rows(source, "SELECT status FROM reconciliation_attempts ORDER BY id")
    ] == [
        "completed",
        "failed",
    ]
    health = persist.latest_summary(source, None)
    assert health.status == "failed"
    assert health.latest is not None and health.latest.status == "failed"
    assert health.last_completed is not None and health.last_completed.run_key == RUN_KEY
    assert health.last_completed.counts.total == result_before[0][1]


def test_an_attempt_that_never_ended_is_abandoned_by_the_next_run(
    source: str, emulator: Emulator, dataset: demo.DemoData, tmp_path: Path
) -> None:
    # What a kill -9 leaves: an attempt recorded as started, never ended (its lease is gone).
    persist.start_run(source, RUN_KEY, None, datetime.now(UTC), attempt="killed-attempt")
    assert run(source, emulator.url, dataset, tmp_path / "next") == 1
    attempts = dict(rows(source, "SELECT run_id, status FROM reconciliation_attempts"))
    assert attempts.pop("killed-attempt") == "abandoned"
    assert list(attempts.values()) == ["completed"]
    assert persist.latest_summary(source, None).status == "findings"


def test_an_rpc_outage_after_preflight_is_incomplete_never_a_result(
    source: str, dataset: demo.DemoData, tmp_path: Path
) -> None:
    # getNetwork and getHealth answer (preflight passes); every getLedgerEntries fails.
    with Emulator(dataset.ledger_state(0), FaultPlan(rate=1.0, kinds=("http_503",))) as down:
        code = run(source, down.url, dataset, tmp_path / "out", RECONCILE_RPC_MAX_RETRIES="0")
    assert code == 2
    assert rows(source, "SELECT status FROM reconciliation_attempts") == [("incomplete",)]
    assert persist.latest_summary(source, None).status == "incomplete"
    assert persist.latest_summary(source, None).last_completed is None

    (folder,) = (tmp_path / "out").iterdir()
    summary = (folder / "summary.json").read_text(encoding="utf-8")
    assert '"status": "incomplete"' in summary
    metrics = (folder / "metrics.prom").read_text(encoding="utf-8")
    assert 'escrow_reconciliation_last_run_success{tenant="all"} 0.0' in metrics
    assert "last_success_timestamp" not in metrics
    assert "Escrow reconciliation: INCOMPLETE" in (folder / "report.html").read_text(encoding="utf-8")
    results = pl.read_parquet(folder / "results.parquet")
    read = results.filter(pl.col("contract_id").is_not_null() & (pl.col("reason_code") == "read_error"))
    assert read.height > 0 and read["reason"].str.contains("the RPC was unavailable").all()
    assert not results["reason"].str.contains("RECONCILE_TOKEN_DECIMALS").any()


def test_an_unknown_tenant_exits_2_naming_it_and_the_known_ones(
    source: str, emulator: Emulator, dataset: demo.DemoData, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": source,
        "SOROBAN_RPC_URL": emulator.url,
        "ESCROW_ADDR_BY_INVOICE": dataset.escrow_addr_by_invoice,
        "ALERT_EMAIL_TO": "",
        "PUSHGATEWAY_URL": "",
    }
    args = ["run", "--tenant", "ACME", "--output-dir", str(tmp_path), "--no-deliver"]
    result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
    assert result.exit_code == 2
    assert "tenant 'ACME' has no invoices" in result.output and "'acme'" in result.output
    health = persist.latest_summary(source, "ACME")
    assert health.status == "failed" and "ACME" in (health.error or "")
