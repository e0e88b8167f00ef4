"""The explain stage: the database's own operations on PostgreSQL and DuckDB, the emulator's
events and transactions over real HTTP, and what it says of each finding."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from reconcile_audit.compute import db, explain
from reconcile_audit.compute.result import AuditResult
from reconcile_audit.emulator import Emulator, FaultPlan, LedgerState, random_account_id
from reconcile_audit.emulator.activity import ChainTransaction, close_time, escrow_transaction
from reconcile_audit.emulator.state import TESTNET
from reconcile_audit.face.demo import sourcedb
from tests.factories import CONTRACT, finding, frame, mismatch
from tests.factories import settings as make_settings

LATEST = 2_000_000
OLDEST = LATEST - 120_960 + 1
INVESTOR = random_account_id(__import__("random").Random(5))
UNIT = 10**7  # USDC base units per major unit


def _pk(invoice_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, invoice_id))


def _fund(
    ledger: int, amount: int, funded_after: int, *, successful: bool = True, contract: str = CONTRACT
) -> ChainTransaction:
    return escrow_transaction(
        "escrow_funded",
        contract_id=contract,
        invoice_id="INV_1",
        ledger=ledger,
        network_passphrase=TESTNET,
        function="fund",
        successful=successful,
        investor=INVESTOR,
        amount=amount,
        funded_amount=funded_after,
        status=1,
    )


def _unfund(ledger: int, amount: int, contract: str = CONTRACT) -> ChainTransaction:
    return escrow_transaction(
        "escrow_unfunded",
        contract_id=contract,
        invoice_id="INV_1",
        ledger=ledger,
        network_passphrase=TESTNET,
        investor=INVESTOR,
        amount=amount,
        remaining_contribution=0,
        new_funded_amount=0,
    )


def _source(url: str, invoices: Sequence[str], operations: Sequence[dict[str, Any]]) -> None:
    with db.connect(url) as conn:
        sourcedb.create_source_schema(conn)
        sourcedb.load_source_rows(
            conn,
            pl.DataFrame([{"id": _pk(i), "invoice_id": i, "status": "funded"} for i in invoices]),
            pl.DataFrame(
                {"invoice_id": [_pk(i) for i in invoices], "total_funded": ["1.00"] * len(invoices)}
            ),
            pl.DataFrame(
                [{**op, "invoice_id": _pk(op["invoice_id"]), "contract_id": CONTRACT} for op in operations],
                schema={
                    "invoice_id": pl.String,
                    "operation_type": pl.String,
                    "status": pl.String,
                    "completed_at": pl.Datetime("us", "UTC"),
                    "stellar_transaction_hash": pl.String,
                },
            ),
        )


def _drift(
    invoice_id: str, db_units: int, chain_units: int, synced: int | None, **values: Any
) -> dict[str, Any]:
    delta = (db_units - chain_units) * UNIT
    values.setdefault("drift_rank", 1)
    return mismatch(
        invoice_id,
        db_units * 100,
        chain_units * UNIT,
        reason_code="db_over_chain" if delta > 0 else "chain_over_db",
        db_ledger_sequence=synced,
        **values,
    )


def _explain(
    url: str,
    findings: list[dict[str, Any]],
    transactions: Sequence[ChainTransaction],
    plan: FaultPlan | None = None,
    **env: str,
) -> explain.Explained:
    state = LedgerState(latest_ledger=LATEST, escrows=(), transactions=tuple(transactions))
    with Emulator(state, plan) as emulator:
        settings = make_settings(
            {"RECONCILE_RPC_MAX_RETRIES": "0", **env}, database_url=url, rpc_url=emulator.url
        )
        return explain.explain_findings(frame(findings), settings)


def _one(explained: explain.Explained) -> tuple[str, str]:
    (row,) = explained.explanations.iter_rows(named=True)
    return row["explanation"], row["explain_outcome"]


@pytest.mark.parametrize(
    ("tx_status", "db_status", "says"),
    [
        (
            "SUCCESS",
            "failed",
            "landed at ledger 1,990,000 (2024-03-09 02:06 UTC), but the database marks it failed",
        ),
        ("SUCCESS", "pending", "but the database marks it pending"),
        ("SUCCESS", "processing", "but the database marks it processing"),
        ("SUCCESS", "cancelled", "but the database marks it cancelled"),
        ("SUCCESS", "completed", None),
        (
            "FAILED",
            "completed",
            "failed on chain at ledger 1,990,000 (2024-03-09 02:06 UTC), but the database marks it completed",
        ),
        ("FAILED", "failed", None),
        ("NOT_FOUND", "completed", "is not on chain, but the database marks it completed"),
        ("NOT_FOUND", "pending", None),
        ("OLD", "completed", "is older than the RPC keeps"),
    ],
)
def test_each_transaction_outcome_against_each_database_status(
    source_url: str, tx_status: str, db_status: str, says: str | None
) -> None:
    landed = _fund(1_990_000, 5 * UNIT, 105 * UNIT, successful=tx_status != "FAILED")
    on_chain = [landed] if tx_status in ("SUCCESS", "FAILED") else []
    tx_hash = landed.tx_hash if tx_status != "NOT_FOUND" else "cd" * 32
    completed = {
        "completed": datetime.fromtimestamp(close_time(1_990_000), UTC),
        "failed": datetime.fromtimestamp(close_time(1_990_000), UTC),
    }.get(db_status)
    if tx_status == "OLD":  # completed before the RPC's window: NOT_FOUND says nothing
        completed = datetime.fromtimestamp(close_time(OLDEST - 50_000), UTC)
    _source(
        source_url,
        ["INV_1"],
        [
            {
                "invoice_id": "INV_1",
                "operation_type": "fund",
                "status": db_status,
                "completed_at": completed,
                "stellar_transaction_hash": tx_hash,
            }
        ],
    )
    explained = _explain(source_url, [_drift("INV_1", 100, 105, synced=1_980_000)], on_chain)
    text, outcome = _one(explained)
    row = explained.events.filter(pl.col("source") == "transaction").row(0, named=True)
    assert row["tx_hash"] == tx_hash and row["db_status"] == db_status
    assert row["tx_status"] == ("NOT_FOUND" if tx_status == "OLD" else tx_status)
    if says is None:
        assert "database marks" not in text and "older than" not in text
        assert row["note"] == "agrees with the database"
    else:
        assert says in text
        assert says in row["note"] and row["note"] in text
    if says is not None and tx_status != "OLD":  # a contradiction explains the drift by itself
        assert outcome == "explained"
    if tx_status == "SUCCESS" and db_status != "completed":
        assert "fund of 5.00 USDC in tx" in text


@pytest.mark.parametrize(
    ("moves", "covers", "outcome"),
    [
        ([5], "explains 5.00 USDC of 5.00 USDC", "explained"),
        ([2, 1], "explain 3.00 USDC of 5.00 USDC", "partial"),
        ([-4], "explains 0.00 USDC of 5.00 USDC", "unexplained"),
        ([7], "explains 5.00 USDC of 5.00 USDC", "explained"),  # more than the gap: the gap is covered
    ],
)
def test_events_cover_all_part_or_none_of_the_gap(
    source_url: str, moves: list[int], covers: str, outcome: str
) -> None:
    # The chain holds 5.00 more than the database: what moved funded_amount since it synced?
    _source(source_url, ["INV_1"], [])
    transactions = [
        _fund(1_990_000 + n, m * UNIT, 0) if m > 0 else _unfund(1_990_000 + n, -m * UNIT)
        for n, m in enumerate(moves)
    ]
    before_sync = _fund(1_970_000, 50 * UNIT, 0)  # before the database's sync: already counted
    explained = _explain(
        source_url, [_drift("INV_1", 100, 105, synced=1_980_000)], [before_sync, *transactions]
    )
    text, found = _one(explained)
    assert covers in text
    assert found == outcome
    assert explained.events.filter(pl.col("source") == "event").get_column("ledger").to_list() == [
        t.ledger for t in transactions
    ]


def test_the_last_funded_event_gives_the_expected_funded_amount(source_url: str) -> None:
    _source(source_url, ["INV_1"], [])
    explained = _explain(
        source_url, [_drift("INV_1", 100, 105, synced=1_980_000)], [_fund(1_990_000, 5 * UNIT, 105 * UNIT)]
    )
    text, _ = _one(explained)
    assert "set funded_amount to 105.00 USDC, as the chain holds" in text


def test_nothing_since_the_sync_is_unexplained_and_says_so(source_url: str) -> None:
    _source(source_url, ["INV_1"], [])
    explained = _explain(
        source_url, [_drift("INV_1", 140, 100, synced=1_990_000)], [_fund(1_950_000, UNIT, 0)]
    )
    text, outcome = _one(explained)
    assert outcome == "unexplained"
    assert text == (
        "unexplained: no escrow event since the database's last sync (ledger 1,990,000), and no database "
        "operation disagrees with the chain"
    )


def test_a_sync_older_than_the_window_points_to_the_history_source(source_url: str) -> None:
    _source(source_url, ["INV_1"], [])
    explained = _explain(source_url, [_drift("INV_1", 140, 100, synced=OLDEST - 10)], [])
    text, _ = _one(explained)
    assert f"before the RPC's oldest ledger {OLDEST:,}" in text
    assert "history_contract_events" in text and CONTRACT in text


def test_faults_on_both_methods_make_it_unavailable_never_a_failure_nor_another_class(
    source_url: str,
) -> None:
    landed = _fund(1_990_000, 5 * UNIT, 105 * UNIT)
    _source(
        source_url,
        ["INV_1"],
        [
            {
                "invoice_id": "INV_1",
                "operation_type": "fund",
                "status": "failed",
                "completed_at": None,
                "stellar_transaction_hash": landed.tx_hash,
            }
        ],
    )
    findings = [_drift("INV_1", 100, 105, synced=1_980_000), finding("INV_2")]
    plan = FaultPlan(unsupported=("getEvents", "getTransaction"))
    explained = _explain(source_url, findings, [landed], plan)
    text, outcome = _one(explained)
    assert outcome == "unavailable"
    assert text.startswith("unavailable; ") and "method not found: getEvents" in text
    assert "could not be checked" in text and "getTransaction" in text
    result = AuditResult.of(frame(findings))
    with_text = result.with_explanations(explained)
    assert with_text.counts == result.counts
    assert with_text.findings.get_column("class").to_list() == ["mismatch", "match"]
    assert with_text.findings.get_column("explanation").to_list() == [text, None]
    plan = FaultPlan(rate=1.0, kinds=("rpc_32603",), methods=("getEvents", "getTransaction", "getHealth"))
    text, outcome = _one(_explain(source_url, findings, [landed], plan))
    assert outcome == "unavailable" and "rpc_32603" in text


def test_a_source_without_transaction_hashes_still_reads_the_events(database_url: str) -> None:
    with db.connect(database_url) as conn:
        conn.execute("CREATE TABLE escrow_operations (id BIGINT, invoice_id TEXT, status TEXT)")
        conn.commit()
    explained = _explain(
        database_url, [_drift("INV_1", 100, 105, synced=1_980_000)], [_fund(1_990_000, 5 * UNIT, 105 * UNIT)]
    )
    text, outcome = _one(explained)
    assert outcome == "explained" and "explains 5.00 USDC of 5.00 USDC" in text
    assert "the database's operations were not read" in text
    assert any("operations were not read" in note for note in explained.notes)


def test_at_most_explain_max_worst_first_and_only_movable_reasons(source_url: str) -> None:
    _source(source_url, ["INV_1", "INV_2", "INV_3"], [])
    findings = [
        _drift("INV_1", 100, 105, synced=1_980_000, drift_rank=2),
        _drift("INV_2", 100, 900, synced=1_980_000, drift_rank=1),
        finding("INV_3", "mismatch", reason_code="token_mismatch"),  # a set-up fault: no movement explains it
        finding("INV_4"),
    ]
    explained = _explain(source_url, findings, [], RECONCILE_EXPLAIN_MAX="1")
    assert explained.explanations.get_column("invoice_id").to_list() == ["INV_2"]
    assert (explained.considered, explained.skipped) == (2, 1)
    assert "1 more beyond RECONCILE_EXPLAIN_MAX" in explained.summary_line()
    none = _explain(source_url, findings, [], RECONCILE_EXPLAIN_MAX="0")
    assert none.explanations.is_empty() and none.skipped == 2


def test_many_findings_cost_one_scan_and_one_lookup_each(source_url: str) -> None:
    invoices = [f"INV_{n}" for n in range(40)]
    transactions = [_fund(1_990_000 + n, UNIT, 0, contract=_contract(n)) for n in range(40)]
    operations = [
        {
            "invoice_id": i,
            "operation_type": "fund",
            "status": "failed",
            "completed_at": None,
            "stellar_transaction_hash": t.tx_hash,
        }
        for i, t in zip(invoices, transactions, strict=True)
    ]
    _source(source_url, invoices, operations)
    findings = [
        _drift(i, 100, 101, synced=1_980_000, contract_id=_contract(n)) for n, i in enumerate(invoices)
    ]
    explained = _explain(source_url, findings, transactions)
    assert explained.counts()["explained"] == 40
    # getHealth, then 2 pages of getEvents (the window from ledger 1,980,001 is 20,000 ledgers), and 40 lookups.
    assert explained.rpc_requests == 2 + 40


def _contract(n: int) -> str:
    from stellar_sdk import StrKey

    return StrKey.encode_contract(n.to_bytes(32, "big"))


def test_explanations_are_stored_and_the_next_run_quotes_them(state_url: str) -> None:
    from reconcile_audit.compute import history, persist
    from reconcile_audit.compute.persist import RunRecord
    from reconcile_audit.compute.schemas import count_classes

    settings = make_settings(database_url=state_url)
    said = explain.Explained(
        pl.DataFrame(
            [{"invoice_id": "INV_1", "explanation": "fund in tx ab… landed", "explain_outcome": "explained"}],
            schema=explain.EXPLANATIONS,
        ),
        pl.DataFrame(schema=explain.DRIFT_EVENTS),
    )
    night = datetime(2026, 12, 1, 2, tzinfo=UTC)
    for day, result in enumerate(
        (
            AuditResult.of(frame([_drift("INV_1", 100, 105, synced=1)])).with_explanations(said),
            AuditResult.of(frame([_drift("INV_1", 100, 105, synced=1)])),  # not explained tonight
        )
    ):
        started = night + timedelta(days=day)
        comparison = history.compare_with_history(result, settings, run_key=f"all:{day}", now=started)
        record = RunRecord(
            counts=count_classes(result.findings),
            run_key=f"all:{day}",
            tenant_id=None,
            started_at=started,
            finished_at=started + timedelta(minutes=5),
            status="completed",
        )
        assert persist.persist_run(state_url, record, comparison.findings).ok
    (row,) = comparison.findings.iter_rows(named=True)
    assert row["finding_state"] == "persisting"
    assert row["previous_explanation"] == "fund in tx ab… landed"
    assert row["explanation"] is None


def test_a_malformed_transaction_hash_in_the_database_is_said_not_looked_up(source_url: str) -> None:
    _source(
        source_url,
        ["INV_1"],
        [
            {
                "invoice_id": "INV_1",
                "operation_type": "fund\x1b[2J",
                "status": "failed",
                "completed_at": None,
                "stellar_transaction_hash": "not-a-hash",
            }
        ],
    )
    explained = _explain(source_url, [_drift("INV_1", 100, 105, synced=1_980_000)], [])
    text, outcome = _one(explained)
    assert "stellar_transaction_hash 'not-a-hash' on its fund\\x1b[2J is not a transaction hash" in text
    # The scan only (2 pages: ledger 1,980,001 to the latest): nothing was looked up.
    assert outcome == "unexplained" and explained.rpc_requests == 2


def test_without_a_synced_ledger_the_summary_update_time_bounds_the_events(source_url: str) -> None:
    # The summary row was updated when ledger 1,990,000 closed; only the later fund explains.
    with db.connect(source_url) as conn:
        sourcedb.create_source_schema(conn)
        updated = datetime.fromtimestamp(close_time(1_990_000), UTC)
        sourcedb.load_source_rows(
            conn,
            pl.DataFrame([{"id": _pk("INV_1"), "invoice_id": "INV_1", "status": "funded"}]),
            pl.DataFrame(
                {"invoice_id": [_pk("INV_1")], "total_funded": ["100.00"], "last_updated_at": [updated]}
            ),
            pl.DataFrame(schema={"invoice_id": pl.String, "operation_type": pl.String, "status": pl.String}),
        )
    before, after = _fund(1_989_000, 3 * UNIT, 0), _fund(1_995_000, 5 * UNIT, 105 * UNIT)
    explained = _explain(source_url, [_drift("INV_1", 100, 105, synced=None)], [before, after])
    text, outcome = _one(explained)
    assert outcome == "explained"
    assert text.startswith(
        "1 escrow event since the database's last update (2024-03-09 02:06 UTC) explains 5.00 USDC"
    )
    old = datetime.fromtimestamp(close_time(OLDEST - 100), UTC)
    with db.connect(source_url) as conn:
        conn.execute("UPDATE escrow_summaries SET last_updated_at = $1", [old])
        conn.commit()
    text, _ = _one(_explain(source_url, [_drift("INV_1", 100, 105, synced=None)], [after]))
    assert (
        f"the database last updated it at {old:%Y-%m-%d %H:%M} UTC, before the RPC's oldest ledger {OLDEST:,}"
        in text
    )
