"""The stored results of a run key's shards, read back for ``reconcile-audit merge``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from reconcile_audit.compute.db import read_sql
from reconcile_audit.compute.persist.session import describe_error, read_frame, state_session, table_exists
from reconcile_audit.compute.schemas import COUNT_NAMES, FINDINGS, STRANDED_CLASS, ClassCounts, conform
from reconcile_audit.compute.settings import Shard
from reconcile_audit.errors import PersistError


@dataclass(frozen=True)
class StoredShard:
    """One shard's stored result: its row of ``reconciliation_runs`` and the FINDINGS rows stored
    with it (non-match and flagged matches; its stranded escrows are whole in ``facts``)."""

    index: int
    count: int
    completed: bool
    started_at: datetime
    finished_at: datetime | None
    counts: ClassCounts
    ledger_min: int | None
    ledger_max: int | None
    error_message: str | None
    facts: dict[str, Any]
    rows: pl.DataFrame

    @property
    def shard(self) -> Shard:
        return Shard(self.index, self.count)


def read_shards(
    url: str, run_key: str, tenant_id: str | None, *, with_rows: bool = True
) -> list[StoredShard]:
    """Every stored shard result of ``run_key`` in ``tenant_id``'s scope, by shard count and index.
    ``with_rows=False`` reads the run rows alone, without their findings (a wait that polls).
    Raises :class:`PersistError` when the state database cannot be read."""
    try:
        with state_session(url) as conn:
            if not table_exists(conn, "reconciliation_runs"):
                return []
            runs = read_frame(conn, read_sql("persist/shard_runs.sql"), (run_key, tenant_id))
            shards = []
            for run in runs.iter_rows(named=True):
                rows = (
                    read_frame(conn, read_sql("persist/run_findings.sql"), (run["id"],))
                    if with_rows
                    else pl.DataFrame(schema={"finding_no": pl.Int32, **FINDINGS})
                )
                shards.append(_stored_shard(run, rows))
    except Exception as exc:
        raise PersistError(f"cannot read the shards of run {run_key!r}: {describe_error(exc, url)}") from exc
    return shards


def _stored_shard(run: dict[str, Any], rows: pl.DataFrame) -> StoredShard:
    digest = json.loads(run["results"]) if run["results"] else {}
    return StoredShard(
        index=int(run["shard_index"]),
        count=int(run["shard_count"]),
        completed=run["status"] == "completed",
        started_at=run["started_at"],
        finished_at=run["finished_at"],
        counts=ClassCounts.of({name: int(run[name]) for name in COUNT_NAMES}),
        ledger_min=run["ledger_min"],
        ledger_max=run["ledger_max"],
        error_message=run["error_message"],
        facts=digest.get("facts") or {},
        rows=conform(
            rows.filter(pl.col("class") != STRANDED_CLASS).drop("finding_no"), FINDINGS, "stored shard"
        ).select(list(FINDINGS)),
    )
