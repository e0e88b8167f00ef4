"""Exact money at any scale: the packaged extract and classify over real databases of both dialects.

The database total is compared as ``total_funded * 10^decimals`` in exact arithmetic whatever the
column's scale: a sub-cent total is never rounded into a false match, and one finer than the
token's decimals is a mismatch naming the exact remainder.
"""

from __future__ import annotations

import uuid
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stellar_sdk import StrKey

from reconcile_audit.compute import db, extract
from reconcile_audit.compute.amounts import format_major
from reconcile_audit.compute.classify import classify
from reconcile_audit.compute.resolve import resolve_addresses
from reconcile_audit.compute.schemas import LEDGER
from reconcile_audit.compute.settings import load_settings
from reconcile_audit.errors import SourceSchemaError

CONTRACTS = [StrKey.encode_contract(bytes([i]) * 32) for i in range(1, 9)]
TOKEN = StrKey.encode_contract(b"\xee" * 32)


def _with_total_column(url: str, column_type: str) -> None:
    """Recreate escrow_summaries with ``total_funded`` of ``column_type``, and empty the invoices."""
    with db.connect(url) as conn:
        conn.execute("DROP TABLE IF EXISTS escrow_summaries")
        conn.execute(
            "CREATE TABLE escrow_summaries (id BIGINT PRIMARY KEY, invoice_id UUID NOT NULL, "
            f"total_funded {column_type}, last_updated_at TIMESTAMP WITH TIME ZONE)"
        )
        conn.execute("DELETE FROM escrow_operations")
        conn.execute("DELETE FROM invoices")
        conn.commit()


def _load(url: str, totals: list[str], column_type: str) -> None:
    """One funded invoice per total, each with its escrow address; totals go in as SQL literals
    cast to the column's type, so the database itself holds them at its scale."""
    with db.connect(url) as conn:
        for index, total in enumerate(totals):
            pk = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO invoices (id, invoice_id, tenant_id, status, currency) "
                f"VALUES ('{pk}', 'INV-{index}', 't', 'funded', 'USDC')"
            )
            conn.execute(
                "INSERT INTO escrow_summaries (id, invoice_id, total_funded, last_updated_at) "
                f"VALUES ({index + 1}, '{pk}', CAST('{total}' AS {column_type}), CURRENT_TIMESTAMP)"
            )
            conn.execute(
                "INSERT INTO escrow_operations (invoice_id, operation_type, contract_id, status, completed_at) "
                f"VALUES ('{pk}', 'create', '{CONTRACTS[index]}', 'completed', CURRENT_TIMESTAMP)"
            )
        conn.commit()


def _text(unscaled: int, scale: int) -> str:
    """``unscaled / 10^scale`` as the exact decimal text a numeric(p, scale) column prints."""
    digits = str(abs(unscaled)).rjust(scale + 1, "0")
    sign = "-" if unscaled < 0 else ""
    return sign + (digits if scale == 0 else f"{digits[:-scale]}.{digits[-scale:]}")


def _ledger(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    """(contract, invoice id, funded_amount) readings of escrows in TOKEN."""
    return pl.DataFrame(
        [
            {
                "contract_id": contract,
                "read_status": "ok",
                "escrow_invoice_id": invoice_id,
                "funded_amount": str(amount),
                "escrow_status": 1,
                "funding_token": TOKEN,
                "token_decimals": None,
                "latest_ledger": 100,
                "live_until_ledger": 10**6,
            }
            for contract, invoice_id, amount in rows
        ],
        schema=LEDGER,
    )


def _audit(url: str, readings: list[tuple[str, str, int]], decimals: int) -> dict[str, dict[str, Any]]:
    invoices = extract.extract_invoices(load_settings({"database_url": url}, {}))
    resolved = resolve_addresses(invoices, None)
    ledger = _ledger(readings).with_columns(pl.lit(decimals, dtype=pl.Int64).alias("token_decimals"))
    findings = classify(resolved, ledger)
    return {row["invoice_id"]: row for row in findings.iter_rows(named=True)}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    scale=st.integers(min_value=0, max_value=12),
    decimals=st.sampled_from([0, 2, 6, 7, 9, 12, 18]),
    values=st.lists(
        st.tuples(st.integers(min_value=-(10**20), max_value=10**20), st.sampled_from([0, 0, 1, -1])),
        min_size=1,
        max_size=len(CONTRACTS),
    ),
)
def test_any_scale_is_compared_exactly_on_both_databases(
    source_url: str, scale: int, decimals: int, values: list[tuple[int, int]]
) -> None:
    column_type = f"DECIMAL(38, {scale})"
    _with_total_column(source_url, column_type)
    totals = [_text(unscaled, scale) for unscaled, _ in values]
    _load(source_url, totals, column_type)
    readings = []
    expected: dict[str, tuple[str, int | None]] = {}
    for index, (unscaled, nudge) in enumerate(values):
        invoice_id = f"INV-{index}"
        # The total in base units, exactly: unscaled * 10^(decimals - scale), whole only if it divides.
        if decimals >= scale:
            db_base: int | None = unscaled * 10 ** (decimals - scale)
        else:
            step = 10 ** (scale - decimals)
            db_base = unscaled // step if unscaled % step == 0 else None
        chain = (db_base if db_base is not None else unscaled // 10 ** (scale - decimals)) + nudge
        readings.append((CONTRACTS[index], invoice_id, chain))
        if db_base is None:
            expected[invoice_id] = ("db_amount_not_representable", None)
        elif nudge == 0:
            expected[invoice_id] = ("equal", 0)
        else:
            expected[invoice_id] = ("db_over_chain" if nudge < 0 else "chain_over_db", -nudge)
    rows = _audit(source_url, readings, decimals)
    assert set(rows) == set(expected)
    for invoice_id, (code, delta) in expected.items():
        row = rows[invoice_id]
        assert row["reason_code"] == code, (totals, decimals, row)
        assert row["class"] == ("match" if code == "equal" else "mismatch")
        assert row["delta_base_units"] == (None if delta is None else str(delta))
        # Stored and shown exactly as the database holds it, never through cents.
        index = int(invoice_id.split("-")[1])
        assert row["db_total_funded"] == totals[index]
        if code == "db_amount_not_representable":
            fraction = totals[index].partition(".")[2].rstrip("0")
            remainder = int(fraction[decimals:])
            assert (
                f"{format_major(remainder, len(fraction))} USDC of it cannot be held on chain"
                in row["reason"]
            )


def test_the_issue_sub_cent_total_is_not_a_match(source_url: str) -> None:
    """numeric(20,6) holding 155560.584999 once read "DB 155,560.58 USDC equals chain 155,560.58 USDC"."""
    _with_total_column(source_url, "DECIMAL(20, 6)")
    _load(source_url, ["155560.584999"], "DECIMAL(20, 6)")
    row = _audit(source_url, [(CONTRACTS[0], "INV-0", 1_555_605_800_000)], 7)["INV-0"]
    assert (row["class"], row["reason_code"]) == ("mismatch", "db_over_chain")
    assert row["reason"] == "DB 155,560.584999 USDC vs chain 155,560.58 USDC (chain under by 0.004999)"
    assert (row["db_funded_base_units"], row["delta_base_units"]) == ("1555605849990", "49990")


@pytest.mark.parametrize(
    ("column_type", "found"),
    [
        ("TEXT", ("text", "VARCHAR")),
        ("DOUBLE PRECISION", ("double precision", "DOUBLE")),
        ("REAL", ("real", "FLOAT")),
    ],
)
def test_a_total_column_of_the_wrong_type_is_named_with_its_type(
    source_url: str, column_type: str, found: tuple[str, str]
) -> None:
    """A text total was reported as a missing column; a float one would have been read as exact."""
    _with_total_column(source_url, column_type)
    with pytest.raises(SourceSchemaError) as raised:
        extract.extract_invoices(load_settings({"database_url": source_url}, {}))
    message = str(raised.value)
    assert (raised.value.table, raised.value.column) == ("escrow_summaries", "total_funded")
    assert any(f"the column's type is {name};" in message for name in found), message
    assert "expected numeric or decimal" in message
    assert "missing column" not in message


@pytest.mark.parametrize("column_type", ["BIGINT", "INTEGER", "NUMERIC(30, 0)", "DECIMAL(38, 12)"])
def test_exact_column_types_are_accepted(source_url: str, column_type: str) -> None:
    _with_total_column(source_url, column_type)
    _load(source_url, ["12"], column_type)
    row = _audit(source_url, [(CONTRACTS[0], "INV-0", 120_000_000)], 7)["INV-0"]
    assert (row["class"], row["reason_code"]) == ("match", "equal")
