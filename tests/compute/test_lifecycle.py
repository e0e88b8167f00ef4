"""A finding's life across persisted runs on real PostgreSQL and DuckDB: ids, acknowledgements,
lapses, reopening, health and the exit code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile_audit.compute import persist
from reconcile_audit.compute.history import HistoryComparison, compare_with_history
from reconcile_audit.compute.lifecycle import AckAction, mark_states, with_identity
from reconcile_audit.compute.persist import RunRecord
from reconcile_audit.compute.persist import acks as acks_store
from reconcile_audit.compute.result import AuditResult
from reconcile_audit.compute.schemas import ACKNOWLEDGEMENTS, AuditStatus, HealthStatus, count_classes
from reconcile_audit.errors import ExitCode
from tests import factories

DAY0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def drift(invoice_id: str, chain: int, *, tenant: str = "acme") -> dict[str, object]:
    """A mismatch: the database says 1,250.00 USDC, the chain ``chain`` base units."""
    return factories.finding(
        invoice_id,
        "mismatch",
        tenant_id=tenant,
        reason_code="db_over_chain" if chain < 12_500_000_000 else "chain_over_db",
        reason=f"drift on {invoice_id}",
        chain_funded_base_units=str(chain),
        delta_base_units=str(12_500_000_000 - chain),
        drift_rank=1,
    )


def night(url: str, day: int, rows: list[dict[str, object]], *, hours: int = 0) -> HistoryComparison:
    """One nightly run of the all-tenants scope: history, then persist with the states."""
    findings = factories.frame(rows)
    started = DAY0 + timedelta(days=day, hours=hours)
    comparison = compare_with_history(
        AuditResult.of(findings),
        factories.settings(database_url=url),
        run_key=f"all:{day}:{hours}",
        now=started,
    )
    record = RunRecord(
        counts=count_classes(findings),
        run_key=f"all:{day}:{hours}",
        tenant_id=None,
        started_at=started,
        finished_at=started + timedelta(minutes=5),
        status="completed",
    )
    outcome = persist.persist_run(url, record, comparison.findings)
    assert outcome.ok, outcome.error
    return comparison


def states(comparison: HistoryComparison) -> dict[str, str | None]:
    return {row["invoice_id"]: row["finding_state"] for row in comparison.findings.iter_rows(named=True)}


def ack(url: str, target: str, at: datetime, *, until: datetime | None = None, **bulk: str) -> int:
    judged = acks_store.findings_with_acks(url, at, sla_days=7)
    chosen = acks_store.targets(judged, finding_or_invoice=target or None, **bulk)
    return acks_store.record(
        url, chosen, acks_store.Acknowledgement(AckAction.ACK, "ana", "known: bank delay", at, until)
    )


def test_finding_ids_name_the_invoice_and_the_kind_and_survive_a_sign_change() -> None:
    frame = factories.frame(
        [
            drift("INV-1", 12_000_000_000),
            drift("INV-2", 13_000_000_000),
            factories.finding("INV-3", "error", reason_code="read_error"),
            factories.finding("INV-4"),
            factories.finding(None, "error", reason_code="invalid_invoice_id"),  # type: ignore[arg-type]
        ]
    )
    ids = with_identity(frame).get_column("finding_id").to_list()
    assert ids == ["INV-1:mismatch/amount", "INV-2:mismatch/amount", "INV-3:error/read", None, None]


def test_ack_holds_while_the_evidence_stays_and_lapses_when_the_delta_moves(state_url: str) -> None:
    first = night(state_url, 0, [drift("INV-1", 12_000_000_000), drift("INV-2", 12_400_000_000)])
    assert states(first) == {"INV-1": "new", "INV-2": "new"}
    assert ack(state_url, "INV-1:mismatch/amount", DAY0 + timedelta(hours=3)) == 1
    assert ack(state_url, "INV-2", DAY0 + timedelta(hours=3)) == 1  # an invoice id names its findings

    same = night(state_url, 1, [drift("INV-1", 12_000_000_000), drift("INV-2", 12_300_000_000)])
    assert states(same) == {"INV-1": "acknowledged", "INV-2": "reopened"}
    rows = {row["invoice_id"]: row for row in same.findings.iter_rows(named=True)}
    assert (rows["INV-1"]["acked_by"], rows["INV-1"]["ack_reason"]) == ("ana", "known: bank delay")
    assert rows["INV-2"]["ack_lapsed"] == "evidence changed" and rows["INV-2"]["acked_by"] == "ana"
    assert same.state_counts()["unacknowledged"] == 1 and same.state_counts()["acknowledged"] == 1


def test_an_ack_until_a_date_reopens_the_finding_after_it(state_url: str) -> None:
    night(state_url, 0, [drift("INV-1", 12_000_000_000)])
    ack(state_url, "INV-1", DAY0 + timedelta(hours=1), until=DAY0 + timedelta(days=2))
    assert states(night(state_url, 1, [drift("INV-1", 12_000_000_000)])) == {"INV-1": "acknowledged"}
    after = night(state_url, 2, [drift("INV-1", 12_000_000_000)], hours=1)
    assert states(after) == {"INV-1": "reopened"}
    assert after.findings.row(0, named=True)["ack_lapsed"] == "until passed"


def test_a_resolved_finding_that_comes_back_reopens_under_the_same_id(state_url: str) -> None:
    night(state_url, 0, [drift("INV-1", 12_000_000_000)])
    ack(state_url, "INV-1", DAY0 + timedelta(hours=1))
    resolved = night(state_url, 1, [factories.finding("INV-1")])
    assert resolved.resolved.get_column("invoice_id").to_list() == ["INV-1"]
    back = night(state_url, 2, [drift("INV-1", 12_000_000_000)])
    row = back.findings.row(0, named=True)
    # The same evidence as acknowledged, but resolving closed the acknowledgement.
    assert (row["finding_id"], row["finding_state"], row["ack_lapsed"]) == (
        "INV-1:mismatch/amount",
        "reopened",
        "resolved since",
    )
    assert row["first_seen_at"] == DAY0 + timedelta(days=2)
    stored = persist_rows(state_url)
    assert stored.filter(pl.col("finding_id") == "INV-1:mismatch/amount").get_column(
        "finding_state"
    ).to_list() == [
        "new",
        "reopened",
    ]


def persist_rows(url: str) -> pl.DataFrame:
    from reconcile_audit.compute.persist.session import read_frame, state_session

    with state_session(url) as conn:
        return read_frame(
            conn,
            "SELECT f.finding_id, f.finding_state, r.started_at FROM reconciliation_findings AS f "
            "JOIN reconciliation_runs AS r ON r.id = f.run_id WHERE f.class <> 'match' ORDER BY r.started_at",
        )


def test_bulk_ack_by_tenant_and_reason_code_then_health_and_exit_code(state_url: str) -> None:
    night(
        state_url,
        0,
        [
            drift("INV-1", 12_000_000_000),
            drift("INV-2", 12_100_000_000),
            drift("INV-3", 13_000_000_000),
            drift("INV-4", 12_000_000_000, tenant="globex"),
        ],
    )
    checked = DAY0 + timedelta(hours=2)
    health = persist.latest_summary(state_url, None, now=checked)
    assert (health.status, health.unacknowledged, health.acknowledged) == (HealthStatus.FINDINGS, 4, 0)
    assert ack(state_url, "", checked, tenant_id="acme", reason_code="db_over_chain") == 2
    assert ack(state_url, "", checked, tenant_id="acme") == 3  # INV-3 too; the rows are append-only
    health = persist.latest_summary(state_url, None, now=checked + timedelta(minutes=1))
    assert (health.status, health.unacknowledged, health.acknowledged) == (HealthStatus.FINDINGS, 1, 3)
    ack(state_url, "INV-4", checked)
    health = persist.latest_summary(state_url, None, now=checked + timedelta(minutes=2))
    assert (health.status, health.unacknowledged, health.acknowledged, health.overdue) == (
        HealthStatus.HEALTHY,
        0,
        4,
        0,
    )
    assert health.counts is not None and health.counts.mismatch == 4  # the money still differs
    assert ExitCode.for_health(health.status) == ExitCode.CLEAN
    assert ExitCode.for_status(AuditStatus.FINDINGS, needs_a_person=False) == ExitCode.CLEAN
    assert ExitCode.for_status(AuditStatus.FINDINGS, needs_a_person=True) == ExitCode.FINDINGS
    # A week and more later, an unacknowledged finding is overdue.
    acks_store.record(
        state_url,
        acks_store.targets(
            acks_store.findings_with_acks(state_url, checked, sla_days=7), finding_or_invoice="INV-4"
        ),
        acks_store.Acknowledgement(
            AckAction.UNACK, "ana", "not ours after all", checked + timedelta(minutes=3)
        ),
    )
    late = persist.latest_summary(
        state_url, None, now=DAY0 + timedelta(days=8, hours=3), stale_after_hours=1e6
    )
    assert (late.status, late.unacknowledged, late.overdue) == (HealthStatus.FINDINGS, 1, 1)
    assert len(acks_store.acknowledgements(state_url, late.checked_at)) == 7


def test_the_acknowledgements_table_is_append_only_on_postgresql(pg_url: str) -> None:
    night(pg_url, 0, [drift("INV-1", 12_000_000_000)])
    ack(pg_url, "INV-1", DAY0 + timedelta(hours=1))
    from reconcile_audit.compute.persist.session import state_session

    with state_session(pg_url) as conn, pytest.raises(Exception, match="append-only"):
        conn.execute("DELETE FROM reconciliation_acknowledgements")


def test_an_ack_needs_a_reason_and_a_future_until() -> None:
    with pytest.raises(ValueError, match="reason"):
        acks_store.Acknowledgement(AckAction.ACK, "ana", "  ", DAY0)
    with pytest.raises(ValueError, match="passed"):
        acks_store.Acknowledgement(AckAction.ACK, "ana", "why", DAY0, DAY0 - timedelta(days=1))


_STATE_FACTS = st.tuples(
    st.sampled_from(["match", "mismatch", "error"]),  # class now
    st.booleans(),  # open in the previous run under the same id
    st.booleans(),  # open in an earlier run
    st.sampled_from([None, "same", "changed", "expired", "unack"]),  # the newest acknowledgement
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_STATE_FACTS, min_size=1, max_size=12))
def test_every_finding_of_a_run_is_in_exactly_one_state(
    facts: list[tuple[str, bool, bool, str | None]],
) -> None:
    now = DAY0 + timedelta(days=10)
    rows, previous, earlier, acks = [], [], [], []
    for n, (cls, in_previous, seen_before, acked) in enumerate(facts):
        invoice = f"INV-{n}"
        rows.append(factories.finding(invoice, cls, reason_code="read_error" if cls == "error" else cls))
        row_id = with_identity(factories.frame([rows[-1]])).row(0, named=True)
        if cls == "match":
            continue
        if in_previous:
            previous.append(row_id["finding_id"])
        if seen_before or in_previous:
            earlier.append(row_id["finding_id"])
        if acked is not None:
            acks.append(
                {
                    "id": n,
                    "finding_id": row_id["finding_id"],
                    "invoice_id": invoice,
                    "tenant_id": "acme",
                    "action": "unack" if acked == "unack" else "ack",
                    "evidence": None
                    if acked == "unack"
                    else (row_id["evidence"] if acked != "changed" else "{}"),
                    "acked_by": "ana",
                    "acked_at": now - timedelta(days=1),
                    "reason": "why",
                    "acked_until": now - timedelta(hours=1) if acked == "expired" else None,
                }
            )
    findings = factories.frame(rows)
    marked = mark_states(
        findings,
        streaks=pl.DataFrame(
            {"finding_id": previous, "first_seen_at": [DAY0] * len(previous)},
            schema={"finding_id": pl.String, "first_seen_at": pl.Datetime("us", "UTC")},
        ),
        earlier_ids=pl.Series(earlier, dtype=pl.String),
        acks=pl.DataFrame(acks, schema=ACKNOWLEDGEMENTS),
        now=now,
    )
    for (cls, _, _, acked), row in zip(facts, marked.iter_rows(named=True), strict=True):
        if cls == "match":
            assert row["finding_state"] is None and row["overdue"] is None
            continue
        assert row["finding_state"] in {"new", "persisting", "acknowledged", "reopened"}
        assert (row["finding_state"] == "acknowledged") == (
            acked == "same" and row["first_seen_at"] <= now - timedelta(days=1)
        )
        assert row["age_bucket"] is not None
    counts = HistoryComparison(marked, pl.DataFrame(), pl.DataFrame(), None, None, 0).state_counts()
    open_rows = sum(1 for cls, *_ in facts if cls != "match")
    assert counts["new"] + counts["persisting"] + counts["acknowledged"] + counts["reopened"] == open_rows
    assert counts["unacknowledged"] == open_rows - counts["acknowledged"]


def test_a_finding_s_life_lists_every_run_and_acknowledgement(state_url: str) -> None:
    from reconcile_audit.compute.history import finding_life

    night(state_url, 0, [drift("INV-1", 12_000_000_000)])
    ack(state_url, "INV-1", DAY0 + timedelta(hours=1))
    night(state_url, 1, [drift("INV-1", 12_000_000_000)])
    night(state_url, 2, [drift("INV-1", 11_000_000_000)])
    life = finding_life(factories.settings(database_url=state_url), "INV-1:mismatch/amount")
    assert life.runs.get_column("finding_state").to_list() == ["new", "acknowledged", "reopened"]
    assert life.runs.get_column("evidence").n_unique() == 2  # the delta moved on the third night
    assert life.acknowledgements.get_column("acked_by").to_list() == ["ana"]


def test_a_finding_s_life_from_an_unreachable_state_database_is_empty_with_a_warning() -> None:
    from reconcile_audit.compute.history import finding_life

    gone = "postgresql://postgres@127.0.0.1:5432/reconcile_no_such_database"
    life = finding_life(factories.settings(database_url=gone), "INV-1:mismatch/amount")
    assert life.runs.is_empty() and life.warning and "cannot read the life" in life.warning


def test_a_finding_without_an_id_keeps_the_health_at_findings(state_url: str) -> None:
    nameless = factories.finding(None, "error", reason_code="invalid_invoice_id")  # type: ignore[arg-type]
    night(state_url, 0, [drift("INV-1", 12_000_000_000), nameless])
    ack(state_url, "INV-1", DAY0 + timedelta(hours=1))
    health = persist.latest_summary(state_url, None, now=DAY0 + timedelta(hours=2))
    assert (health.status, health.acknowledged, health.unacknowledged) == (HealthStatus.FINDINGS, 1, 1)


def test_age_counts_from_the_start_of_the_finding_s_own_streak_not_the_invoice_s(state_url: str) -> None:
    error = factories.finding("INV-1", "error", reason_code="read_error", reason="not read")
    for day in range(3):
        night(state_url, day, [error])
    night(state_url, 3, [drift("INV-1", 12_000_000_000)])  # the same invoice, another finding
    tonight = night(state_url, 4, [drift("INV-1", 12_000_000_000)], hours=1)
    row = tonight.findings.row(0, named=True)
    assert (row["finding_state"], row["first_seen_at"], row["age_days"]) == (
        "persisting",
        DAY0 + timedelta(days=3),
        1,
    )
    assert not row["overdue"]
