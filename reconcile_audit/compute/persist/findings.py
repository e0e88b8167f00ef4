"""The findings a run stores: every non-match row (and every match with a flag) in
``reconciliation_findings``, and the capped, worst-first digest of the non-match rows in
``reconciliation_runs.results``."""

from __future__ import annotations

from typing import Any, Final

import polars as pl

from reconcile_audit.compute.db import Connection, read_sql
from reconcile_audit.compute.lifecycle import with_identity
from reconcile_audit.compute.schemas import (
    CLASS_ORDER,
    FINDINGS,
    HELD,
    LIFECYCLE,
    STRANDED,
    STRANDED_CLASS,
    conform,
)

RESULTS_JSON_CAP: Final = 1000
"""At most this many non-match rows go into ``reconciliation_runs.results``."""

RESULTS_COLUMNS: Final = (
    "finding_no",
    "invoice_id",
    "tenant_id",
    "contract_id",
    "class",
    "reason_code",
    "reason",
    "db_funded_base_units",
    "chain_funded_base_units",
    "delta_base_units",
    "token_decimals",
    "flags",
)

# Worst first within the capped digest: drifts have a rank; other classes in CLASS_ORDER, the
# order the report lists them in.
RESULTS_ORDER: Final = (
    "drift_rank ascending (largest drift first), then class in the order "
    + ", ".join(CLASS_ORDER[:-1])
    + ", then finding_no"
)
_STAGING: Final = "reconcile_findings_staging"
# The lifecycle columns a stored finding keeps: enough to judge an acknowledgement later.
STORED_LIFECYCLE: Final = pl.Schema(
    {name: LIFECYCLE[name] for name in ("finding_id", "evidence", "finding_state", "first_seen_at")}
)


def stored_rows(findings: pl.DataFrame) -> pl.DataFrame:
    """The FINDINGS rows to store: every class but ``match``, and the matches that carry a flag
    (a merge of shards lists those as one run does), numbered by frame position, with their
    finding id and evidence, and the state and open period that history gave them (null when
    ``findings`` carries no history).

    NUL characters, which PostgreSQL text cannot hold, become U+FFFD on both dialects so that
    one hostile id cannot keep a whole run out of the database.
    """
    frame = conform(findings, FINDINGS, "persist")
    frame = frame.select(*FINDINGS, *[name for name in STORED_LIFECYCLE if name in frame.columns])
    # Numbered by position first, then narrowed: the identity and NUL escaping are computed for
    # the stored rows only (at 1M invoices, for every row they cost 0.4 GB and most of a second).
    kept = frame.with_row_index("finding_no", offset=1).filter(HELD)
    return _storable(kept.drop("finding_no"), numbers=kept.get_column("finding_no"))


def non_match_rows(findings: pl.DataFrame) -> pl.DataFrame:
    """The stored rows that are findings: every class but ``match``."""
    return stored_rows(findings).filter(pl.col("class").ne_missing("match"))


def stranded_rows(stranded: pl.DataFrame, *, first_no: int) -> pl.DataFrame:
    """The STRANDED rows as stored beside the findings: class ``stranded``, numbered from
    ``first_no`` (after the run's findings), in the shape :func:`non_match_rows` gives."""
    frame = conform(stranded, STRANDED, "persist").select(list(STRANDED))
    shaped = frame.select(
        pl.col(name) if name in STRANDED else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in FINDINGS.items()
    ).with_columns(
        pl.lit(STRANDED_CLASS).alias("class"),
        pl.lit([], dtype=FINDINGS["flags"]).alias("flags"),
    )
    return _storable(shaped, numbers=pl.int_range(first_no, first_no + shaped.height, eager=True))


def _storable(frame: pl.DataFrame, *, numbers: pl.Series) -> pl.DataFrame:
    """``frame`` (FINDINGS columns, and any of the lifecycle's) with ``numbers`` as ``finding_no``,
    every stored lifecycle column, NUL characters as U+FFFD."""
    lifecycle = [
        pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in STORED_LIFECYCLE.items()
        if name not in frame.columns
    ]
    frame = with_identity(frame.with_columns(lifecycle).drop("finding_id", "evidence"))
    strings = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    return frame.with_columns(pl.col(strings).str.replace_all("\x00", "\ufffd", literal=True)).insert_column(
        0, numbers.cast(pl.Int32).alias("finding_no")
    )


def results_digest(rows: pl.DataFrame, *, cap: int = RESULTS_JSON_CAP) -> dict[str, Any]:
    """The capped JSON value for ``reconciliation_runs.results`` from :func:`non_match_rows`."""
    worst = (
        rows.sort(
            pl.col("drift_rank"),
            pl.col("class").replace_strict(
                {name: rank for rank, name in enumerate(CLASS_ORDER)},
                default=len(CLASS_ORDER),
                return_dtype=pl.Int64,
            ),
            pl.col("finding_no"),
            nulls_last=True,
        )
        .head(cap)
        .select(RESULTS_COLUMNS)
    )
    return {
        "cap": cap,
        "non_match": rows.height,
        "omitted": rows.height - worst.height,
        "order": RESULTS_ORDER,
        "rows": worst.to_dicts(),
    }


def insert_findings(conn: Connection, run_id: int, rows: pl.DataFrame) -> None:
    if rows.is_empty():
        return
    # The oldest compat level gives large_string instead of string_view, which ADBC's
    # PostgreSQL COPY writer does not take.
    table = rows.to_arrow(compat_level=pl.CompatLevel.oldest())
    if conn.dialect == "postgres":
        with conn.raw.cursor() as cursor:
            cursor.adbc_ingest(_STAGING, table, mode="create", temporary=True)
        conn.execute(read_sql("persist/insert_findings.postgres.sql"), (run_id,))
        conn.execute(read_sql("persist/drop_staging.postgres.sql"))
        return
    conn.raw.register(_STAGING, table)
    try:
        conn.execute(read_sql("persist/insert_findings.duckdb.sql"), (run_id,))
    finally:
        conn.raw.unregister(_STAGING)
