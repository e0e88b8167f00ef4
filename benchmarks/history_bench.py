"""Benchmark: the history and persist stages of a finding's life at scale, night after night.

    python benchmarks/history_bench.py --invoices 1000000 --findings 1000 --nights 5

Builds N invoices in memory, K of them mismatches, and runs R nights against one DuckDB state
file: each night compares with the earlier ones (finding ids, streaks, acknowledgements, states)
and stores its findings with their states. Before the last night, every finding is
acknowledged, so that night also judges K acknowledgements. Prints ONE JSON object: each
night's history and persist seconds, their medians, the last night's states (they must add up
to K) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl

from reconcile_audit.compute import persist
from reconcile_audit.compute.history import compare_with_history
from reconcile_audit.compute.lifecycle import AckAction
from reconcile_audit.compute.persist import RunRecord
from reconcile_audit.compute.persist import acks as acks_store
from reconcile_audit.compute.result import AuditResult
from reconcile_audit.compute.schemas import FINDINGS
from reconcile_audit.compute.settings import load_settings

DAY0 = datetime(2026, 11, 1, 2, tzinfo=UTC)


def findings_frame(invoices: int, findings: int) -> pl.DataFrame:
    """N rows in the FINDINGS schema: the first K mismatches (the database 500 over the chain)."""
    row = pl.int_range(invoices)
    drift = row < findings
    frame = pl.select(
        pl.format("INV-{}", row).alias("invoice_id"),
        pl.lit("acme").alias("tenant_id"),
        pl.when(drift).then(pl.lit("mismatch")).otherwise(pl.lit("match")).alias("class"),
        pl.when(drift).then(pl.lit("db_over_chain")).otherwise(pl.lit("equal")).alias("reason_code"),
        pl.lit("benchmark row").alias("reason"),
        pl.lit("12500000000").alias("db_funded_base_units"),
        pl.when(drift)
        .then(pl.lit("12000000000"))
        .otherwise(pl.lit("12500000000"))
        .alias("chain_funded_base_units"),
        pl.when(drift).then(pl.lit("500000000")).otherwise(pl.lit("0")).alias("delta_base_units"),
        pl.lit(7).alias("token_decimals"),
        pl.lit([], dtype=pl.List(pl.String)).alias("flags"),
    )
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in FINDINGS.items()
    )


def run(invoices: int, findings: int, nights: int, state_dir: Path) -> dict[str, Any]:
    url = f"duckdb:///{state_dir / 'state.duckdb'}"
    settings = load_settings({"database_url": url}, {})
    result = AuditResult.of(findings_frame(invoices, findings))
    history_seconds, persist_seconds, states = [], [], {}
    for night in range(nights):
        started = DAY0 + timedelta(days=night)
        if night == nights - 1 and night > 0:
            judged = acks_store.findings_with_acks(url, started, sla_days=7)
            acks_store.record(
                url,
                acks_store.targets(judged, tenant_id="acme"),
                acks_store.Acknowledgement(AckAction.ACK, "bench", "benchmark", started - timedelta(hours=1)),
            )
        begin = time.perf_counter()
        comparison = compare_with_history(result, settings, run_key=f"bench:{night}", now=started)
        history_seconds.append(round(time.perf_counter() - begin, 3))
        record = RunRecord(
            counts=result.counts,
            run_key=f"bench:{night}",
            tenant_id=None,
            started_at=started,
            finished_at=started + timedelta(minutes=5),
            status="completed",
        )
        begin = time.perf_counter()
        outcome = persist.persist_run(url, record, comparison.findings)
        persist_seconds.append(round(time.perf_counter() - begin, 3))
        if not outcome.ok:
            raise SystemExit(f"night {night} not stored: {outcome.error}")
        states = comparison.state_counts()
    return {
        "invoices": invoices,
        "findings": findings,
        "nights": nights,
        "history_seconds": history_seconds,
        "persist_seconds": persist_seconds,
        "history_median_seconds": statistics.median(history_seconds),
        "persist_median_seconds": statistics.median(persist_seconds),
        "last_night_states": states,
        "states_add_up": sum(states[s] for s in ("new", "reopened", "persisting", "acknowledged"))
        == findings,
        "all_acknowledged_last_night": nights < 2 or states["acknowledged"] == findings,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invoices", type=int, default=1_000_000)
    parser.add_argument("--findings", type=int, default=1_000)
    parser.add_argument("--nights", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="history-bench-") as state_dir:
        print(json.dumps(run(args.invoices, args.findings, args.nights, Path(state_dir))))


if __name__ == "__main__":
    main()
