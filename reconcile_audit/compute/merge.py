"""Merge: one run key's shards, each stored by ``run --shard I/N``, as the key's whole result.

The result holds what the shards stored (every non-match, the matches with a flag, the stranded
escrows) and the sum of their counts, so that its report, summary and metrics give the totals a
single unsharded run would. It is incomplete, and says which, when a shard is missing or did not
complete: a partial merge is never a clean result.
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from reconcile_audit.compute.persist.shards import StoredShard
from reconcile_audit.compute.result import AuditResult, Tallies
from reconcile_audit.compute.schemas import FINDINGS, ClassCounts
from reconcile_audit.compute.settings import Shard
from reconcile_audit.compute.stranded import Stranded


def merge_shards(shards: list[StoredShard], *, shard_count: int | None = None) -> AuditResult:
    """Combine the stored shards of one run key. ``shard_count`` None: the count of the shard
    that finished last (a key sharded twice, 4 ways then 2, merges the later split).

    Never raises over missing or failed shards: the result is then ``incomplete`` and names them.
    ``merged_shards`` says how many shards it combined.
    """
    if shard_count is None:
        finished = [shard for shard in shards if shard.finished_at is not None]
        latest = max(
            finished or shards, key=lambda shard: shard.finished_at or shard.started_at, default=None
        )
        shard_count = latest.count if latest is not None else None
    if shard_count is None:
        empty = AuditResult.of(
            pl.DataFrame(schema=FINDINGS), incomplete="no shard of this run key has stored a result"
        )
        return replace(empty, merged_shards=0)
    parts = sorted((shard for shard in shards if shard.count == shard_count), key=lambda shard: shard.index)
    problems = [
        f"shard {Shard(index, shard_count)} has stored no result"
        for index in sorted(set(range(shard_count)) - {shard.index for shard in parts})
    ]
    problems += [
        f"shard {shard.shard} did not complete ({shard.error_message or 'failed'})"
        for shard in parts
        if not shard.completed
    ]
    rows = _reranked(pl.concat([shard.rows for shard in parts]) if parts else pl.DataFrame(schema=FINDINGS))
    counts = ClassCounts.summed(shard.counts for shard in parts)
    ledgers_min = [shard.ledger_min for shard in parts if shard.ledger_min is not None]
    ledgers_max = [shard.ledger_max for shard in parts if shard.ledger_max is not None]
    return AuditResult(
        findings=rows,
        counts=counts,
        ledger_min=min(ledgers_min, default=None),
        ledger_max=max(ledgers_max, default=None),
        incomplete="; ".join(problems) or None,
        reread=sum(int(shard.facts.get("reread") or 0) for shard in parts),
        stranded=_stranded(parts),
        merged_shards=shard_count,
        held_tallies=Tallies.combined(
            [Tallies.from_facts(shard.facts.get("tallies") or {}) for shard in parts]
        ),
    )


def _reranked(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with ``drift_rank`` over all shards: each shard ranked its own drifts. The same
    rule as classify: absolute drift in major units, compared exactly, ties sharing a rank."""
    drifted = rows.with_row_index("_at").filter(pl.col("drift_rank").is_not_null())
    if drifted.is_empty():
        return rows
    deltas = drifted.get_column("delta_base_units").to_list()
    decimals = drifted.get_column("token_decimals").to_list()
    scale = max(decimals)
    # Integer arithmetic: |delta| * 10^(scale - decimals) orders drifts of different tokens exactly.
    sizes = [abs(int(delta)) * 10 ** (scale - places) for delta, places in zip(deltas, decimals, strict=True)]
    ordered = sorted(sizes, reverse=True)
    first_place = {}
    for place, size in enumerate(ordered, start=1):
        first_place.setdefault(size, place)
    ranks = pl.Series("drift_rank", [first_place[size] for size in sizes], dtype=pl.Int64)
    positions = drifted.get_column("_at")
    return rows.with_columns(
        pl.Series("drift_rank", rows.get_column("drift_rank")).scatter(positions, ranks).alias("drift_rank")
    )


def _stranded(parts: list[StoredShard]) -> Stranded:
    """The shards' stranded escrows together; not checked, and why, when any shard did not check."""
    if not parts:
        return Stranded.not_checked("no shard stored a result")
    stored = [(shard, shard.facts.get("stranded")) for shard in parts]
    found = [Stranded.from_facts(facts) for _shard, facts in stored if facts is not None]
    reasons = sorted(
        {f"shard {shard.shard} stored no stranded check" for shard, facts in stored if facts is None}
        | {part.skipped for part in found if part.skipped}
    )
    if reasons:
        return Stranded.not_checked("; ".join(reasons))
    return Stranded(pl.concat([part.frame for part in found]), sum(part.checked for part in found))
