"""The source tables reconcile-audit reads: create them and bulk-load them from polars frames.

Production databases already hold ``invoices``, ``escrow_summaries`` and ``escrow_operations``;
these helpers build the same tables for the tests and the demo, on PostgreSQL and on DuckDB,
from one portable DDL file (``sql/source_schema.sql``).

Frames accepted by :func:`load_source_rows` (extra columns are ignored; optional columns may be
omitted and load as NULL or the table default):

``invoices``
    ``id`` (String, uuid text, required), ``invoice_id`` (String, required), ``tenant_id``
    (String), ``status`` (String, required), ``amount`` (Decimal, integer or decimal text),
    ``currency`` (String), ``deleted_at`` (Datetime; naive values are taken as UTC).
``summaries`` (rows of ``escrow_summaries``)
    ``invoice_id`` (String, the ``invoices.id`` uuid, required), ``total_funded``,
    ``total_released`` and ``available_amount`` (Decimal, integer or decimal text in major units;
    null allowed), ``stellar_ledger_sequence`` (integer: the ledger the row was synced at),
    ``last_updated_at`` (Datetime).
``operations`` (rows of ``escrow_operations``)
    ``invoice_id`` (String, the ``invoices.id`` uuid, required), ``operation_type`` (String,
    required, e.g. ``create``), ``contract_id`` (String), ``status`` (String, required, e.g.
    ``completed``), ``completed_at`` (Datetime), ``stellar_transaction_hash`` (String, hex).

Money columns refuse floats: a float cannot hold a cent exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import polars as pl

from reconcile_audit.compute import db

# Table -> (column -> kind). kind: "text" | "money" | "time"; required columns listed apart.
_COLUMNS: dict[str, dict[str, str]] = {
    "invoices": {
        "id": "text",
        "invoice_id": "text",
        "tenant_id": "text",
        "status": "text",
        "amount": "money",
        "currency": "text",
        "deleted_at": "time",
    },
    "escrow_summaries": {
        "invoice_id": "text",
        "total_funded": "money",
        "total_released": "money",
        "available_amount": "money",
        "stellar_ledger_sequence": "text",  # an integer, cast by the load statement
        "last_updated_at": "time",
    },
    "escrow_operations": {
        "invoice_id": "text",
        "operation_type": "text",
        "contract_id": "text",
        "status": "text",
        "completed_at": "time",
        "stellar_transaction_hash": "text",
    },
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "invoices": ("id", "invoice_id", "status"),
    "escrow_summaries": ("invoice_id",),
    "escrow_operations": ("invoice_id", "operation_type", "status"),
}
_STATEMENT_SEPARATOR = re.compile(r"^;\s*$", re.MULTILINE)


def split_statements(sql: str) -> list[str]:
    """The statements of a project SQL file whose statements are separated by a lone ``;`` line."""
    return [part.strip() for part in _STATEMENT_SEPARATOR.split(sql) if _strip_comments(part).strip()]


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


def _named_statements(sql: str) -> dict[str, str]:
    named = {}
    for statement in split_statements(sql):
        match = re.search(r"^-- name: (\w+)$", statement, re.MULTILINE)
        if match is None:
            raise ValueError(f"statement without a '-- name:' line: {statement[:60]!r}")
        named[match.group(1)] = statement
    return named


def create_source_schema(conn: db.Connection) -> None:
    """Create the three source tables (idempotent) and commit."""
    for statement in split_statements(db.read_sql("source_schema.sql")):
        conn.execute(statement)
    conn.commit()


def _staging_frame(frame: pl.DataFrame, table: str) -> pl.DataFrame:
    """``frame`` narrowed to the table's columns, money as exact text, times as UTC instants."""
    missing = [name for name in _REQUIRED[table] if name not in frame.columns]
    if missing:
        raise ValueError(f"{table} frame is missing required columns {missing}")
    columns = []
    for name, kind in _COLUMNS[table].items():
        if name not in frame.columns:
            dtype = pl.Datetime("us", "UTC") if kind == "time" else pl.String
            columns.append(pl.lit(None, dtype=dtype).alias(name))
            continue
        dtype = frame.schema[name]
        if kind == "money":
            if dtype.is_float():
                raise TypeError(f"{table}.{name} is {dtype}; money must be Decimal, integer or text")
            columns.append(pl.col(name).cast(pl.String))
        elif kind == "time":
            if dtype == pl.Null:
                columns.append(pl.col(name).cast(pl.Datetime("us", "UTC")))
            elif isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
                columns.append(pl.col(name).dt.replace_time_zone("UTC").dt.cast_time_unit("us"))
            else:
                columns.append(pl.col(name).dt.convert_time_zone("UTC").dt.cast_time_unit("us"))
        else:
            columns.append(pl.col(name).cast(pl.String))
    return frame.select(columns)


def load_source_rows(
    conn: db.Connection,
    invoices: pl.DataFrame,
    summaries: pl.DataFrame,
    operations: pl.DataFrame,
) -> None:
    """Bulk-load the three frames (columns in the module docstring) and commit.

    Each frame goes to a staging table in one Arrow transfer (DuckDB: a registered Arrow view;
    PostgreSQL: ADBC bulk ingest into a temporary table, which uses COPY), then one
    ``INSERT ... SELECT`` per table casts it into place. Never row by row.
    """
    statements = _named_statements(db.read_sql("source_schema_load.sql"))
    frames: Mapping[str, pl.DataFrame] = {
        "invoices": invoices,
        "escrow_summaries": summaries,
        "escrow_operations": operations,
    }
    if conn.dialect == "duckdb":
        # DuckDB autocommits each statement otherwise; one transaction keeps a failed load atomic.
        conn.raw.begin()
    try:
        for table, frame in frames.items():
            staged = _staging_frame(frame, table).to_arrow(compat_level=pl.CompatLevel.oldest())
            stage_name = f"stage_{table}"
            if conn.dialect == "duckdb":
                conn.raw.register(stage_name, staged)
                try:
                    conn.execute(statements[table])
                finally:
                    conn.raw.unregister(stage_name)
            else:
                with conn.raw.cursor() as cursor:
                    cursor.adbc_ingest(stage_name, staged, mode="replace", temporary=True)
                conn.execute(statements[table])
                conn.execute(f"DROP TABLE {stage_name}")
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    if conn.dialect == "postgres":
        # Fresh tables have no statistics until autovacuum runs; without them the planner
        # guesses a handful of rows and nests loops over the extract's joins (quadratic).
        for table in frames:
            conn.execute(f"ANALYZE {table}")
        conn.commit()
