"""Merge on PostgreSQL and DuckDB: shard results stored by persist_run, read back, and combined
into the key's whole result (the end-to-end proof with real runs is tests/face/test_shards.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from reconcile_audit.compute.merge import merge_shards
from reconcile_audit.compute.persist import RunRecord, persist_run
from reconcile_audit.compute.persist.shards import read_shards
from reconcile_audit.compute.result import AuditResult
from reconcile_audit.compute.schemas import STRANDED, RunStatus
from reconcile_audit.compute.settings import Shard
from reconcile_audit.compute.stranded import Stranded
from tests import factories

KEY = "all:2026-11-29"
T0 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def shard_result(rows: list[dict], *, reread: int = 0, stranded: Stranded | None = None) -> AuditResult:
    return AuditResult.of(
        factories.frame(rows), ledger_min=100, ledger_max=120, reread=reread, stranded=stranded
    )


def store(url: str, shard: Shard, result: AuditResult, *, status: RunStatus = RunStatus.COMPLETED) -> None:
    record = RunRecord(
        run_key=KEY,
        tenant_id=None,
        started_at=T0 + timedelta(seconds=shard.index),
        finished_at=T0 + timedelta(minutes=1, seconds=shard.index),
        status=status,
        counts=result.counts,
        ledger_min=result.ledger_min,
        ledger_max=result.ledger_max + shard.index,
        error_message="incomplete: the RPC was unavailable" if status == RunStatus.INCOMPLETE else None,
        shard=shard,
    )
    outcome = persist_run(url, record, result.findings, result.stranded.frame, result.stored_facts())
    assert outcome.ok, outcome.error


def stranded_row(contract_id: str) -> dict:
    return {name: None for name in STRANDED} | {
        "invoice_id": "GONE-1",
        "invoice_pk": "pk-9",
        "status": "draft",
        "deleted_at": "2026-11-01 00:00:00+00",
        "contract_id": contract_id,
        "reason_code": "stranded_funds",
        "reason": "the escrow holds 250.00 USDC",
        "token_decimals": 7,
        "chain_balance_base_units": "2500000000",
        "token_symbol": "USDC",
    }


# Shard 0 holds the smaller drift (rank 1 there), shard 1 the larger (rank 1 there too).
SHARD_0 = [
    factories.finding("A-1"),
    factories.finding("A-2", "mismatch", delta_base_units="100", drift_rank=1, reason_code="db_over_chain"),
    factories.finding("A-3", flags=["ttl_expiring"]),  # a flagged match: stored, listed
    factories.finding("A-4", "error", db_funded_base_units=None, delta_base_units=None),
]
SHARD_1 = [
    factories.finding("B-1"),
    factories.finding("B-2"),
    # 5.00 of a 2-decimal token outranks 0.00001 of a 7-decimal one: ranked in major units.
    factories.finding(
        "B-3",
        "mismatch",
        delta_base_units="-500",
        token_decimals=2,
        drift_rank=1,
        reason_code="chain_over_db",
    ),
]


def test_two_shards_merge_into_the_whole_runs_counts_rows_and_ranks(state_url):
    stranded = Stranded(pl.DataFrame([stranded_row(factories.CONTRACT)], schema=STRANDED), checked=3)
    store(state_url, Shard(0, 2), shard_result(SHARD_0, reread=2, stranded=stranded))
    store(
        state_url,
        Shard(1, 2),
        shard_result(SHARD_1, stranded=Stranded(pl.DataFrame(schema=STRANDED), checked=1)),
    )
    result = merge_shards(read_shards(state_url, KEY, None))
    assert result.merged_shards == 2 and result.incomplete is None
    assert result.counts.total == 7 and result.counts.match == 4 and result.counts.mismatch == 2
    assert result.counts.error == 1 and result.status == "findings"
    # Plain matches are counted, not held; the flagged match is held.
    assert sorted(result.findings.get_column("invoice_id")) == ["A-2", "A-3", "A-4", "B-3"]
    ranks = dict(result.findings.select("invoice_id", "drift_rank").iter_rows())
    assert ranks == {"B-3": 1, "A-2": 2, "A-3": None, "A-4": None}
    exact = dict(result.findings.select("invoice_id", "delta_base_units").iter_rows())
    assert exact["B-3"] == "-500" and exact["A-2"] == "100"
    assert result.findings.filter(pl.col("invoice_id") == "A-3").get_column("flags").to_list() == [
        ["ttl_expiring"]
    ]
    assert (result.ledger_min, result.ledger_max, result.reread) == (100, 121, 2)
    # The stranded escrows whole, with what the stored rows alone lack (status, deletion time).
    assert result.stranded.checked == 4 and result.stranded.frame.height == 1
    row = result.stranded.frame.row(0, named=True)
    assert (row["status"], row["deleted_at"], row["token_symbol"]) == (
        "draft",
        "2026-11-01 00:00:00+00",
        "USDC",
    )
    assert not result.holds_every_row and result.tallies.balances_checked == 0


def test_a_missing_or_failed_shard_makes_the_merge_incomplete(state_url):
    store(state_url, Shard(0, 3), shard_result(SHARD_0))
    store(state_url, Shard(1, 3), shard_result(SHARD_1), status=RunStatus.INCOMPLETE)
    result = merge_shards(read_shards(state_url, KEY, None))
    assert result.status == "incomplete"
    assert "shard 2/3 has stored no result" in result.incomplete
    assert "shard 1/3 did not complete (incomplete: the RPC was unavailable)" in result.incomplete


def test_the_latest_split_is_merged_and_a_rerun_shard_replaces_its_row(state_url):
    store(state_url, Shard(0, 2), shard_result(SHARD_0))
    store(state_url, Shard(0, 2), shard_result(SHARD_0[:1]))  # the shard rerun: one invoice now
    store(state_url, Shard(1, 2), shard_result(SHARD_1))
    result = merge_shards(read_shards(state_url, KEY, None), shard_count=2)
    assert result.counts.total == 1 + len(SHARD_1)


def test_no_shard_at_all_is_incomplete_never_clean(state_url):
    result = merge_shards(read_shards(state_url, "all:never", None))
    assert result.status == "incomplete" and result.counts.total == 0


@pytest.mark.parametrize("count", [1, 3])
def test_shard_rows_never_reach_history_or_the_counter(state_url, count):
    from reconcile_audit.compute import persist

    for index in range(count):
        store(state_url, Shard(index, count), shard_result(SHARD_0))
    assert persist.cumulative_mismatches(state_url, None) == 0
    assert persist.latest_summary(state_url, None).status == "not_run"
