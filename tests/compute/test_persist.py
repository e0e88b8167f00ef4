"""Persist on real PostgreSQL and on DuckDB files: migrations, idempotent runs, failures, lease, health."""

from __future__ import annotations

import json
import logging
import secrets
import socket
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from reconcile_audit.compute import persist
from reconcile_audit.compute.db import connect, read_sql
from reconcile_audit.compute.persist import RunRecord
from reconcile_audit.compute.persist.migrate import migrations
from reconcile_audit.compute.schemas import FINDINGS, ClassCounts, count_classes
from reconcile_audit.errors import LeaseHeldError, PersistError, StateLockedError
from tests import factories
from tests.factories import frame

I128_MIN = str(-(2**127))
I128_MAX = str(2**127 - 1)
T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def finding(invoice_id: str | None, cls: str, **values: Any) -> dict[str, Any]:
    """A row of tenant t1 with a 12.50 total; a mismatch is 0.00001 over on the database side."""
    defaults: dict[str, Any] = {"tenant_id": "t1", "db_total_funded": "12.50"}
    if cls == "mismatch":
        defaults.update(
            db_funded_base_units="125000000", chain_funded_base_units="124999900", delta_base_units="100"
        )
    return factories.finding(invoice_id, cls, **{**defaults, **values})


def record(findings: pl.DataFrame, run_key: str = "run-1", **fields: Any) -> RunRecord:
    values: dict[str, Any] = {
        "run_key": run_key,
        "tenant_id": "t1",
        "started_at": T0,
        "finished_at": T0 + timedelta(minutes=5),
        "status": "completed",
        "ledger_min": 100,
        "ledger_max": 120,
    }
    values.update(fields)
    return RunRecord(counts=count_classes(findings), **values)


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        return conn.rows(sql, params)


MIXED = frame(
    [
        finding("INV-1", "match"),
        finding("INV-2", "mismatch", drift_rank=2),
        finding("INV-3", "error", db_funded_base_units=None),
        finding("INV-4", "missing_on_chain"),
        finding("INV-5", "unlinked", contract_id=None),
        finding("INV-6", "mismatch", drift_rank=1, delta_base_units="5000"),
    ]
)


def test_migrate_twice_records_each_version_once(state_url: str) -> None:
    persist.migrate(state_url)
    persist.migrate(state_url)
    versions = query(
        state_url, "SELECT version, name FROM reconcile_audit_schema_migrations ORDER BY version"
    )
    assert versions == [
        (1, "initial"),
        (2, "attempts"),
        (3, "findings_invoice_index"),
        (4, "exact_db_total"),
        (5, "escrow_balances"),
        (6, "stranded"),
        (7, "shards"),
        (8, "acknowledgements"),
        (9, "explanations"),
    ]
    for table in (
        "reconciliation_runs",
        "reconciliation_findings",
        "reconciliation_leases",
        "reconciliation_attempts",
        "reconciliation_acknowledgements",
    ):
        assert query(state_url, f"SELECT count(*) FROM {table}") == [(0,)]


def test_concurrent_migrations_on_postgres_do_not_race(pg_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            persist.migrate(pg_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Each migration recorded once, however many migrators raced.
    assert query(pg_url, "SELECT count(*) FROM reconcile_audit_schema_migrations") == [
        (len(migrations("postgres")),)
    ]


def test_persist_writes_counts_digest_and_only_non_match_findings(state_url: str) -> None:
    outcome = persist.persist_run(state_url, record(MIXED), MIXED)
    assert outcome.ok and outcome.error is None
    assert outcome.findings_written == 5 and outcome.results_rows == 5
    runs = query(
        state_url,
        "SELECT run_key, tenant_id, status, total, match, mismatch, missing_on_chain, unlinked, error,"
        " ledger_min, ledger_max FROM reconciliation_runs",
    )
    assert runs == [("run-1", "t1", "completed", 6, 1, 2, 1, 1, 1, 100, 120)]
    stored = query(
        state_url,
        "SELECT finding_no, invoice_id, class, CAST(delta_base_units AS TEXT), flags, db_total_funded"
        " FROM reconciliation_findings ORDER BY finding_no",
    )
    assert [row[:3] for row in stored] == [
        (2, "INV-2", "mismatch"),
        (3, "INV-3", "error"),
        (4, "INV-4", "missing_on_chain"),
        (5, "INV-5", "unlinked"),
        (6, "INV-6", "mismatch"),
    ]
    assert stored[4][3] == "5000"
    assert Decimal(str(stored[0][5])) == Decimal("12.50")


def test_rerunning_a_run_key_replaces_the_run_and_its_findings(state_url: str) -> None:
    assert persist.persist_run(state_url, record(MIXED), MIXED).ok
    smaller = frame([finding("INV-1", "match"), finding("INV-9", "error")])
    persist.start_run(state_url, "run-1", "t1", T0 + timedelta(hours=1))
    # A new attempt starting leaves the key's completed result and its findings in place.
    assert query(state_url, "SELECT status, total FROM reconciliation_runs") == [("completed", 6)]
    assert query(state_url, "SELECT count(*) FROM reconciliation_findings") == [(5,)]
    outcome = persist.persist_run(state_url, record(smaller, started_at=T0 + timedelta(hours=1)), smaller)
    assert outcome.ok
    assert query(
        state_url, "SELECT count(*), max(total), max(error), max(mismatch) FROM reconciliation_runs"
    ) == [(1, 2, 1, 0)]
    assert query(state_url, "SELECT invoice_id FROM reconciliation_findings") == [("INV-9",)]


def test_amounts_at_the_i128_limits_stay_exact(state_url: str) -> None:
    delta = str(2**128 - 1)  # database at i128 max, chain at i128 min: 39 digits, beyond i128
    rows = frame(
        [
            finding(
                "INV-X",
                "mismatch",
                db_funded_base_units=I128_MAX,
                chain_funded_base_units=I128_MIN,
                delta_base_units=delta,
            )
        ]
    )
    assert persist.persist_run(state_url, record(rows), rows).ok
    stored = query(
        state_url,
        "SELECT CAST(db_funded_base_units AS TEXT), CAST(chain_funded_base_units AS TEXT),"
        " CAST(delta_base_units AS TEXT) FROM reconciliation_findings",
    )
    assert stored == [(I128_MAX, I128_MIN, delta)]


HOSTILE = (
    "'; DROP TABLE reconciliation_runs; --",
    'INV"); DELETE FROM reconciliation_findings; --',
    "請求書-😀-ü",
    "\u202eRTL\u202c",
    "$1 $2 %s {}",
    "x" * 5000,
)


def test_hostile_and_unicode_ids_are_stored_as_data(state_url: str) -> None:
    rows = frame(
        [
            finding(invoice_id, "error", tenant_id=invoice_id, reason=f"bad {invoice_id}")
            for invoice_id in HOSTILE
        ]
        + [finding("nul\x00byte", "error")]
    )
    outcome = persist.persist_run(state_url, record(rows, run_key=HOSTILE[0], tenant_id=HOSTILE[2]), rows)
    assert outcome.ok, outcome.error
    stored = query(state_url, "SELECT invoice_id, reason FROM reconciliation_findings ORDER BY finding_no")
    assert [row[0] for row in stored] == [*HOSTILE, "nul\ufffdbyte"]
    assert [row[1] for row in stored[: len(HOSTILE)]] == [f"bad {i}" for i in HOSTILE]
    assert query(state_url, "SELECT run_key, tenant_id FROM reconciliation_runs") == [
        (HOSTILE[0], HOSTILE[2])
    ]
    assert persist.latest_summary(state_url, HOSTILE[2], now=T0 + timedelta(hours=1)).run_key == HOSTILE[0]


def test_one_ten_kilobyte_invoice_id_does_not_keep_the_run_s_findings_out(state_url: str) -> None:
    huge = "INV-" + secrets.token_urlsafe(7_680)  # 10 KB that no compression shrinks below a page
    rows = frame([finding("INV-1", "mismatch"), finding(huge, "error", reason="invoice id too long")])
    outcome = persist.persist_run(state_url, record(rows), rows)
    assert outcome.ok, outcome.error
    assert outcome.findings_written == 2
    stored = query(state_url, "SELECT invoice_id FROM reconciliation_findings ORDER BY finding_no")
    assert stored == [("INV-1",), (huge,)]  # stored whole, never truncated


def test_results_json_is_capped_worst_first(state_url: str) -> None:
    count = persist.RESULTS_JSON_CAP + 250
    rows = frame(
        [finding("OK", "match")]
        + [finding(f"U-{i}", "unlinked") for i in range(200)]
        + [finding(f"M-{i}", "mismatch", drift_rank=count - 200 - i) for i in range(count - 200)]
    )
    outcome = persist.persist_run(state_url, record(rows), rows)
    assert outcome.ok and outcome.findings_written == count
    assert outcome.results_rows == persist.RESULTS_JSON_CAP
    (raw,) = query(state_url, "SELECT CAST(results AS TEXT) FROM reconciliation_runs")[0]
    digest = json.loads(raw)
    assert digest["cap"] == persist.RESULTS_JSON_CAP
    assert digest["non_match"] == count and digest["omitted"] == 250
    assert len(digest["rows"]) == persist.RESULTS_JSON_CAP
    assert digest["rows"][0]["invoice_id"] == f"M-{count - 201}"  # drift_rank 1 first
    assert {row["class"] for row in digest["rows"]} == {"mismatch"}  # unlinked ones are the omitted
    assert set(digest["rows"][0]) == set(persist.RESULTS_COLUMNS)


def test_dropped_findings_table_returns_not_ok_logs_and_marks_the_run_failed(
    state_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    persist.migrate(state_url)
    with connect(state_url) as conn:
        conn.execute("DROP TABLE reconciliation_findings")
        conn.commit()
    with caplog.at_level(logging.ERROR, logger="reconcile_audit.compute.persist"):
        outcome = persist.persist_run(state_url, record(MIXED), MIXED)
    assert not outcome.ok and outcome.marked_failed
    assert "reconciliation_findings" in (outcome.error or "")
    assert any(
        "run-1" in r.getMessage() and "reconciliation_findings" in r.getMessage() for r in caplog.records
    )
    health = persist.latest_summary(state_url, "t1", now=T0 + timedelta(hours=1))
    assert health.status == "failed" and "findings not stored" in (health.error or "")
    assert health.counts is not None and health.counts.mismatch == 2
    # The failed run keeps its mismatches in the monotonic counter.
    assert persist.cumulative_mismatches(state_url, "t1") == 2


def test_a_constraint_violation_rolls_back_the_whole_run(state_url: str) -> None:
    good = persist.persist_run(state_url, record(MIXED), MIXED)
    assert good.ok
    broken = frame([finding("INV-2", "mismatch"), finding("INV-7", "mismatch", delta_base_units="12.5")])
    outcome = persist.persist_run(state_url, record(broken), broken)
    assert not outcome.ok and outcome.marked_failed
    # The earlier findings of the key survive: the failed transaction changed nothing, and the
    # failure is an attempt of its own; it never replaces the key's completed result.
    assert query(state_url, "SELECT count(*) FROM reconciliation_findings") == [(5,)]
    assert query(state_url, "SELECT status, total FROM reconciliation_runs") == [("completed", 6)]
    assert query(state_url, "SELECT status, total FROM reconciliation_attempts ORDER BY id") == [
        ("completed", 6),
        ("failed", 2),
    ]


def test_a_frame_missing_columns_is_reported_not_raised(state_url: str) -> None:
    outcome = persist.persist_run(state_url, record(MIXED), MIXED.drop("reason"))
    assert not outcome.ok and "reason" in (outcome.error or "")


def test_unreachable_database_returns_not_ok_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql://auditor:pa55-w0rd-xyz@127.0.0.1:1/nowhere"
    with caplog.at_level(logging.ERROR, logger="reconcile_audit.compute.persist"):
        outcome = persist.persist_run(url, record(MIXED), MIXED)
    assert not outcome.ok and not outcome.marked_failed
    assert outcome.error and "pa55-w0rd-xyz" not in outcome.error
    assert caplog.records and all("pa55-w0rd-xyz" not in r.getMessage() for r in caplog.records)
    with pytest.raises(PersistError) as raised:
        persist.migrate(url)
    assert "pa55-w0rd-xyz" not in str(raised.value)


def test_run_record_refuses_inconsistent_counts_and_naive_times() -> None:
    with pytest.raises(ValueError, match="sum to total"):
        RunRecord(
            "k",
            None,
            T0,
            None,
            "completed",
            ClassCounts(total=3, match=1, mismatch=1, missing_on_chain=0, unlinked=0, error=0),
        )
    with pytest.raises(ValueError, match="timezone"):
        RunRecord("k", None, datetime(2026, 1, 1), None, "running", ClassCounts.zero())
    with pytest.raises(ValueError, match="status"):
        RunRecord("k", None, T0, None, "done", ClassCounts.zero())  # type: ignore[arg-type]


# --- health and the monotonic counter ------------------------------------------------------------


def test_health_states(state_url: str, tmp_path: Path) -> None:
    at = T0 + timedelta(hours=1)
    assert persist.latest_summary(state_url, "t1", now=at).status == "not_run"
    persist.start_run(state_url, "running-only", "t1", T0)
    assert persist.latest_summary(state_url, "t1", now=at).status == "not_run"

    clean = frame([finding("INV-1", "match")])
    assert persist.persist_run(state_url, record(clean, run_key="clean"), clean).ok
    health = persist.latest_summary(state_url, "t1", now=at)
    assert health.status == "healthy" and health.run_key == "clean"
    assert health.counts == ClassCounts(total=1, match=1, mismatch=0, missing_on_chain=0, unlinked=0, error=0)
    assert (health.ledger_min, health.ledger_max) == (100, 120)
    assert persist.latest_summary(state_url, "t1", now=T0 + timedelta(hours=26)).status == "stale"
    assert persist.latest_summary(state_url, "t1", stale_after_hours=0.5, now=at).status == "stale"
    # Other scopes are not this one's runs.
    assert persist.latest_summary(state_url, None, now=at).status == "not_run"
    assert persist.latest_summary(state_url, "t2", now=at).status == "not_run"

    later = T0 + timedelta(days=1)
    assert persist.persist_run(
        state_url, record(MIXED, run_key="findings", started_at=later, finished_at=later), MIXED
    ).ok
    health = persist.latest_summary(state_url, "t1", now=later + timedelta(hours=1))
    assert health.status == "findings" and health.counts is not None and health.counts.non_match == 5
    data = json.loads(health.to_json())
    assert data["status"] == "findings" and data["counts"]["non_match"] == 5 and data["counts"]["total"] == 6
    assert datetime.fromisoformat(data["finished_at"]) == later

    latest = later + timedelta(days=1)
    failed = RunRecord(
        "failed",
        "t1",
        latest,
        latest,
        "failed",
        ClassCounts.zero(),
        error_message="cell 'ledger' failed",
    )
    assert persist.persist_run(state_url, failed, frame([])).ok
    health = persist.latest_summary(state_url, "t1", now=latest + timedelta(hours=1))
    assert health.status == "failed" and health.error == "cell 'ledger' failed"


def test_health_of_a_missing_duckdb_file_does_not_create_it(tmp_path: Path) -> None:
    path = tmp_path / "never.duckdb"
    health = persist.latest_summary(f"duckdb://{path}")
    assert health.status == "not_run" and json.loads(health.to_json())["status"] == "not_run"
    assert not path.exists()


def test_cumulative_mismatches_sums_runs_of_the_scope_once(state_url: str) -> None:
    assert persist.cumulative_mismatches(state_url, "t1") == 0
    assert persist.persist_run(state_url, record(MIXED, run_key="a"), MIXED).ok
    assert persist.persist_run(state_url, record(MIXED, run_key="a"), MIXED).ok  # a re-run
    assert persist.persist_run(state_url, record(MIXED, run_key="b", tenant_id=None), MIXED).ok
    assert persist.persist_run(state_url, record(MIXED, run_key="c"), MIXED).ok
    persist.start_run(state_url, "d", "t1", T0)
    assert persist.cumulative_mismatches(state_url, "t1") == 4
    assert persist.cumulative_mismatches(state_url, None) == 2


# --- the lease --------------------------------------------------------------------------------


def test_a_held_lease_refuses_a_second_run_and_names_the_holder(state_url: str) -> None:
    with persist.run_lease(state_url, "t1", "nightly pid 42 on host-a") as lease:
        # Minutes, not hours: a holder that dies without releasing frees the scope soon.
        assert lease.expires_at - lease.acquired_at == timedelta(minutes=10)
        with pytest.raises(LeaseHeldError) as raised, persist.run_lease(state_url, "t1", "second"):
            pass
        message = str(raised.value)
        assert raised.value.exit_code == 3
        assert "nightly pid 42 on host-a since" in message and "'t1'" in message
        # Scopes are independent: another tenant, the all-tenants run, a tenant named "all".
        for other in ("t2", None, "all"):
            with persist.run_lease(state_url, other, "other"):
                pass
    with persist.run_lease(state_url, "t1", "second"):
        pass
    assert query(state_url, "SELECT count(*) FROM reconciliation_leases") == [(0,)]


def test_an_expired_lease_is_taken_over(state_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with ExitStack() as crashed:
        # A holder that never releases, with a lease that has already expired by the next call.
        crashed.enter_context(
            persist.run_lease(state_url, None, "crashed run", ttl=timedelta(microseconds=1), heartbeat=False)
        )
        with caplog.at_level(logging.WARNING, logger="reconcile_audit.compute.persist"):
            with persist.run_lease(state_url, None, "new run"):
                assert any("crashed run" in r.getMessage() for r in caplog.records)
                crashed.close()  # the old holder finishes late: it must not free the new lease
                with (
                    pytest.raises(LeaseHeldError, match="new run"),
                    persist.run_lease(state_url, None, "third"),
                ):
                    pass
        assert any("taken over" in r.getMessage() for r in caplog.records)


HOLD_LEASE = textwrap.dedent(
    """
    import sys
    from reconcile_audit.compute import persist
    with persist.run_lease(sys.argv[1], "t1", "other process"):
        print("held", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
    """
)


def test_the_lease_holds_across_processes(state_url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LEASE, state_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "held"
        # DuckDB: the child closed the file, so this process can open it and read the lease row.
        with (
            pytest.raises(LeaseHeldError, match="other process since"),
            persist.run_lease(state_url, "t1", "me"),
        ):
            pass
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "released"
    finally:
        child.wait(timeout=30)
    with persist.run_lease(state_url, "t1", "me"):
        pass


HOLD_FILE = textwrap.dedent(
    """
    import sys, duckdb
    connection = duckdb.connect(sys.argv[1])
    print("open", flush=True)
    sys.stdin.readline()
    """
)


def test_a_duckdb_file_open_in_another_process_is_a_file_lock_not_a_run(tmp_path: Path) -> None:
    path = tmp_path / "state.duckdb"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_FILE, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "open"
        with pytest.raises(StateLockedError) as raised:
            with persist.run_lease(f"duckdb://{path}", None, "me", lock_wait_seconds=0):
                pass
        assert f"process {child.pid}" in str(raised.value) and str(path) in str(raised.value)
        assert "file lock, not a run lease" in str(raised.value) and raised.value.exit_code == 3
        child.stdin.write("\n")
        child.stdin.flush()
    finally:
        child.wait(timeout=30)
    with persist.run_lease(f"duckdb://{path}", None, "me"):
        pass


@pytest.mark.slow
def test_one_hundred_thousand_findings_are_written_in_bulk(state_url: str) -> None:
    count = 100_000
    rows = frame([finding("OK", "match")]).vstack(
        pl.DataFrame(
            {
                **{name: None for name in FINDINGS},
                "invoice_id": [f"INV-{i:06d}" for i in range(count)],
                "class": "mismatch",
                "reason_code": "amount_differs",
                "reason": "DB 1,250.00 USDC vs chain 1,249.99 USDC (chain under by 0.01)",
                "delta_base_units": "100000",
                "drift_rank": range(1, count + 1),
                "flags": [["archived"]] * count,
            },
            schema=FINDINGS,
        )
    )
    for _ in range(2):  # the second time replaces the first
        outcome = persist.persist_run(state_url, record(rows), rows)
        assert outcome.ok and outcome.findings_written == count
    assert query(state_url, "SELECT count(*), count(DISTINCT invoice_id) FROM reconciliation_findings") == [
        (count, count)
    ]


def test_a_role_without_ddl_rights_persists_after_migration(pg_url: str) -> None:
    """Production runs as an application role; only `migrate` needs to create tables."""
    import uuid

    import adbc_driver_manager as adbc_errors

    role = f"reconcile_app_{uuid.uuid4().hex[:8]}"
    persist.migrate(pg_url)
    with connect(pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        admin.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    app_url = pg_url.replace("postgres@", f"{role}@", 1)
    try:
        assert persist.persist_run(app_url, record(MIXED), MIXED).ok
        with persist.run_lease(app_url, "t1", "app role"):
            pass
        assert persist.latest_summary(app_url, "t1", now=T0 + timedelta(hours=1)).status == "findings"
        # The role really cannot create: even the IF NOT EXISTS form of an existing table fails.
        with connect(app_url) as conn, pytest.raises(adbc_errors.Error, match="permission denied"):
            conn.execute(read_sql("migrations/schema_migrations.sql"))
    finally:
        with connect(pg_url, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


def test_a_read_only_role_is_told_how_to_point_at_a_writable_state_database(pg_url: str) -> None:
    role = f"reconcile_reader_{secrets.token_hex(4)}"
    with connect(pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    reader_url = pg_url.replace("postgres@", f"{role}@", 1)
    try:
        with pytest.raises(PersistError) as refused:
            persist.start_run(reader_url, "k", "t1", T0)
        message = str(refused.value)
        assert "permission denied" in message
        assert "RECONCILE_STATE_DATABASE_URL" in message and "reconcile-audit migrate" in message
    finally:
        with connect(pg_url, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


def test_the_heartbeat_keeps_a_live_holder_s_lease(state_url: str) -> None:
    with persist.run_lease(state_url, "t1", "beating", ttl=timedelta(seconds=1)):
        time.sleep(1.5)  # past the first expiry: the heartbeat (every 0.2 s) pushed it out
        with pytest.raises(LeaseHeldError, match="beating"), persist.run_lease(state_url, "t1", "second"):
            pass


def test_a_holder_whose_process_is_gone_is_taken_over(
    state_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    holder = f"{socket.gethostname()}:{int(gone.stdout)}:killed-run"
    with ExitStack() as killed:
        killed.enter_context(persist.run_lease(state_url, "t1", holder, heartbeat=False))  # live for minutes
        with caplog.at_level(logging.WARNING, logger="reconcile_audit.compute.persist"):
            with persist.run_lease(state_url, "t1", persist.holder_name("next-run")):
                pass
    assert any("killed-run" in r.getMessage() and "process is gone" in r.getMessage() for r in caplog.records)


def test_break_lease_frees_a_stuck_scope_and_says_whose_it_was(state_url: str) -> None:
    with ExitStack() as stuck:
        stuck.enter_context(persist.run_lease(state_url, "t1", "stuck holder", heartbeat=False))
        held = persist.break_lease(state_url, "t1")
        assert held is not None and held.startswith("stuck holder since ")
        assert persist.break_lease(state_url, "t1") is None
        with persist.run_lease(state_url, "t1", "next"):
            pass


def test_a_future_dated_run_does_not_hide_newer_ones(state_url: str) -> None:
    """Health follows the database's order of writes, not the clocks of the machines that ran."""
    skewed = T0 + timedelta(days=365)
    clean = frame([finding("INV-1", "match")])
    assert persist.persist_run(
        state_url, record(clean, run_key="skewed", started_at=skewed, finished_at=skewed), clean
    ).ok
    assert persist.persist_run(state_url, record(MIXED, run_key="later"), MIXED).ok
    health = persist.latest_summary(state_url, "t1", now=T0 + timedelta(hours=1))
    assert health.latest is not None and health.latest.run_key == "later"
    assert health.status == "findings"


def test_what_a_custodial_escrow_holds_is_stored_with_its_finding(state_url: str) -> None:
    findings = frame(
        [
            finding(
                "SHORT-1",
                "mismatch",
                reason_code="balance_short",
                chain_balance_base_units=I128_MIN,
                chain_distributed_base_units=I128_MAX,
                custodial=True,
            ),
            finding("PLAIN-1", "error", custodial=False),
        ]
    )
    assert persist.persist_run(state_url, record(findings), findings).ok
    stored = query(
        state_url,
        "SELECT invoice_id, CAST(chain_balance_base_units AS TEXT), CAST(chain_distributed_base_units AS TEXT),"
        " custodial FROM reconciliation_findings ORDER BY invoice_id",
    )
    assert stored == [("PLAIN-1", None, None, False), ("SHORT-1", I128_MIN, I128_MAX, True)]
