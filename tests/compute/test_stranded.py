"""Stranded escrows: invoices outside the audit whose escrow still holds or owes money, found on
real PostgreSQL and DuckDB and read from the emulator in the same sweep as the audited ones."""

from __future__ import annotations

import random
from decimal import Decimal

import polars as pl

from reconcile_audit.compute import classify, extract, history, persist, resolve
from reconcile_audit.compute.db import connect
from reconcile_audit.compute.ledger import read_ledger
from reconcile_audit.compute.persist import RunRecord
from reconcile_audit.compute.schemas import OUT_OF_SCOPE, STRANDED, RunStatus
from reconcile_audit.compute.stranded import Stranded, find_stranded
from reconcile_audit.emulator import (
    Emulator,
    EscrowSpec,
    LedgerState,
    TokenSpec,
    random_account_id,
    random_contract_id,
)
from tests import factories
from tests.compute.test_extract import T0, Source

rng = random.Random(7)
TOKEN = TokenSpec(contract_id=random_contract_id(rng), decimals=7, symbol="USDC")
ADMIN = random_account_id(rng)


def escrow(invoice_id: str, funded: int, status: int, **changes: object) -> EscrowSpec:
    values: dict[str, object] = {
        "contract_id": random_contract_id(rng),
        "invoice_id": invoice_id,
        "funded_amount": funded,
        "amount": 10_000_000_000,
        "funding_target": 10_000_000_000,
        "funding_token": TOKEN.contract_id,
        "admin": ADMIN,
        "sme_address": random_account_id(rng),
        "status": status,
    }
    values.update(changes)
    return EscrowSpec(**values)  # type: ignore[arg-type]


ESCROWS = {
    # Audited: in scope, read in the same sweep, never stranded.
    "IN_SCOPE": escrow("IN_SCOPE", 5_000_000_000, 1, custodial=True, token_balance=5_000_000_000),
    # Soft-deleted, custodial, still funded and holding the tokens.
    "DELETED_HOLDS": escrow("DELETED_HOLDS", 2_500_000_000, 1, custodial=True, token_balance=2_500_000_000),
    # Settled in the database, but the record-only escrow is still open with money on it.
    "SETTLED_OWES": escrow("SETTLED_OWES", 1_000_000_000, 0),
    # Cancelled on both sides, one investor of two refunded: 400.00 still owed.
    "CANCELLED_OWES": escrow(
        "CANCELLED_OWES",
        1_000_000_000,
        4,
        distributed_principal=600_000_000,
        custodial=True,
        token_balance=4_000_000_000,
    ),
    # Repaid, withdrawn, everything paid out and nothing held: not stranded.
    "REPAID_EMPTY": escrow(
        "REPAID_EMPTY", 3_000_000_000, 3, distributed_principal=3_000_000_000, custodial=True, token_balance=0
    ),
    # Repaid and withdrawn, but 0.5 USDC of dust still sits on it.
    "REPAID_DUST": escrow(
        "REPAID_DUST",
        3_000_000_000,
        3,
        distributed_principal=3_000_000_000,
        custodial=True,
        token_balance=5_000_000,
    ),
}
STATE = LedgerState(latest_ledger=2_000_000, escrows=tuple(ESCROWS.values()), tokens=(TOKEN,))
BAD_ADDRESS = "CNOTANADDRESS"
GONE = random_contract_id(rng)  # no instance on chain: nothing it could hold


def _source(url: str) -> None:
    src = Source()
    created = lambda name: ((ESCROWS[name].contract_id, "completed", T0),)  # noqa: E731
    src.invoice("IN_SCOPE", totals=((Decimal("500.00"), T0),), creates=created("IN_SCOPE"))
    src.invoice(
        "DELETED_HOLDS", deleted=True, totals=((Decimal("250.00"), T0),), creates=created("DELETED_HOLDS")
    )
    src.invoice("SETTLED_OWES", status="settled", creates=created("SETTLED_OWES"))
    src.invoice("CANCELLED_OWES", status="cancelled", creates=created("CANCELLED_OWES"))
    src.invoice("REPAID_EMPTY", status="repaid", creates=created("REPAID_EMPTY"))
    src.invoice("REPAID_DUST", status="repaid", tenant="tenant-b", creates=created("REPAID_DUST"))
    src.invoice("BAD_ADDRESS", status="cancelled", creates=((BAD_ADDRESS, "completed", T0),))
    src.invoice("GONE", status="repaid", creates=((GONE, "completed", T0),))
    src.invoice("NEVER_CREATED", status="cancelled", creates=((random_contract_id(rng), "failed", T0),))
    src.invoice("DRAFT", status="draft")
    src.load(url)


def _audit(url: str, emu: Emulator, **params: object):
    settings = factories.settings(database_url=url, rpc_url=emu.url, **params)
    invoices = extract.extract_invoices(settings)
    out_of_scope = extract.extract_out_of_scope(settings)
    resolved = resolve.resolve_addresses(invoices, None)
    ledger_read = read_ledger(resolve.contract_ids_to_read(resolved, out_of_scope), settings, progress=False)
    return classify.audit(resolved, ledger_read, settings, out_of_scope=out_of_scope), out_of_scope


def test_out_of_scope_invoices_with_an_escrow_are_extracted(source_url: str) -> None:
    _source(source_url)
    settings = factories.settings(database_url=source_url)
    found = extract.extract_out_of_scope(settings)
    assert found.skipped is None and found.invoices.schema == OUT_OF_SCOPE
    rows = {row["invoice_id"]: row for row in found.invoices.iter_rows(named=True)}
    # In scope, never created, and drafts without an escrow are not candidates.
    assert sorted(rows) == [
        "BAD_ADDRESS",
        "CANCELLED_OWES",
        "DELETED_HOLDS",
        "GONE",
        "REPAID_DUST",
        "REPAID_EMPTY",
        "SETTLED_OWES",
    ]
    assert rows["DELETED_HOLDS"]["status"] == "funded"
    assert str(rows["DELETED_HOLDS"]["deleted_at"]).startswith("2026-01-01")
    assert rows["SETTLED_OWES"]["deleted_at"] is None
    tenant_b = extract.extract_out_of_scope(factories.settings(database_url=source_url, tenant_id="tenant-b"))
    assert tenant_b.invoices.get_column("invoice_id").to_list() == ["REPAID_DUST"]


def test_stranded_escrows_hold_or_owe_and_never_touch_the_classes(source_url: str) -> None:
    _source(source_url)
    with Emulator(STATE) as emu:
        result, _ = _audit(source_url, emu)
    # The five classes see only the audited invoice.
    assert (result.counts.total, result.counts.match) == (1, 1)
    stranded = result.stranded
    assert stranded.frame.schema == STRANDED and stranded.skipped is None and stranded.checked == 7
    rows = {row["invoice_id"]: row for row in stranded.frame.iter_rows(named=True)}
    assert sorted(rows) == ["BAD_ADDRESS", "CANCELLED_OWES", "DELETED_HOLDS", "REPAID_DUST", "SETTLED_OWES"]
    assert (stranded.holding, stranded.unread) == (4, 1)
    held = rows["DELETED_HOLDS"]
    assert (held["reason_code"], held["chain_balance_base_units"], held["chain_owed_base_units"]) == (
        "stranded_funds",
        "2500000000",
        "2500000000",
    )
    assert held["reason"].startswith("Invoice deleted at 2026-01-01")
    assert held["reason"].endswith(
        "holds 250.00 USDC and still owes investors 250.00 USDC (funded 250.00 USDC, paid out 0.00 USDC; escrow funded)"
    )
    owes = rows["SETTLED_OWES"]
    assert (owes["custodial"], owes["chain_balance_base_units"], owes["chain_owed_base_units"]) == (
        False,
        None,
        "1000000000",
    )
    assert "Invoice in status 'settled', outside the audit" in owes["reason"]
    cancelled = rows["CANCELLED_OWES"]
    assert cancelled["chain_owed_base_units"] == "400000000"
    assert (
        "still owes investors 40.00 USDC (funded 100.00 USDC, paid out 60.00 USDC; escrow cancelled)"
        in (cancelled["reason"])
    )
    dust = rows["REPAID_DUST"]
    assert (dust["chain_balance_base_units"], dust["chain_owed_base_units"], dust["tenant_id"]) == (
        "5000000",
        None,
        "tenant-b",
    )
    assert dust["reason"].endswith("holds 0.50 USDC")
    bad = rows["BAD_ADDRESS"]
    assert bad["reason_code"] == "stranded_unread" and bad["reason"].endswith("it may still hold funds")
    assert "invalid contract address" in bad["reason"]


def test_an_unreachable_escrow_is_unread_not_empty(source_url: str) -> None:
    """An escrow the RPC could not answer for may hold funds: it is listed, never dropped."""
    from reconcile_audit.emulator import FaultPlan

    _source(source_url)
    target = ESCROWS["REPAID_EMPTY"].contract_id
    with Emulator(STATE, faults=FaultPlan(poisoned={target: "http_503"})) as emu:
        result, _ = _audit(source_url, emu, rpc_max_retries=0)
    rows = {row["invoice_id"]: row for row in result.stranded.frame.iter_rows(named=True)}
    assert rows["REPAID_EMPTY"]["reason_code"] == "stranded_unread"
    assert "could not be read" in rows["REPAID_EMPTY"]["reason"]


def test_a_custom_extract_says_stranded_escrows_were_not_checked(source_url: str, tmp_path) -> None:
    query = tmp_path / "mine.sql"
    query.write_text(extract.db.read_sql(extract.EXTRACT_SQL), encoding="utf-8")
    found = extract.extract_out_of_scope(
        factories.settings(database_url=source_url, extract_sql_path=str(query))
    )
    assert found.invoices.is_empty() and "custom extract query" in (found.skipped or "")
    with Emulator(STATE) as emu:
        ledger_read = read_ledger([], factories.settings(rpc_url=emu.url), progress=False)
    assert find_stranded(found, ledger_read).skipped == found.skipped


def test_stranded_escrows_are_stored_beside_the_findings_and_not_in_history(
    source_url: str, state_url: str
) -> None:
    _source(source_url)
    with Emulator(STATE) as emu:
        result, _ = _audit(source_url, emu)
    record = RunRecord(
        run_key="night-1",
        tenant_id=None,
        started_at=T0,
        finished_at=T0,
        status=RunStatus.COMPLETED,
        counts=result.counts,
        ledger_min=result.ledger_min,
        ledger_max=result.ledger_max,
    )
    outcome = persist.persist_run(state_url, record, result.findings, result.stranded.frame)
    assert outcome.ok and outcome.findings_written == result.stranded.frame.height
    with connect(state_url) as conn:
        stored = conn.rows(
            "SELECT invoice_id, class, reason_code, finding_no, chain_balance_base_units FROM reconciliation_findings"
            " ORDER BY finding_no"
        )
    assert {row[1] for row in stored} == {"stranded"}
    assert [row[3] for row in stored] == list(range(2, 2 + len(stored)))  # after the run's one invoice
    held = next(row for row in stored if row[0] == "DELETED_HOLDS")
    assert (held[2], str(held[4])) == ("stranded_funds", "2500000000")
    # The next night's history knows nothing of them: they were never findings.
    later = factories.settings(database_url=source_url, state_database_url=state_url)
    comparison = history.compare_with_history(result, later, run_key="night-2", now=T0.replace(day=2))
    assert comparison.resolved.is_empty()


def test_not_checked_is_never_an_empty_list() -> None:
    skipped = Stranded.not_checked("because")
    assert (skipped.skipped, skipped.holding, skipped.unread, skipped.frame.schema) == (
        "because",
        0,
        0,
        STRANDED,
    )
    assert pl.DataFrame(schema=STRANDED).is_empty()
