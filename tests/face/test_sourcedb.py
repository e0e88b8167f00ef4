"""The source-table helpers the tests and the demo build databases with, on both backends."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import polars as pl
import pytest

from reconcile_audit.compute import db
from reconcile_audit.face.demo import sourcedb


def _frames(n: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    invoices = pl.DataFrame({"id": ids, "invoice_id": [f"INV-{i}" for i in range(n)], "status": "funded"})
    summaries = pl.DataFrame(
        {
            "invoice_id": ids,
            "total_funded": [f"{i}.{i % 100:02d}" for i in range(n)],  # decimal text is accepted
            "last_updated_at": [datetime(2026, 1, 1)] * n,  # naive: taken as UTC
        }
    )
    operations = pl.DataFrame(
        {"invoice_id": ids, "operation_type": "create", "contract_id": "C" * 56, "status": "completed"}
    )
    return invoices, summaries, operations


def test_create_is_idempotent_and_load_is_exact(database_url: str) -> None:
    invoices, summaries, operations = _frames(2_000)
    with db.connect(database_url) as conn:
        sourcedb.create_source_schema(conn)
        sourcedb.create_source_schema(conn)
        sourcedb.load_source_rows(conn, invoices, summaries, operations)
        sourcedb.load_source_rows(conn, invoices.head(0), summaries.head(0), operations.head(0))
        count, total = conn.rows("SELECT count(*), CAST(sum(total_funded) AS TEXT) FROM escrow_summaries")[0]
        assert count == 2_000
        expected = sum(Decimal(f"{i}.{i % 100:02d}") for i in range(2_000))
        assert Decimal(total) == expected
        assert conn.rows("SELECT count(DISTINCT id), min(id) FROM escrow_operations")[0] == (2_000, 1)
        assert (
            conn.rows("SELECT count(*) FROM invoices WHERE tenant_id IS NULL AND deleted_at IS NULL")[0][0]
            == 2_000
        )
        stamp = conn.rows("SELECT CAST(min(last_updated_at) AS TEXT) FROM escrow_summaries")[0][0]
        assert stamp.startswith("2026-01-01 00:00:00")


def test_money_must_not_be_float(database_url: str) -> None:
    invoices, summaries, operations = _frames(1)
    with db.connect(database_url) as conn:
        sourcedb.create_source_schema(conn)
        with pytest.raises(TypeError, match=r"escrow_summaries\.total_funded"):
            sourcedb.load_source_rows(
                conn, invoices, summaries.with_columns(pl.lit(1.5).alias("total_funded")), operations
            )


def test_missing_required_column_is_named(database_url: str) -> None:
    invoices, summaries, operations = _frames(1)
    with db.connect(database_url) as conn:
        sourcedb.create_source_schema(conn)
        with pytest.raises(ValueError, match="status"):
            sourcedb.load_source_rows(conn, invoices.drop("status"), summaries, operations)


def test_failed_load_leaves_nothing_behind(database_url: str) -> None:
    invoices, summaries, operations = _frames(3)
    with db.connect(database_url) as conn:
        sourcedb.create_source_schema(conn)
        bad_operations = operations.with_columns(pl.lit("not-a-uuid").alias("invoice_id"))
        with pytest.raises(Exception):  # noqa: B017 - the driver's own conversion error
            sourcedb.load_source_rows(conn, invoices, summaries, bad_operations)
    with db.connect(database_url) as conn:
        assert conn.rows("SELECT count(*) FROM invoices")[0][0] == 0
        assert conn.rows("SELECT count(*) FROM escrow_summaries")[0][0] == 0


def test_split_statements_ignores_comment_only_parts() -> None:
    assert sourcedb.split_statements("-- only a comment\n;\nSELECT 1\n;\n-- trailing\n") == ["SELECT 1"]
