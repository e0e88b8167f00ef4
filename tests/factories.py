"""Builders of sample data: FINDINGS rows and frames, history comparisons, run facts, settings.

Built directly against the documented contracts (schemas.FINDINGS, history.HistoryComparison's
fields), so these tests do not depend on the stages that produce them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from reconcile_audit.compute.amounts import format_base_units
from reconcile_audit.compute.result import Spool, Tallies, spool_part
from reconcile_audit.compute.schemas import CLASSES, FINDINGS, HELD, conform, count_classes
from reconcile_audit.compute.settings import Settings, load_settings
from reconcile_audit.output.summary import RunFacts

STARTED = datetime(2026, 11, 24, 2, 0, 3, tzinfo=UTC)
CONTRACT = "CDLZFC3SYJYDZT7K67VZ75HPJVIEUVNIXF47ZG2FB2RMQQVU2HHGCYSC"
LATEST = 51_234_019


def finding(invoice_id: str, cls: str = "match", **values: Any) -> dict[str, Any]:
    """One FINDINGS row with plausible defaults: a 1,250.00 USDC escrow, 7 decimals."""
    row: dict[str, Any] = {
        "invoice_id": invoice_id,
        "tenant_id": "acme",
        "contract_id": CONTRACT,
        "class": cls,
        "reason_code": cls,
        "reason": "DB 1,250.00 USDC equals chain 1,250.00 USDC",
        "db_funded_base_units": "12500000000",
        "chain_funded_base_units": "12500000000",
        "delta_base_units": "0",
        "drift_rank": None,
        "token_decimals": 7,
        "currency": "USDC",
        "db_total_funded": "1250.00",
        "flags": [],
        "escrow_invoice_id": invoice_id,
        "escrow_status": 1,
        "funding_token": CONTRACT,
        "address_source": "escrow_operations",
        "latest_ledger": LATEST,
        "last_modified_ledger": LATEST - 500,
        "live_until_ledger": LATEST + 2_000_000,
    }
    row.update(values)
    return row


def frame(rows: Sequence[Mapping[str, Any]], extra: Mapping[str, pl.DataType] | None = None) -> pl.DataFrame:
    schema = {**FINDINGS, **(extra or {})}
    return conform(pl.DataFrame(list(rows), schema=schema, orient="row"), FINDINGS, "test")


def mismatch(invoice_id: str, db_cents: int, chain_base: int, **values: Any) -> dict[str, Any]:
    db_base = db_cents * 100_000
    delta = db_base - chain_base
    side = "chain under" if delta > 0 else "chain over"
    values.setdefault(
        "reason",
        f"DB {format_base_units(db_cents, 2)} USDC vs chain {format_base_units(chain_base, 7)} USDC ({side})",
    )
    values.setdefault("reason_code", "amount_differs")
    return finding(
        invoice_id,
        "mismatch",
        db_funded_base_units=str(db_base),
        chain_funded_base_units=str(chain_base),
        delta_base_units=str(delta),
        db_total_funded=f"{'-' if db_cents < 0 else ''}{abs(db_cents) // 100}.{abs(db_cents) % 100:02d}",
        **values,
    )


def realistic_rows(n_match: int = 40) -> list[dict[str, Any]]:
    """A night with a few findings of every class and flag."""
    rows = [finding(f"INV-2026-{i:05d}") for i in range(n_match)]
    rows += [
        mismatch("INV-2026-10001", 125_000, 12_499_900_000),
        mismatch("INV-2026-10002", 980_050, 9_750_500_000_00 // 10),
        mismatch("INV-2026-10003", 5_000_000, 0, flags=["archived"], live_until_ledger=LATEST - 20),
        finding(
            "INV-2026-10004",
            "missing_on_chain",
            reason_code="no_escrow",
            reason="The contract instance exists but holds no Escrow entry",
            chain_funded_base_units=None,
            delta_base_units=None,
        ),
        finding(
            "INV-2026-10005",
            "unlinked",
            reason_code="no_address",
            reason="No escrow address is known for this invoice",
            contract_id=None,
            chain_funded_base_units=None,
            delta_base_units=None,
            latest_ledger=None,
            live_until_ledger=None,
        ),
        finding(
            "inv 10006!",
            "error",
            reason_code="invalid_invoice_id",
            reason="The invoice id does not match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
            chain_funded_base_units=None,
            delta_base_units=None,
        ),
        finding("INV-2026-10007", flags=["ttl_expiring"], live_until_ledger=LATEST + 9_000),
        finding("INV-2026-10008", flags=["duplicate_summary", "null_total"]),
    ]
    ranked = [r for r in rows if r["delta_base_units"] not in (None, "0")]
    ranked.sort(key=lambda r: -abs(int(r["delta_base_units"])))
    for rank, row in enumerate(ranked, start=1):
        row["drift_rank"] = rank
    return rows


@dataclass(frozen=True)
class SampleHistory:
    """Shaped like history.HistoryComparison, built directly."""

    findings: pl.DataFrame
    resolved: pl.DataFrame
    trend: pl.DataFrame
    previous_counts: Mapping[str, int] | None = field(default=None)


def history_for(
    findings: pl.DataFrame,
    *,
    persisting: Mapping[str, int] | None = None,
    resolved: Sequence[tuple[str, str, str]] = (),
    runs: int = 29,
    matches: int = 40,
    previous_counts: Mapping[str, int] | None = None,
) -> SampleHistory:
    """``persisting``: invoice_id -> age in days; every other non-match finding is new.

    The trend holds ``runs`` earlier runs, then the current one (``current`` true), as
    history.compare_with_history returns it."""
    persisting = dict(persisting or {})
    with_state = findings.with_columns(
        pl.when(pl.col("class") == "match")
        .then(None)
        .when(pl.col("invoice_id").is_in(list(persisting)))
        .then(pl.lit("persisting"))
        .otherwise(pl.lit("new"))
        .alias("finding_state"),
        pl.col("invoice_id").replace_strict(persisting, default=0, return_dtype=pl.Int64).alias("age_days"),
    ).with_columns(
        pl.when(pl.col("class") == "match")
        .then(None)
        .otherwise(pl.lit(STARTED) - pl.duration(days=pl.col("age_days")))
        .alias("first_seen_at"),
        pl.when(pl.col("class") == "match").then(None).otherwise(pl.col("age_days")).alias("age_days"),
    )
    resolved_frame = pl.DataFrame(
        [
            {
                "invoice_id": inv,
                "tenant_id": "acme",
                "class": cls,
                "reason": reason,
                "contract_id": CONTRACT,
                "reason_code": cls,
                "first_seen_at": STARTED - timedelta(days=3),
                "resolved_as": "match",
            }
            for inv, cls, reason in resolved
        ],
        schema={
            "invoice_id": pl.String,
            "tenant_id": pl.String,
            "class": pl.String,
            "reason": pl.String,
            "contract_id": pl.String,
            "reason_code": pl.String,
            "first_seen_at": pl.Datetime("us", "UTC"),
            "resolved_as": pl.String,
        },
    )
    trend_rows = []
    for i in range(runs):
        counts = {
            "match": matches,
            "mismatch": (i % 5),
            "missing_on_chain": 1 if i > 20 else 0,
            "unlinked": 1,
            "error": i % 3,
        }
        trend_rows.append(
            {
                "run_key": f"nightly-{i:02d}",
                "started_at": STARTED - timedelta(days=runs - i),
                "total": sum(counts.values()),
                **counts,
                "current": False,
            }
        )
    current = {c: findings.filter(pl.col("class") == c).height for c in CLASSES}
    previous_rows = list(trend_rows)
    trend_rows.append(
        {"run_key": "current", "started_at": STARTED, "total": findings.height, **current, "current": True}
    )
    trend = pl.DataFrame(
        trend_rows,
        schema={
            "run_key": pl.String,
            "started_at": pl.Datetime("us", "UTC"),
            "total": pl.Int64,
            **dict.fromkeys(CLASSES, pl.Int64),
            "current": pl.Boolean,
        },
    )
    if previous_counts is None and previous_rows:
        previous_counts = {c: previous_rows[-1][c] for c in CLASSES}
    return SampleHistory(with_state, resolved_frame, trend, previous_counts)


def facts(status: str = "findings", **values: Any) -> RunFacts:
    base: dict[str, Any] = {
        "run_id": "20261124T020003Z-acme",
        "status": status,
        "started_at": STARTED,
        "finished_at": STARTED + timedelta(seconds=74.2),
        "tenant_id": "acme",
        "ledger_min": LATEST - 14,
        "ledger_max": LATEST,
        "duration_seconds": 74.2,
        "tool_version": "0.1.0",
    }
    base.update(values)
    return RunFacts(**base)


def settings(environ: Mapping[str, str] | None = None, **params: Any) -> Settings:
    """Settings from ``params`` over ``environ`` only: never the developer's own environment."""
    return load_settings({name: value for name, value in params.items() if value is not None}, environ or {})


def spooled(findings: pl.DataFrame, directory: Path, part_rows: int) -> tuple[pl.DataFrame, Spool]:
    """``findings`` spooled as classify spools its parts (``result.spool_part``): the rows a
    spooled result holds (``schemas.HELD``), and the spool."""
    directory.mkdir(parents=True, exist_ok=True)
    frame = findings.with_row_index("_row")
    for index, start in enumerate(range(0, max(frame.height, 1), part_rows)):
        spool_part(frame.slice(start, part_rows), directory, index)
    held = frame.filter(HELD)
    spool = Spool(directory, part_rows, held.get_column("_row"), count_classes(frame), Tallies.of(frame))
    return held.drop("_row"), spool
