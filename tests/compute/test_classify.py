"""Classify: every class, reason and flag; exact amounts at the i128 limits; property tests."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stellar_sdk import StrKey

from reconcile_audit.compute import classify as classify_module
from reconcile_audit.compute.amounts import format_major
from reconcile_audit.compute.classify import DEFAULT_TTL_WARNING_LEDGERS, REASON_CODES, classify
from reconcile_audit.compute.result import AuditResult, Tallies
from reconcile_audit.compute.schemas import (
    CLASS_ORDER,
    CLASSES,
    FINDINGS,
    FLAGS,
    LEDGER,
    RESOLVED,
    ClassCounts,
    count_classes,
)

I128_MAX = 2**127 - 1
I128_MIN = -(2**127)
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
CONTRACTS = [StrKey.encode_contract(bytes([i]) * 32) for i in range(1, 41)]
TOKEN = StrKey.encode_contract(b"\xee" * 32)


def cents(count: int) -> str:
    """``count`` cents as the exact decimal text a DECIMAL(p,2) column prints: 125000 -> "1250.00"."""
    sign = "-" if count < 0 else ""
    digits = str(abs(count)).rjust(3, "0")
    return f"{sign}{digits[:-2]}.{digits[-2:]}"


def resolved_row(invoice_id: str = "INV-1", **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "invoice_pk": f"pk-{invoice_id}",
        "invoice_id": invoice_id,
        "tenant_id": "tenant-a",
        "status": "funded",
        "currency": "USDC",
        "db_total_funded": "1250.00",
        "total_was_null": False,
        "summary_row_count": 1,
        "op_contract_id": CONTRACTS[0],
        "contract_id": CONTRACTS[0],
        "address_source": "escrow_operations",
        "address_error": None,
        "invoice_id_error": None,
    }
    row.update(overrides)
    return row


def ledger_row(contract_id: str = CONTRACTS[0], **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "contract_id": contract_id,
        "read_status": "ok",
        "read_error": None,
        "escrow_invoice_id": "INV-1",
        "funded_amount": "12500000000",
        "amount": "20000000000",
        "funding_target": "20000000000",
        "escrow_status": 1,
        "funding_token": TOKEN,
        "distributed_principal": None,
        "token_decimals": 7,
        "token_decimals_source": "metadata",
        "latest_ledger": 1_000_000,
        "last_modified_ledger": 999_000,
        "live_until_ledger": 5_000_000,
    }
    row.update(overrides)
    return row


def frames(resolved: list[dict[str, Any]], ledger: list[dict[str, Any]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.DataFrame(resolved, schema=RESOLVED), pl.DataFrame(ledger, schema=LEDGER)


def one(
    resolved: dict[str, Any], ledger: list[dict[str, Any]] | None = None, **kwargs: Any
) -> dict[str, Any]:
    findings = classify(*frames([resolved], [ledger_row()] if ledger is None else ledger), **kwargs)
    assert findings.height == 1
    return findings.row(0, named=True)


def test_the_documented_example_sentence() -> None:
    row = one(resolved_row(), [ledger_row(funded_amount="12499900000")])
    assert (row["class"], row["reason_code"]) == ("mismatch", "db_over_chain")
    assert row["reason"] == "DB 1,250.00 USDC vs chain 1,249.99 USDC (chain under by 0.01)"
    assert (row["db_funded_base_units"], row["chain_funded_base_units"], row["delta_base_units"]) == (
        "12500000000",
        "12499900000",
        "100000",
    )
    assert row["db_total_funded"] == "1250.00"
    assert row["drift_rank"] == 1
    assert row["token_decimals"] == 7
    assert row["flags"] == []
    assert (row["escrow_invoice_id"], row["escrow_status"], row["funding_token"]) == ("INV-1", 1, TOKEN)
    assert (row["latest_ledger"], row["last_modified_ledger"], row["live_until_ledger"]) == (
        1_000_000,
        999_000,
        5_000_000,
    )
    assert row["address_source"] == "escrow_operations"


_REASON_CASES: list[tuple[dict[str, Any], list[dict[str, Any]], str, str, str]] = [
    (resolved_row(), [ledger_row()], "match", "equal", "DB 1,250.00 USDC equals chain 1,250.00 USDC"),
    (
        resolved_row(),
        [ledger_row(funded_amount="12500000001")],
        "mismatch",
        "chain_over_db",
        "(chain over by 0.0000001)",
    ),
    (
        resolved_row(invoice_id_error="invoice id is empty", invoice_id=""),
        [ledger_row()],
        "error",
        "invalid_invoice_id",
        "invoice id is empty",
    ),
    (
        resolved_row(contract_id=None, op_contract_id=None, address_source=None),
        [],
        "unlinked",
        "no_address",
        "no escrow address",
    ),
    (
        resolved_row(contract_id="GABC", address_error="wrong length"),
        [],
        "error",
        "invalid_address",
        "'GABC' (from escrow_operations): wrong length",
    ),
    (resolved_row(), [], "error", "not_read", "no result"),
    (resolved_row(), [ledger_row(CONTRACTS[1])], "error", "not_read", "no result"),
    (
        resolved_row(),
        [ledger_row(read_status="error", read_error="HTTP 503 after 6 retries")],
        "error",
        "read_error",
        "HTTP 503 after 6 retries",
    ),
    (
        resolved_row(),
        [ledger_row(read_status="no_instance", funded_amount=None)],
        "missing_on_chain",
        "no_instance",
        "no contract instance",
    ),
    (
        resolved_row(),
        [ledger_row(read_status="no_escrow", funded_amount=None)],
        "missing_on_chain",
        "no_escrow",
        "stores no Escrow",
    ),
    (resolved_row(), [ledger_row(read_status="weird")], "error", "unknown_read_status", "'weird'"),
    (resolved_row(), [ledger_row(read_status=None)], "error", "unknown_read_status", "None"),
    (resolved_row(), [ledger_row(funded_amount=None)], "error", "undecodable_amount", "None"),
    (resolved_row(), [ledger_row(funded_amount="1.5")], "error", "undecodable_amount", "'1.5'"),
    (resolved_row(), [ledger_row(funded_amount="1e3")], "error", "undecodable_amount", "'1e3'"),
    (resolved_row(), [ledger_row(funded_amount=" 12")], "error", "undecodable_amount", "' 12'"),
    (
        resolved_row(),
        [ledger_row(funded_amount=str(I128_MAX + 1))],
        "error",
        "undecodable_amount",
        "not an i128",
    ),
    (
        resolved_row(),
        [ledger_row(funded_amount=str(I128_MIN - 1))],
        "error",
        "undecodable_amount",
        "not an i128",
    ),
    (
        resolved_row(),
        [ledger_row(token_decimals=None, read_error="token has no METADATA")],
        "error",
        "unknown_token_decimals",
        "token has no METADATA",
    ),
    (resolved_row(), [ledger_row(token_decimals=39)], "error", "unsupported_token_decimals", "39"),
    (resolved_row(), [ledger_row(token_decimals=-1)], "error", "unsupported_token_decimals", "-1"),
    (
        resolved_row(),
        [ledger_row(escrow_invoice_id="INV-2")],
        "mismatch",
        "invoice_id_mismatch",
        "belongs to invoice 'INV-2', not 'INV-1'",
    ),
    (
        resolved_row(),
        [ledger_row(escrow_invoice_id=None)],
        "mismatch",
        "invoice_id_mismatch",
        "belongs to invoice None",
    ),
    (
        resolved_row(db_total_funded=cents(1)),
        [ledger_row(token_decimals=0, funded_amount="0")],
        "mismatch",
        "db_amount_not_representable",
        "DB 0.01 USDC has 2 decimal places, more than the token's 0: 0.01 USDC of it cannot be held on chain; "
        "chain 0 USDC (chain under by 0.01)",
    ),
    (
        resolved_row(db_total_funded=cents(11)),
        [ledger_row(token_decimals=1, funded_amount="1")],
        "mismatch",
        "db_amount_not_representable",
        "0.01 USDC of it cannot be held on chain; chain 0.1 USDC (chain under by 0.01)",
    ),
    (
        # The false match: a sub-cent total against a 2-decimal token once read "equal".
        resolved_row(db_total_funded="155560.584999"),
        [ledger_row(token_decimals=2, funded_amount="15556058")],
        "mismatch",
        "db_amount_not_representable",
        "DB 155,560.584999 USDC has 6 decimal places, more than the token's 2: 0.004999 USDC of it cannot be "
        "held on chain; chain 155,560.58 USDC (chain under by 0.004999)",
    ),
    (
        # At 7 decimals the same total exists on chain, and the chain holds 0.004999 less.
        resolved_row(db_total_funded="155560.584999"),
        [ledger_row(funded_amount="1555605800000")],
        "mismatch",
        "db_over_chain",
        "DB 155,560.584999 USDC vs chain 155,560.58 USDC (chain under by 0.004999)",
    ),
    (
        # Trailing zeros past the token's decimals carry no value.
        resolved_row(db_total_funded="12.300000000000"),
        [ledger_row(token_decimals=1, funded_amount="123")],
        "match",
        "equal",
        "DB 12.30 USDC equals chain 12.3 USDC",
    ),
    (
        resolved_row(db_total_funded="1,250.00"),
        None,
        "error",
        "invalid_db_amount",
        "the database total_funded '1,250.00' is not a decimal number",
    ),
    (
        resolved_row(db_total_funded=cents(1200)),
        [ledger_row(token_decimals=0, funded_amount="12")],
        "match",
        "equal",
        "DB 12.00 USDC equals chain 12 USDC",
    ),
    (
        resolved_row(db_total_funded=cents(1230)),
        [ledger_row(token_decimals=1, funded_amount="123")],
        "match",
        "equal",
        "equals chain 12.3 USDC",
    ),
]


@pytest.mark.parametrize(("resolved", "ledger", "klass", "code", "reason_part"), _REASON_CASES)
def test_every_reason_code(
    resolved: dict[str, Any], ledger: list[dict[str, Any]], klass: str, code: str, reason_part: str
) -> None:
    row = one(resolved, ledger)
    assert (row["class"], row["reason_code"]) == (klass, code)
    assert REASON_CODES[code] == klass
    assert reason_part in row["reason"]


EURC = StrKey.encode_contract(b"\xe5" * 32)
_SYMBOLS = {TOKEN: "USDC", EURC: "EURC"}
# (resolved, ledger, class, reason_code, reason part), with currencies checked against {"USDC": TOKEN}.
_CURRENCY_CASES = [
    (
        # The case: an escrow holding EURC under a USDC invoice once read "match".
        resolved_row(),
        [ledger_row(funding_token=EURC)],
        "mismatch",
        "token_mismatch",
        f"the escrow is funded in EURC ({EURC}), but USDC invoices must be funded in USDC ({TOKEN}) "
        "(RECONCILE_CURRENCY_TOKENS); its funded_amount is 1,250.00 EURC",
    ),
    (
        resolved_row(currency="GBP"),
        None,
        "error",
        "unmapped_currency",
        f"invoice currency 'GBP' has no funding token in RECONCILE_CURRENCY_TOKENS, so the escrow's token "
        f"USDC ({TOKEN}) cannot be checked",
    ),
    (
        resolved_row(currency=None),
        None,
        "error",
        "unmapped_currency",
        "the invoice has no currency, so the escrow's",
    ),
    # Currencies match case- and space-insensitively, as the map's keys are upper-cased.
    (resolved_row(currency=" usdc "), None, "match", "equal", "DB 1,250.00  usdc  equals chain"),
    # The wrong token outranks an amount that differs too: the amounts are of different assets.
    (
        resolved_row(),
        [ledger_row(funding_token=EURC, funded_amount="1")],
        "mismatch",
        "token_mismatch",
        "its funded_amount is 0.0000001 EURC",
    ),
]


@pytest.mark.parametrize(("resolved", "ledger", "klass", "code", "reason_part"), _CURRENCY_CASES)
def test_currency_against_token(
    resolved: dict[str, Any], ledger: list[dict[str, Any]] | None, klass: str, code: str, reason_part: str
) -> None:
    row = one(resolved, ledger, currency_tokens={"USDC": TOKEN}, token_symbols=_SYMBOLS)
    assert (row["class"], row["reason_code"]) == (klass, code)
    assert reason_part in row["reason"]


def test_currencies_are_not_checked_without_the_map() -> None:
    row = one(resolved_row(), [ledger_row(funding_token=EURC)])
    assert (row["class"], row["reason_code"]) == ("match", "equal")


F = 12_500_000_000  # the funded amount that equals the DB's 1,250.00 at 7 decimals


def _required(status: int, funded: int, distributed: int) -> int | None:
    """The invariant table of issue 11, in plain Python: what a custodial escrow must hold."""
    return {0: funded, 1: funded, 3: 0, 4: funded - distributed}.get(status)


def _balance_case(status: int, custodial: bool, balance: int, distributed: int = 0) -> dict[str, Any]:
    return one(
        resolved_row(),
        [
            ledger_row(
                escrow_status=status,
                funded_amount=str(F),
                distributed_principal=str(distributed) if distributed else None,
                custodial=custodial,
                chain_balance=str(balance) if custodial else None,
            )
        ],
    )


def _expect(row: dict[str, Any], status: int, custodial: bool, balance: int, distributed: int) -> None:
    required = _required(status, F, distributed)
    gap = None if not custodial or required is None else balance - required
    if gap is not None and gap < 0:
        assert (row["class"], row["reason_code"]) == ("mismatch", "balance_short"), row
        assert f"{format_major(-gap, 7)} short of the {format_major(required, 7)}" in row["reason"]
        assert "DB 1,250.00 USDC equals chain 1,250.00 USDC" in row["reason"]  # the other side, named too
    else:
        assert (row["class"], row["reason_code"]) == ("match", "equal"), row
    assert ("balance_surplus" in row["flags"]) == (gap is not None and gap > 0)
    assert row["custodial"] is custodial
    assert row["chain_balance_base_units"] == (str(balance) if custodial else None)


@pytest.mark.parametrize("status", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("custodial", [False, True])
@pytest.mark.parametrize("relation", ["equal", "short", "surplus"])
def test_balance_invariant_of_every_status(status: int, custodial: bool, relation: str) -> None:
    distributed = 2_500_000_000 if status in (3, 4) else 0
    if status == 3:
        distributed = F  # withdrawn: everything went to the SME and the treasury
    required = _required(status, F, distributed)
    base = required if required is not None else F
    balance = base + {"equal": 0, "short": -1, "surplus": 5_000_000}[relation]
    row = _balance_case(status, custodial, balance, distributed)
    _expect(row, status, custodial, balance, distributed)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.integers(min_value=0, max_value=4),
    custodial=st.booleans(),
    balance=st.integers(min_value=I128_MIN, max_value=I128_MAX),
    distributed=st.integers(min_value=0, max_value=I128_MAX),
)
def test_balance_invariant_against_the_oracle_at_the_i128_limits(
    status: int, custodial: bool, balance: int, distributed: int
) -> None:
    row = _balance_case(status, custodial, balance, distributed)
    _expect(row, status, custodial, balance, distributed)


def test_a_custodial_escrow_whose_balance_was_not_read_is_flagged_not_judged() -> None:
    row = one(
        resolved_row(), [ledger_row(custodial=True, chain_balance=None, balance_note="balance not read: x")]
    )
    assert (row["class"], row["reason_code"]) == ("match", "equal")
    assert "balance_unread" in row["flags"]


def test_an_archived_or_expiring_balance_entry_is_flagged() -> None:
    archived = one(
        resolved_row(), [ledger_row(custodial=True, chain_balance=str(F), balance_live_until_ledger=0)]
    )
    expiring = one(
        resolved_row(),
        [ledger_row(custodial=True, chain_balance=str(F), balance_live_until_ledger=1_000_050)],
        ttl_warning_ledgers=100,
    )
    assert "balance_archived" in archived["flags"] and "balance_ttl_expiring" not in archived["flags"]
    assert "balance_ttl_expiring" in expiring["flags"]


def _sides(**resolved: Any) -> dict[str, Any]:
    """A matching invoice (DB 1,250.00 = chain) of a custodial escrow holding 1,000.00 after
    250.00 was refunded (status cancelled), with the database's other sides as given."""
    return one(
        resolved_row(**resolved),
        [
            ledger_row(
                escrow_status=4,
                distributed_principal="2500000000",
                custodial=True,
                chain_balance="10000000000",
                last_modified_ledger=999_000,
            )
        ],
    )


def test_the_databases_other_sides_agree() -> None:
    row = _sides(db_total_released="250.00", db_available="1000.00", db_ledger_sequence=999_000)
    assert (row["class"], row["reason_code"]) == ("match", "equal"), row["reason"]
    assert (row["db_released_base_units"], row["db_available_base_units"]) == ("2500000000", "10000000000")
    assert "db_stale" not in row["flags"]


def test_released_and_available_that_differ_are_mismatches_naming_both_sides() -> None:
    released = _sides(db_total_released="200.00", db_available="1000.00")
    assert (released["class"], released["reason_code"]) == ("mismatch", "released_mismatch")
    assert released["reason"].startswith(
        "DB total_released 200.00 USDC vs the escrow's DistributedPrincipal 250.00 USDC"
    )
    available = _sides(db_total_released="250.00", db_available="1250.00")
    assert (available["class"], available["reason_code"]) == ("mismatch", "available_mismatch")
    assert available["reason"].startswith(
        "DB available_amount 1,250.00 USDC vs the 1,000.00 USDC the escrow holds"
    )
    # Without custody, what is available on chain is funded less paid out.
    plain = one(
        resolved_row(db_available="1250.00"),
        [ledger_row(distributed_principal="2500000000", escrow_status=4)],
    )
    assert plain["reason_code"] == "available_mismatch"
    assert "vs the 1,000.00 USDC is funded less paid out on chain" in plain["reason"]
    # Stray tokens above what the status requires are not the invoice's: a surplus, not a mismatch.
    stray = _sides(db_available="1000.00", db_total_released="250.00")
    stray_row = one(
        resolved_row(db_available="1000.00", db_total_released="250.00"),
        [
            ledger_row(
                escrow_status=4,
                distributed_principal="2500000000",
                custodial=True,
                chain_balance="10000000001",
            )
        ],
    )
    assert stray["reason_code"] == "equal" and stray_row["reason_code"] == "equal"
    assert "balance_surplus" in stray_row["flags"]
    # A funded drift outranks them: it is the first side compared.
    drift = one(resolved_row(db_total_released="1.00"), [ledger_row(funded_amount="1")])
    assert drift["reason_code"] == "db_over_chain"


def test_a_database_synced_before_the_escrow_changed_is_flagged_stale() -> None:
    row = _sides(db_total_released="250.00", db_available="1000.00", db_ledger_sequence=998_000)
    assert "db_stale" in row["flags"] and row["class"] == "match"
    assert "The database last synced at ledger 998,000; the escrow changed at ledger 999,000" in row["reason"]


def test_every_reason_code_is_exercised() -> None:
    # Guards the tables above against a new code added to classify without a test.
    tested = {
        "equal",
        "chain_over_db",
        "db_over_chain",
        "within_tolerance",
        "balance_short",
        "released_mismatch",
        "available_mismatch",
    } | {case[3] for case in [*_REASON_CASES, *_CURRENCY_CASES]}
    assert tested == set(REASON_CODES)


def test_tolerance_boundaries() -> None:
    def at(delta: int, tolerance: int) -> tuple[str, str]:
        row = one(
            resolved_row(),
            [ledger_row(funded_amount=str(12_500_000_000 - delta))],
            tolerance_base_units=tolerance,
        )
        return row["class"], row["reason_code"]

    assert at(0, 0) == ("match", "equal")
    assert at(1, 0) == ("mismatch", "db_over_chain")
    assert at(5, 5) == ("match", "within_tolerance")
    assert at(-5, 5) == ("match", "within_tolerance")
    assert at(6, 5) == ("mismatch", "db_over_chain")
    assert at(-6, 5) == ("mismatch", "chain_over_db")
    huge = 10**60  # beyond any integer type but BIGNUM
    assert at(I64_MAX, huge) == ("match", "within_tolerance")
    row = one(resolved_row(), [ledger_row(funded_amount="12499999995")], tolerance_base_units=5)
    assert row["reason"].endswith("within the tolerance of 5 base units")
    assert row["drift_rank"] is None
    with pytest.raises(ValueError, match="negative"):
        one(resolved_row(), tolerance_base_units=-1)


def test_flags() -> None:
    cases = {
        "archived-zero": (
            resolved_row("archived-zero"),
            ledger_row(CONTRACTS[0], escrow_invoice_id="archived-zero", live_until_ledger=0),
        ),
        "archived-below": (
            resolved_row("archived-below", contract_id=CONTRACTS[1]),
            ledger_row(CONTRACTS[1], escrow_invoice_id="archived-below", live_until_ledger=999_999),
        ),
        "expiring-edge": (
            resolved_row("expiring-edge", contract_id=CONTRACTS[2]),
            ledger_row(CONTRACTS[2], escrow_invoice_id="expiring-edge", live_until_ledger=1_000_100),
        ),
        "expiring-now": (
            resolved_row("expiring-now", contract_id=CONTRACTS[3]),
            ledger_row(CONTRACTS[3], escrow_invoice_id="expiring-now", live_until_ledger=1_000_000),
        ),
        "fresh": (
            resolved_row("fresh", contract_id=CONTRACTS[4]),
            ledger_row(CONTRACTS[4], escrow_invoice_id="fresh", live_until_ledger=1_000_101),
        ),
        "duplicate-null": (
            resolved_row(
                "duplicate-null",
                contract_id=CONTRACTS[5],
                summary_row_count=3,
                total_was_null=True,
                db_total_funded=cents(0),
            ),
            ledger_row(
                CONTRACTS[5], escrow_invoice_id="duplicate-null", funded_amount="0", live_until_ledger=0
            ),
        ),
        "unlinked-null": (
            resolved_row("unlinked-null", contract_id=None, total_was_null=True, summary_row_count=0),
            None,
        ),
        "missing": (
            resolved_row("missing", contract_id=CONTRACTS[6]),
            ledger_row(
                CONTRACTS[6], read_status="no_instance", live_until_ledger=None, latest_ledger=1_000_000
            ),
        ),
    }
    resolved = [r for r, _ in cases.values()]
    ledger = [entry for _, entry in cases.values() if entry is not None]
    findings = classify(*frames(resolved, ledger), ttl_warning_ledgers=100)
    flags = dict(
        zip(findings.get_column("invoice_id").to_list(), findings.get_column("flags").to_list(), strict=True)
    )
    assert flags == {
        "archived-zero": ["archived"],
        "archived-below": ["archived"],
        "expiring-edge": ["ttl_expiring"],
        "expiring-now": ["ttl_expiring"],
        "fresh": [],
        "duplicate-null": ["archived", "duplicate_summary", "null_total"],
        "unlinked-null": ["null_total"],
        "missing": [],
    }
    for value in flags.values():
        assert set(value) <= set(FLAGS) and value == sorted(value)
    # Flags sit beside the class; an archived escrow with equal amounts still matches.
    assert findings.filter(pl.col("invoice_id") == "archived-zero").item(0, "class") == "match"


@pytest.mark.parametrize(
    ("count", "decimals", "chain"),
    [
        (I64_MAX, 38, I128_MIN),  # delta far beyond i128
        (I64_MIN, 38, I128_MAX),
        (I64_MAX, 7, I128_MAX),
        (0, 7, I128_MIN),
        (0, 7, I128_MAX),
        (-1, 2, I128_MAX),
        (999_999_999_999_999, 18, I128_MAX),
        (I64_MIN + 8, 0, I128_MIN),  # the most negative whole number of units
    ],
)
def test_amounts_at_the_i128_limits_are_exact(count: int, decimals: int, chain: int) -> None:
    row = one(
        resolved_row(db_total_funded=cents(count)),
        [ledger_row(funded_amount=str(chain), token_decimals=decimals)],
    )
    db_base = count * 10 ** (decimals - 2) if decimals >= 2 else count // 10 ** (2 - decimals)
    assert row["db_funded_base_units"] == str(db_base)
    assert row["chain_funded_base_units"] == str(chain)
    assert row["delta_base_units"] == str(db_base - chain)
    assert row["class"] == "mismatch"
    assert row["reason_code"] == ("db_over_chain" if db_base > chain else "chain_over_db")
    assert format_major(abs(db_base - chain), decimals) in row["reason"]
    assert row["db_total_funded"] == cents(count)  # kept exactly as stored, never wrapped


def test_equal_at_the_i128_maximum() -> None:
    chain = I128_MAX - I128_MAX % 10**20  # a whole number of cents at 22 decimals
    count = chain // 10**20
    assert count <= I64_MAX
    row = one(
        resolved_row(db_total_funded=cents(count)), [ledger_row(funded_amount=str(chain), token_decimals=22)]
    )
    assert (row["class"], row["delta_base_units"]) == ("match", "0")


def test_drift_rank_compares_major_units_exactly_across_decimals() -> None:
    resolved = [
        resolved_row("seven-1.00", contract_id=CONTRACTS[0], db_total_funded=cents(200)),
        resolved_row("two-0.99", contract_id=CONTRACTS[1], db_total_funded=cents(199)),
        resolved_row("eighteen-1.00", contract_id=CONTRACTS[2], db_total_funded=cents(200)),
        resolved_row("seven-tiny", contract_id=CONTRACTS[3], db_total_funded=cents(100)),
        resolved_row("equal", contract_id=CONTRACTS[4], db_total_funded=cents(100)),
        resolved_row("id-mismatch", contract_id=CONTRACTS[5], db_total_funded=cents(10**12)),
        resolved_row("chain-over-huge", contract_id=CONTRACTS[6], db_total_funded=cents(0)),
    ]
    ledger = [
        ledger_row(CONTRACTS[0], escrow_invoice_id="seven-1.00", funded_amount=str(10**7), token_decimals=7),
        ledger_row(CONTRACTS[1], escrow_invoice_id="two-0.99", funded_amount="100", token_decimals=2),
        ledger_row(
            CONTRACTS[2], escrow_invoice_id="eighteen-1.00", funded_amount=str(10**18), token_decimals=18
        ),
        ledger_row(
            CONTRACTS[3], escrow_invoice_id="seven-tiny", funded_amount=str(10**7 + 1), token_decimals=7
        ),
        ledger_row(CONTRACTS[4], escrow_invoice_id="equal", funded_amount=str(10**7), token_decimals=7),
        ledger_row(CONTRACTS[5], escrow_invoice_id="someone-else", funded_amount="0"),
        ledger_row(
            CONTRACTS[6], escrow_invoice_id="chain-over-huge", funded_amount=str(I128_MAX), token_decimals=38
        ),
    ]
    findings = classify(*frames(resolved, ledger))
    ranks = dict(
        zip(
            findings.get_column("invoice_id").to_list(),
            findings.get_column("drift_rank").to_list(),
            strict=True,
        )
    )
    assert ranks == {
        "chain-over-huge": 1,  # 1.7 major units at 38 decimals
        "seven-1.00": 2,  # 1.00 major, tied
        "eighteen-1.00": 2,
        "two-0.99": 4,
        "seven-tiny": 5,
        "equal": None,
        "id-mismatch": None,  # an id mismatch compares another invoice's escrow: not a drift
    }


def test_rows_are_kept_in_order_and_never_multiplied() -> None:
    resolved = [
        resolved_row("z-last", contract_id=CONTRACTS[0]),
        resolved_row("a-shares", contract_id=CONTRACTS[0]),
        resolved_row("m-dup-ledger", contract_id=CONTRACTS[1]),
    ]
    ledger = [
        ledger_row(CONTRACTS[0], escrow_invoice_id="z-last"),
        ledger_row(CONTRACTS[1], escrow_invoice_id="m-dup-ledger", latest_ledger=5),
        ledger_row(CONTRACTS[1], escrow_invoice_id="m-dup-ledger", latest_ledger=7, funded_amount="1"),
    ]
    findings = classify(*frames(resolved, ledger))
    assert findings.get_column("invoice_id").to_list() == ["z-last", "a-shares", "m-dup-ledger"]
    assert findings.get_column("reason_code").to_list() == ["equal", "invoice_id_mismatch", "db_over_chain"]
    assert findings.item(2, "latest_ledger") == 7  # the newest reading wins


def test_address_conflict_is_noted_in_the_reason() -> None:
    resolved = pl.DataFrame([resolved_row()], schema=RESOLVED).with_columns(
        pl.lit(CONTRACTS[9]).alias("address_conflict")
    )
    findings = classify(resolved, pl.DataFrame([ledger_row()], schema=LEDGER))
    assert findings.columns == FINDINGS.names()
    reason = findings.item(0, "reason")
    assert reason.startswith("DB 1,250.00 USDC equals chain 1,250.00 USDC. Note: ESCROW_ADDR_BY_INVOICE maps")
    assert CONTRACTS[9] in reason


def test_hostile_strings_stay_data() -> None:
    hostile = "'; DROP TABLE x; --\"🦄\x01"
    row = one(
        resolved_row(hostile, currency=hostile, tenant_id=hostile, invoice_id_error=None),
        [ledger_row(escrow_invoice_id=hostile)],
    )
    assert (row["invoice_id"], row["tenant_id"], row["currency"], row["class"]) == (
        hostile,
        hostile,
        hostile,
        "match",
    )
    assert row["reason"] == f"DB 1,250.00 {hostile} equals chain 1,250.00 {hostile}"


def test_no_currency_still_reads() -> None:
    row = one(resolved_row(currency=None), [ledger_row(funded_amount="0")])
    assert row["reason"] == "DB 1,250.00 vs chain 0.00 (chain under by 1,250.00)"


def test_empty_frames() -> None:
    findings = classify(pl.DataFrame(schema=RESOLVED), pl.DataFrame(schema=LEDGER))
    assert findings.height == 0
    assert findings.schema == FINDINGS
    assert count_classes(findings) == ClassCounts(
        total=0, match=0, mismatch=0, missing_on_chain=0, unlinked=0, error=0
    )


def test_count_classes() -> None:
    findings = pl.DataFrame({"class": ["match", "match", "error", "unlinked"]})
    counts = count_classes(findings)
    assert counts == ClassCounts(total=4, match=2, mismatch=0, missing_on_chain=0, unlinked=1, error=1)
    assert counts.non_match == 2
    assert list(counts.by_class()) == list(CLASS_ORDER)
    assert dict(counts)["total"] == 4
    assert set(CLASS_ORDER) == set(CLASSES)
    with pytest.raises(ValueError, match="sum"):
        ClassCounts(total=5, match=2, mismatch=0, missing_on_chain=0, unlinked=1, error=1)
    with pytest.raises(ValueError, match="unknown classes"):
        count_classes(pl.DataFrame({"class": ["match", "bogus"]}))


@pytest.mark.parametrize(
    ("value", "decimals", "text"),
    [
        (12_499_900_000, 7, "1,249.99"),
        (12_499_912_345, 7, "1,249.9912345"),
        (0, 7, "0.00"),
        (1, 7, "0.0000001"),
        (-100_000, 7, "-0.01"),
        (125_000, 2, "1,250.00"),
        (1234, 0, "1,234"),
        (1234, 1, "123.4"),
        (1230, 1, "123.0"),
        (I128_MIN, 0, f"{I128_MIN:,}"),
        (I128_MAX, 38, "1.70141183460469231731687303715884105727"),
    ],
)
def test_format_major(value: int, decimals: int, text: str) -> None:
    assert format_major(value, decimals) == text


@given(
    value=st.integers(min_value=-(2**200), max_value=2**200), decimals=st.integers(min_value=0, max_value=60)
)
def test_format_major_is_exact(value: int, decimals: int) -> None:
    text = format_major(value, decimals).replace(",", "")
    whole, _, fraction = text.partition(".")
    assert len(fraction) <= max(decimals, 0)
    sign = -1 if whole.startswith("-") else 1
    assert sign * int(whole.lstrip("-") + fraction.ljust(decimals, "0")) == value


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(
        st.tuples(
            st.one_of(
                st.integers(min_value=I128_MIN, max_value=I128_MAX),
                st.integers(min_value=-(10**7), max_value=10**7),
            ),
            st.integers(min_value=0, max_value=38),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_vectorised_format_major_agrees_with_the_python_one(values: list[tuple[int, int]]) -> None:
    frame = pl.DataFrame(
        {"v": [str(v) for v, _ in values], "d": [d for _, d in values]},
        schema={"v": pl.String, "d": pl.Int64},
    )
    got = frame.select(classify_module.format_major_expr(pl.col("v"), pl.col("d"))).to_series().to_list()
    assert got == [format_major(v, d) for v, d in values]


# --- property-based: random frames against a Python-integer oracle -----------------------------

_STATUSES = ["ok", "ok", "ok", "no_instance", "no_escrow", "error", "bogus"]
_AMOUNTS = st.one_of(
    st.integers(min_value=I128_MIN, max_value=I128_MAX).map(str),
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.sampled_from([None, "", "1.5", "abc", str(I128_MAX + 1), "-0", "007"]),
)


# Exact decimal text at scales 0 to 12 (as numeric(p, s) columns print), huge and negative
# values, and text that is no number at all.
_DB_TOTALS = st.one_of(
    st.integers(min_value=I64_MIN, max_value=I64_MAX).map(cents),
    st.integers(min_value=-5, max_value=10**6).map(cents),
    st.builds(
        lambda unscaled, scale: (
            str(unscaled)
            if scale == 0
            else (
                ("-" if unscaled < 0 else "")
                + str(abs(unscaled)).rjust(scale + 1, "0")[:-scale]
                + "."
                + str(abs(unscaled)).rjust(scale + 1, "0")[-scale:]
            )
        ),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.integers(min_value=0, max_value=12),
    ),
    st.sampled_from(["", "1e5", "abc", " 1.00", "1.", ".5", "--1", "1,000.00"]),
)


@st.composite
def random_frames(draw: st.DrawFn) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    invoice_ids = [f"INV-{i}" for i in range(draw(st.integers(min_value=0, max_value=30)))]
    pool = CONTRACTS[: draw(st.integers(min_value=1, max_value=12))]
    resolved = []
    for invoice_id in invoice_ids:
        contract = draw(st.one_of(st.none(), st.sampled_from(pool), st.just("CBAD")))
        resolved.append(
            resolved_row(
                invoice_id,
                contract_id=contract,
                address_error="bad checksum" if contract == "CBAD" else None,
                invoice_id_error=draw(st.sampled_from([None, None, None, "invoice id is empty"])),
                db_total_funded=draw(_DB_TOTALS),
                total_was_null=draw(st.booleans()),
                summary_row_count=draw(st.integers(min_value=0, max_value=3)),
            )
        )
    ledger = []
    for contract in draw(st.lists(st.sampled_from(pool), unique=True)):
        ledger.append(
            ledger_row(
                contract,
                read_status=draw(st.sampled_from(_STATUSES)),
                read_error=draw(st.sampled_from([None, "boom"])),
                escrow_invoice_id=draw(st.sampled_from([None, *invoice_ids[:4], "INV-x"])),
                funded_amount=draw(_AMOUNTS),
                token_decimals=draw(
                    st.one_of(
                        st.none(), st.integers(min_value=-2, max_value=40), st.sampled_from([0, 1, 2, 7])
                    )
                ),
                latest_ledger=draw(st.integers(min_value=0, max_value=10**6)),
                live_until_ledger=draw(st.one_of(st.none(), st.integers(min_value=0, max_value=2 * 10**6))),
            )
        )
    tolerance = draw(st.one_of(st.just(0), st.integers(min_value=0, max_value=10**40)))
    resolved_frame, ledger_frame = frames(resolved, ledger)
    return resolved_frame, ledger_frame, tolerance


def oracle(resolved: dict[str, Any], ledger: dict[str, Any] | None, tolerance: int) -> tuple[str, int | None]:
    """(reason_code, delta) computed with Python integers, following the documented priority."""
    if resolved["invoice_id_error"] is not None:
        return "invalid_invoice_id", None
    if resolved["contract_id"] is None:
        return "no_address", None
    if resolved["address_error"] is not None:
        return "invalid_address", None
    if ledger is None:
        return "not_read", None
    status = ledger["read_status"]
    if status in ("error", "no_instance", "no_escrow"):
        return {"error": "read_error"}.get(status, status), None
    if status != "ok":
        return "unknown_read_status", None
    text = ledger["funded_amount"]
    digits = text[1:] if text and text.startswith("-") else text
    if not digits or not digits.isdigit() or not digits.isascii() or not I128_MIN <= int(text) <= I128_MAX:
        return "undecodable_amount", None
    chain = int(text)
    decimals = ledger["token_decimals"]
    if decimals is None:
        return "unknown_token_decimals", None
    if not 0 <= decimals <= 38:
        return "unsupported_token_decimals", None
    match = re.fullmatch(r"(-?[0-9]+)(?:\.([0-9]+))?", resolved["db_total_funded"])
    db_base: int | None = None
    if match is not None:
        whole, fraction = match.group(1), (match.group(2) or "").rstrip("0")
        if len(fraction) <= decimals:
            db_base = int(whole + fraction.ljust(decimals, "0"))
    delta = None if db_base is None else db_base - chain
    if ledger["escrow_invoice_id"] != resolved["invoice_id"]:
        return "invoice_id_mismatch", delta
    if match is None:
        return "invalid_db_amount", None
    if delta is None:
        return "db_amount_not_representable", None
    if delta == 0:
        return "equal", 0
    if abs(delta) <= tolerance:
        return "within_tolerance", delta
    return ("db_over_chain" if delta > 0 else "chain_over_db"), delta


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(random_frames())
def test_property_every_invoice_once_in_exactly_one_class(
    case: tuple[pl.DataFrame, pl.DataFrame, int],
) -> None:
    resolved, ledger, tolerance = case
    findings = classify(resolved, ledger, tolerance_base_units=tolerance)
    assert findings.height == resolved.height
    assert findings.schema == FINDINGS
    assert findings.get_column("invoice_id").to_list() == resolved.get_column("invoice_id").to_list()
    assert findings.get_column("class").is_in(list(CLASSES)).all()
    assert findings.get_column("reason").is_not_null().all()
    counts = count_classes(findings)
    assert counts.total == resolved.height == sum(counts.by_class().values())

    readings = {row["contract_id"]: row for row in ledger.iter_rows(named=True)}
    for want, got in zip(resolved.iter_rows(named=True), findings.iter_rows(named=True), strict=True):
        code, delta = oracle(want, readings.get(want["contract_id"]), tolerance)
        assert got["reason_code"] == code, (want, got)
        assert got["class"] == REASON_CODES[code]
        if code in ("equal", "within_tolerance", "db_over_chain", "chain_over_db", "invoice_id_mismatch"):
            assert got["delta_base_units"] == (None if delta is None else str(delta))
        if got["class"] == "match":
            assert delta is not None and abs(delta) <= tolerance
        assert (got["drift_rank"] is not None) == (code in ("db_over_chain", "chain_over_db"))
        if code in ("equal", "db_over_chain", "chain_over_db"):
            assert delta is not None
            decimals = readings[want["contract_id"]]["token_decimals"]
            chain = int(readings[want["contract_id"]]["funded_amount"])
            whole, _, fraction = want["db_total_funded"].partition(".")
            db_text = f"{format_major(int(whole + fraction), len(fraction))} USDC"
            chain_text = f"{format_major(chain, decimals)} USDC"
            if delta == 0:
                expected = f"DB {db_text} equals chain {chain_text}"
            else:
                side = "under" if delta > 0 else "over"
                expected = f"DB {db_text} vs chain {chain_text} (chain {side} by {format_major(abs(delta), decimals)})"
            assert got["reason"] == expected


def test_module_exports() -> None:
    assert classify_module.DEFAULT_TTL_WARNING_LEDGERS == 17_280 * 7


def test_both_sentence_paths_write_the_database_total_alike() -> None:
    """The vectorised sentences and the one-by-one ones (rows with a held balance) agree."""
    for total in ("0", "1250.00", "155560.584999"):
        plain = one(resolved_row(db_total_funded=total), [ledger_row(funded_amount="1")])
        held = one(
            resolved_row(db_total_funded=total),
            [ledger_row(funded_amount="1", custodial=True, chain_balance="1")],
        )
        assert held["reason"].startswith(plain["reason"] + "; the escrow holds"), (
            plain["reason"],
            held["reason"],
        )


# --- in flight (issue 11): findings on escrows that changed while the sweep ran ------------------


def _read(rows: list[dict[str, Any]], *, start: int | None, ledger: int) -> Any:
    from reconcile_audit.compute.ledger.rpc import TransportCounters
    from reconcile_audit.compute.ledger.types import LedgerRead, LedgerStats

    stats = LedgerStats.of_sweep(TransportCounters(), batches=1, entries=len(rows), seconds=1.0)
    frame = pl.DataFrame(rows, schema=LEDGER)
    return LedgerRead(frame, ledger, ledger, stats, sweep_start_ledger=start)


@pytest.mark.parametrize("spooled", [False, True], ids=["held", "spooled"])
def test_findings_that_changed_during_the_sweep_are_read_again_once(spooled: bool, tmp_path: Path) -> None:
    from tests import factories

    start = 1_000_000
    resolved = [
        resolved_row("SETTLES", contract_id=CONTRACTS[0]),  # DB 1,250.00 everywhere
        resolved_row("STILL-OFF", contract_id=CONTRACTS[1]),
        resolved_row("OLD-DRIFT", contract_id=CONTRACTS[2]),
        resolved_row("FINE", contract_id=CONTRACTS[3]),
    ]
    sweep = [
        ledger_row(
            CONTRACTS[0], escrow_invoice_id="SETTLES", funded_amount="1", last_modified_ledger=start + 5
        ),
        ledger_row(
            CONTRACTS[1], escrow_invoice_id="STILL-OFF", funded_amount="2", last_modified_ledger=start + 9
        ),
        ledger_row(
            CONTRACTS[2], escrow_invoice_id="OLD-DRIFT", funded_amount="3", last_modified_ledger=start - 1
        ),
        ledger_row(
            CONTRACTS[3], escrow_invoice_id="FINE", last_modified_ledger=start + 7
        ),  # a match: not re-read
    ]
    asked: list[list[str]] = []

    def reread(ids: list[str], _settings: Any) -> Any:
        asked.append(ids)
        again = {
            CONTRACTS[0]: ledger_row(CONTRACTS[0], escrow_invoice_id="SETTLES", latest_ledger=start + 40),
            CONTRACTS[1]: ledger_row(
                CONTRACTS[1], escrow_invoice_id="STILL-OFF", funded_amount="4", latest_ledger=start + 40
            ),
        }
        return _read([again[i] for i in ids], start=None, ledger=start + 40)

    result = classify_module.audit(
        pl.DataFrame(resolved, schema=RESOLVED),
        _read(sweep, start=start, ledger=start),
        factories.settings(),
        reread=reread,
        spool=tmp_path / "spool" if spooled else None,
    )
    assert asked == [[CONTRACTS[0], CONTRACTS[1]]]  # the findings modified after the start, once
    every = pl.concat(result.spool.every_row(result.findings)) if result.spool else result.findings
    # Spooled, the second classification replaced the first's parts; a match read again is held.
    assert every.height == 4 and result.findings.height == (3 if spooled else 4)
    rows = {row["invoice_id"]: row for row in every.iter_rows(named=True)}
    assert (rows["SETTLES"]["class"], rows["SETTLES"]["flags"]) == ("match", ["settled_during_run"])
    assert rows["STILL-OFF"]["class"] == "mismatch" and rows["STILL-OFF"]["flags"] == ["changed_during_run"]
    assert rows["STILL-OFF"]["chain_funded_base_units"] == "4"  # the re-read's values
    assert (rows["OLD-DRIFT"]["class"], rows["OLD-DRIFT"]["flags"]) == ("mismatch", [])
    assert rows["FINE"]["flags"] == []
    assert result.reread == 2 and result.ledger_max == start + 40
    assert result.counts.total == 4 and result.counts.match == 2


def test_findings_read_before_the_databases_last_sync_are_read_again() -> None:
    """The sweep starts before the extract: an escrow funded and synced in between was read at an
    earlier ledger than the database's, and its old reading is no drift."""
    from tests import factories

    read_at = 1_000_000
    resolved = [
        resolved_row("FUNDED-SINCE", contract_id=CONTRACTS[0], db_ledger_sequence=read_at + 20),
        resolved_row("REALLY-OFF", contract_id=CONTRACTS[1], db_ledger_sequence=read_at + 20),
        resolved_row("DB-OLDER", contract_id=CONTRACTS[2], db_ledger_sequence=read_at - 20),
    ]
    sweep = [
        ledger_row(c, escrow_invoice_id=i, funded_amount="1", last_modified_ledger=read_at - 100)
        for c, i in zip(CONTRACTS[:3], ("FUNDED-SINCE", "REALLY-OFF", "DB-OLDER"), strict=True)
    ]
    asked: list[list[str]] = []

    def reread(ids: list[str], _settings: Any) -> Any:
        asked.append(ids)
        again = {  # FUNDED-SINCE was funded at read_at + 10; REALLY-OFF did not move
            CONTRACTS[0]: ledger_row(
                CONTRACTS[0], escrow_invoice_id="FUNDED-SINCE", last_modified_ledger=read_at + 10
            ),
            CONTRACTS[1]: ledger_row(
                CONTRACTS[1],
                escrow_invoice_id="REALLY-OFF",
                funded_amount="1",
                last_modified_ledger=read_at - 100,
            ),
        }
        return _read([again[i] for i in ids], start=None, ledger=read_at + 40)

    result = classify_module.audit(
        pl.DataFrame(resolved, schema=RESOLVED),
        _read(sweep, start=read_at + 50, ledger=read_at),  # the sweep's start: after every modification
        factories.settings(),
        reread=reread,
    )
    assert asked == [[CONTRACTS[0], CONTRACTS[1]]]  # not DB-OLDER: the database is the older side
    rows = {row["invoice_id"]: row for row in result.findings.iter_rows(named=True)}
    assert (rows["FUNDED-SINCE"]["class"], rows["FUNDED-SINCE"]["flags"]) == ("match", ["settled_during_run"])
    assert (rows["REALLY-OFF"]["class"], rows["REALLY-OFF"]["flags"]) == ("mismatch", [])  # unchanged
    assert rows["DB-OLDER"]["class"] == "mismatch"
    assert result.reread == 2


def test_without_a_sweep_start_nothing_is_read_again() -> None:
    from tests import factories

    read = _read(
        [ledger_row(funded_amount="1", last_modified_ledger=2_000_000)], start=None, ledger=1_000_000
    )

    def reread(ids: list[str], _settings: Any) -> Any:
        raise AssertionError("nothing should be read again")

    result = classify_module.audit(
        pl.DataFrame([resolved_row()], schema=RESOLVED), read, factories.settings(), reread=reread
    )
    assert result.reread == 0 and result.counts.mismatch == 1


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(random_frames(), st.integers(min_value=2, max_value=4))
def test_property_classifying_in_parts_gives_what_one_query_gives(
    case: tuple[pl.DataFrame, pl.DataFrame, int], parts: int
) -> None:
    """Each part holds its contracts' ledger rows, so each invoice meets its escrow; drift ranks
    span every part; the parts come back in the input's order."""
    resolved, ledger, tolerance = case
    whole = classify(resolved, ledger, tolerance_base_units=tolerance)
    part_rows = max(1, resolved.height // parts)
    parted = classify(resolved, ledger, tolerance_base_units=tolerance, part_rows=part_rows)
    assert parted.equals(whole)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(random_frames(), st.integers(min_value=1, max_value=4))
def test_property_a_spooled_classification_holds_every_row(
    case: tuple[pl.DataFrame, pl.DataFrame, int], parts: int
) -> None:
    """Issue 14: the plain matches go to disk part by part. The rows held, with the spool's, are
    what classify gives, in its order; the counts and tallies are of every row."""
    resolved, ledger, tolerance = case
    whole = classify(resolved, ledger, tolerance_base_units=tolerance)
    options = classify_module._Options(tolerance, DEFAULT_TTL_WARNING_LEDGERS, None, {})
    with tempfile.TemporaryDirectory() as directory:
        spooled = classify_module._classified(
            resolved,
            ledger,
            options,
            spool_directory=Path(directory),
            part_rows=max(1, resolved.height // parts),
        )
        assert spooled.spool is not None
        result = AuditResult.of(spooled.findings, spool=spooled.spool)
        assert pl.concat(spooled.spool.every_row(result.findings)).equals(whole)
        assert result.counts == count_classes(whole) and result.tallies == Tallies.of(whole)
        held = (pl.col("class") != "match") | (pl.col("flags").list.len() > 0)
        assert result.findings.equals(whole.filter(held))
        ids = whole.get_column("invoice_id").drop_nulls()
        assert (
            result.classes_of(ids)
            .sort(pl.all())
            .equals(
                whole.filter(pl.col("invoice_id").is_not_null()).select("invoice_id", "class").sort(pl.all())
            )
        )


def test_invoices_of_one_contract_in_two_parts_both_meet_its_escrow() -> None:
    shared = CONTRACTS[0]
    resolved = [
        resolved_row("inv-a", contract_id=shared, db_total_funded=cents(10000)),
        resolved_row("inv-b", contract_id=CONTRACTS[1], db_total_funded=cents(10000)),
        resolved_row("inv-c", contract_id=shared, db_total_funded=cents(10000)),
        resolved_row("inv-d", contract_id=None, db_total_funded=cents(10000)),
    ]
    ledger = [
        ledger_row(shared, escrow_invoice_id="inv-a", funded_amount=str(10**9)),
        ledger_row(CONTRACTS[1], escrow_invoice_id="inv-b", funded_amount=str(10**9)),
    ]
    whole = classify(*frames(resolved, ledger))
    parted = classify(*frames(resolved, ledger), part_rows=1)
    assert parted.equals(whole)
    assert parted.get_column("invoice_id").to_list() == ["inv-a", "inv-b", "inv-c", "inv-d"]
    assert parted.get_column("reason_code").to_list() == [
        "equal",
        "equal",
        "invoice_id_mismatch",
        "no_address",
    ]


def test_drift_ranks_span_every_part() -> None:
    resolved = [
        resolved_row(f"inv-{n}", contract_id=CONTRACTS[n], db_total_funded=cents(100 + n)) for n in range(6)
    ]
    ledger = [
        ledger_row(CONTRACTS[n], escrow_invoice_id=f"inv-{n}", funded_amount=str(10**9)) for n in range(6)
    ]
    whole = classify(*frames(resolved, ledger))
    parted = classify(*frames(resolved, ledger), part_rows=1)
    assert (
        parted.get_column("drift_rank").to_list()
        == whole.get_column("drift_rank").to_list()
        == [1, 2, 3, 4, 5, 6]  # chain 100.00 against 1.00 + n: the smallest total drifts most
    )
