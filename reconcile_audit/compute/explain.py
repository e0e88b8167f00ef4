"""Explain: why each drift happened, from the database's own operations and the escrow's events.

For the worst mismatches of a run whose money moved (``EXPLAINABLE``; at most
``settings.explain_max``, drift rank first):

- **The database's operations** on the invoice that carry a ``stellar_transaction_hash`` (the
  latest three, ``sql/explain_operations.sql``): ``getTransaction`` says whether each landed.
  SUCCESS on one the database marks failed, pending, processing or cancelled, and FAILED on one
  it marks completed, are causes. NOT_FOUND means "not on chain" only when the operation is newer
  than the RPC's oldest ledger; before that the RPC cannot know.
- **The escrow's events** since the database last synced it (``db_ledger_sequence``; without it,
  the start of the RPC's retention window): one ``getEvents`` scan for every finding
  (:mod:`reconcile_audit.compute.ledger.activity`). The events that move what the finding compares
  are summed exactly and set against the finding's gap: ``funded_amount`` (``escrow_funded`` adds,
  ``escrow_unfunded`` takes away) for an amount drift, ``DistributedPrincipal`` (refunds and
  withdrawals, fee included) for ``released_mismatch``.

Each explained finding gets a short ``explanation`` and an ``explain_outcome``:

- ``explained``: the events cover the whole gap, or a transaction's fate contradicts the database;
- ``partial``: they cover part of it (or, where no gap is summed, there are events to read);
- ``unexplained``: nothing since the database's last sync, and no operation disagrees;
- ``unavailable``: the RPC could not say (a method it lacks, a fault after retries).

Nothing here changes a class or fails the run: the explanation is evidence beside the finding.
The events and transactions behind each one are the ``DRIFT_EVENTS`` frame
(``drift_events.parquet``), which the report draws as a timeline.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import polars as pl

from reconcile_audit.compute import db
from reconcile_audit.compute.amounts import format_major, one_line
from reconcile_audit.compute.ledger.activity import (
    ChainActivity,
    EscrowEvent,
    EventScan,
    TransactionLookup,
    read_activity,
)
from reconcile_audit.compute.schemas import DRIFT_EVENTS, EXPLANATIONS
from reconcile_audit.compute.settings import Settings
from reconcile_audit.errors import ReconcileAuditError

log = logging.getLogger(__name__)

OPERATIONS_SQL: Final = "explain_operations.sql"
SYNCED_AT_SQL: Final = "explain_synced_at.sql"
HISTORY_SOURCE: Final = "Hubble's history_contract_events table"
NOT_COMPLETED: Final = frozenset({"pending", "processing", "failed", "cancelled"})
_TX_HASH: Final = re.compile(r"[0-9a-f]{64}")  # as the SQL hands it over, lower-cased


class ExplainOutcome(StrEnum):
    EXPLAINED = "explained"
    PARTIAL = "partial"
    UNEXPLAINED = "unexplained"
    UNAVAILABLE = "unavailable"


OPERATIONS: Final = pl.Schema(
    {
        "invoice_id": pl.String,
        "operation_id": pl.String,
        "operation_type": pl.String,
        "status": pl.String,
        "completed_at": pl.Datetime("us", "UTC"),
        "tx_hash": pl.String,
    }
)
# What each reason's gap is made of: the events that move the compared chain value, with sign.
_MOVES: Final[Mapping[str, Mapping[str, tuple[tuple[str, int], ...]]]] = {
    "amount": {
        "escrow_funded": (("amount", 1),),
        "escrow_unfunded": (("amount", -1),),
    },
    "released": {
        "investor_refunded_evt": (("amount", 1),),
        "sme_withdrew": (("amount", 1), ("fee", 1)),
    },
}
_FAMILY: Final = {"db_over_chain": "amount", "chain_over_db": "amount", "released_mismatch": "released"}


@dataclass(frozen=True)
class Explained:
    """The explain stage's result: one row per explained finding (``EXPLANATIONS``), the events and
    transactions behind them (``DRIFT_EVENTS``), and what limited it."""

    explanations: pl.DataFrame
    events: pl.DataFrame
    considered: int = 0  # mismatches in the run
    skipped: int = 0  # beyond RECONCILE_EXPLAIN_MAX
    seconds: float = 0.0
    rpc_requests: int = 0
    notes: tuple[str, ...] = ()

    def summary_line(self) -> str:
        counts = ", ".join(f"{number} {outcome}" for outcome, number in self.counts().items() if number)
        beyond = f"; {self.skipped:,} more beyond RECONCILE_EXPLAIN_MAX" if self.skipped else ""
        notes = "".join(f"; {note}" for note in self.notes)
        return (
            f"{self.explanations.height:,} of {self.considered:,} mismatches explained ({counts or 'none'}) "
            f"in {self.seconds:.2f} s with {self.rpc_requests:,} RPC requests{beyond}{notes}"
        )

    def counts(self) -> dict[str, int]:
        found = dict(self.explanations.group_by("explain_outcome").len().iter_rows())
        return {outcome.value: int(found.get(outcome.value, 0)) for outcome in ExplainOutcome}

    def timeline(self, invoice_id: str | None) -> pl.DataFrame:
        return self.events.filter(pl.col("invoice_id") == invoice_id).sort("ledger", nulls_last=True)


# Mismatches whose cause the chain's history can hold: the escrow's money moved, or the database
# missed it. An escrow of another invoice or in the wrong token is a set-up fault, not a movement.
EXPLAINABLE: Final = frozenset(
    {"db_over_chain", "chain_over_db", "released_mismatch", "available_mismatch", "balance_short"}
)


def candidates(findings: pl.DataFrame, limit: int) -> tuple[pl.DataFrame, int]:
    """The mismatches to explain (``EXPLAINABLE``), worst first (drift rank, then reason and
    invoice), and how many that leaves out."""
    mismatches = findings.filter(
        pl.col("reason_code").is_in(list(EXPLAINABLE)) & pl.col("contract_id").is_not_null()
    )
    ordered = mismatches.sort("drift_rank", "reason_code", "invoice_id", nulls_last=True)
    picked = ordered.head(limit)
    return picked, mismatches.height - picked.height


def read_operations(
    settings: Settings, invoice_ids: Sequence[str]
) -> tuple[pl.DataFrame, dict[str, datetime]]:
    """``OPERATIONS``: the latest three operations with a transaction hash of each invoice; and
    when each invoice's latest summary row was last updated (for those synced at no ledger)."""
    if not invoice_ids:
        return pl.DataFrame(schema=OPERATIONS), {}
    url = settings.source_url()
    ids = [list(invoice_ids)]
    with db.connect_source(url) as conn:
        synced_at = {
            invoice_id: moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
            for invoice_id, moment in conn.rows(db.read_sql(SYNCED_AT_SQL), ids)
        }
        table = conn.arrow(db.read_sql(OPERATIONS_SQL), ids)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    operations = frame.select(
        pl.col(name).cast(dtype).dt.convert_time_zone("UTC")
        if isinstance(dtype, pl.Datetime)
        else pl.col(name).cast(dtype)
        for name, dtype in OPERATIONS.items()
    )
    return operations, synced_at


def explain_findings(findings: pl.DataFrame, settings: Settings) -> Explained:
    """Explain the worst mismatches of ``findings`` (module docstring). Never raises for what the
    database or the RPC answers; what could not be read is said in the explanations and ``notes``."""
    started = time.perf_counter()
    picked, skipped = candidates(findings, settings.explain_max)
    considered = picked.height + skipped
    if picked.is_empty():
        capped = (f"RECONCILE_EXPLAIN_MAX is {settings.explain_max}: no finding was explained",)
        return Explained(
            pl.DataFrame(schema=EXPLANATIONS),
            pl.DataFrame(schema=DRIFT_EVENTS),
            considered,
            skipped,
            notes=capped if considered else (),
        )
    notes: list[str] = []
    invoice_ids = [i for i in picked.get_column("invoice_id").to_list() if i is not None]
    try:
        operations, synced_at = read_operations(settings, invoice_ids)
        operations_note = None
    except Exception as exc:  # a schema without the hash column, a lost connection
        reason = exc if isinstance(exc, ReconcileAuditError) else type(exc).__name__
        operations_note = f"the database's operations were not read ({settings.redact(str(reason))[:200]})"
        notes.append(operations_note)
        operations, synced_at = pl.DataFrame(schema=OPERATIONS), {}
    synced = picked.get_column("db_ledger_sequence")
    start = None if synced.null_count() else int(synced.min()) + 1  # type: ignore[arg-type]
    try:
        activity = read_activity(
            settings,
            contract_ids=picked.get_column("contract_id").to_list(),
            start_ledger=start,
            tx_hashes=[
                h for h in operations.get_column("tx_hash").drop_nulls().to_list() if _TX_HASH.fullmatch(h)
            ],
        )
    except ReconcileAuditError as exc:  # no RPC configured: nothing can be said
        activity = ChainActivity(EventScan(unavailable=str(exc)), {})
    if activity.scan.unavailable:
        notes.append(f"escrow events unavailable: {activity.scan.unavailable}")
    if activity.scan.undecodable:
        notes.append(f"{activity.scan.undecodable} escrow events did not decode and were left out")
    failed_lookups = [t.unavailable for t in activity.transactions.values() if t.unavailable]
    if failed_lookups:
        notes.append(f"{len(failed_lookups)} transaction lookups unavailable (first: {failed_lookups[0]})")
    # RPC faults quote the URL they failed on, which may carry a key.
    notes = [settings.redact(note) for note in notes]
    for note in notes:
        # The run goes on, but the operator must hear why the causes are missing.
        log.warning("explain: %s", note)
    by_contract: dict[str, list[EscrowEvent]] = {}
    for event in activity.scan.events:
        by_contract.setdefault(event.contract_id, []).append(event)
    ops_by_invoice = operations.partition_by("invoice_id", as_dict=True, include_key=True)
    rows: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    for finding in picked.iter_rows(named=True):
        ops = ops_by_invoice.get((finding["invoice_id"],), pl.DataFrame(schema=OPERATIONS))
        text, outcome, lines = _explain_one(
            finding,
            by_contract.get(finding["contract_id"], []),
            ops,
            activity,
            operations_note,
            synced_at.get(finding["invoice_id"]),
        )
        rows.append(
            {
                "invoice_id": finding["invoice_id"],
                "explanation": settings.redact(text),
                "explain_outcome": outcome.value,
            }
        )
        timeline.extend({**line, "note": settings.redact(line["note"])} for line in lines)
    seconds = time.perf_counter() - started
    explained = Explained(
        pl.DataFrame(rows, schema=EXPLANATIONS),
        pl.DataFrame(timeline, schema=DRIFT_EVENTS).sort("invoice_id", "ledger", nulls_last=True),
        considered,
        skipped,
        seconds,
        activity.scan.requests + len(activity.transactions),
        tuple(notes),
    )
    log.info(
        "explain: %d findings in %.2f s (%s), %d left beyond RECONCILE_EXPLAIN_MAX",
        picked.height,
        seconds,
        ", ".join(f"{k} {v}" for k, v in explained.counts().items()),
        skipped,
    )
    return explained


def _money(value: int, finding: Mapping[str, Any]) -> str:
    decimals = finding["token_decimals"] if finding["token_decimals"] is not None else 0
    currency = f" {finding['currency']}" if finding["currency"] else ""
    return f"{format_major(value, decimals)}{currency}"


def _short(tx_hash: str | None) -> str:
    return f"{tx_hash[:8]}…" if tx_hash else "?"


def _when(ledger: int | None, closed_at: datetime | None) -> str:
    if ledger is None:
        return "at an unknown ledger"
    at = f" ({closed_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC)" if closed_at is not None else ""
    return f"at ledger {ledger:,}{at}"


def _gap(finding: Mapping[str, Any], family: str | None) -> int | None:
    """What the chain shows beyond the database, in base units, for the finding's compared value."""
    if family == "amount" and finding["delta_base_units"] is not None:
        return -int(finding["delta_base_units"])
    if family == "released" and finding["db_released_base_units"] is not None:
        return int(finding["chain_distributed_base_units"] or 0) - int(finding["db_released_base_units"])
    return None


def _movement(events: Iterable[EscrowEvent], family: str) -> int:
    moves = _MOVES[family]
    return sum(
        sign * event.amounts.get(name, 0) for event in events for name, sign in moves.get(event.event, ())
    )


@dataclass(frozen=True)
class _Verdict:
    """What one database operation's transaction says: a sentence when it says something, and
    whether the chain contradicts the database (which explains a drift by itself)."""

    note: str | None = None
    contradicts: bool = False


def _operations(
    ops: pl.DataFrame, activity: ChainActivity, finding: Mapping[str, Any], base: Mapping[str, Any]
) -> tuple[list[str], list[dict[str, Any]], bool, list[EscrowEvent]]:
    """The sentences and timeline rows of the finding's operations, whether one contradicts the
    database, and the escrow events of the transactions that landed while the database says not."""
    parts: list[str] = []
    lines: list[dict[str, Any]] = []
    contradicted = False
    landed: list[EscrowEvent] = []
    for op in ops.iter_rows(named=True):
        lookup = activity.transactions.get(op["tx_hash"] or "")
        verdict = _operation_verdict(op, lookup, finding)
        contradicted = contradicted or verdict.contradicts
        if verdict.note is not None:
            parts.append(verdict.note)
        ours = [e for e in lookup.events if e.contract_id == finding["contract_id"]] if lookup else []
        if lookup is not None and lookup.status == "SUCCESS" and op["status"] in NOT_COMPLETED:
            landed.extend(ours)
        lines.append(
            {
                **base,
                "source": "transaction",
                "ledger": lookup.ledger if lookup else None,
                "closed_at": lookup.closed_at if lookup else None,
                "event": op["operation_type"],
                "amount_base_units": _amount_text(ours),
                "investor": None,
                "tx_hash": op["tx_hash"],
                "tx_status": lookup.status if lookup else "unavailable",
                "db_status": op["status"],
                "note": verdict.note or "agrees with the database",
            }
        )
    return parts, lines, contradicted, landed


def _event_line(event: EscrowEvent, finding: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    amount = event.amounts.get("amount")
    return {
        **base,
        "source": "event",
        "ledger": event.ledger,
        "closed_at": event.closed_at,
        "event": event.event,
        "amount_base_units": None if amount is None else str(amount),
        "investor": event.investor,
        "tx_hash": event.tx_hash,
        "tx_status": None,
        "db_status": None,
        "note": _event_note(event, finding),
    }


def _coverage(
    since: list[EscrowEvent], finding: Mapping[str, Any], since_words: str
) -> tuple[int | None, int | None, list[str]]:
    """The finding's gap, how much of it the events since the sync cover (None when they do not
    bear on it), and the sentences saying so."""
    family = _FAMILY.get(finding["reason_code"])
    gap = _gap(finding, family)
    parts: list[str] = []
    covered = None
    if family is not None and gap is not None and since:
        moved = _movement(since, family)
        covered = min(abs(moved), abs(gap)) if moved and (moved > 0) == (gap > 0) else 0
        count = sum(1 for e in since if e.event in _MOVES[family])
        verb, noun = ("explains", "event") if count == 1 else ("explain", "events")
        parts.append(
            f"{count} escrow {noun} since {since_words} {verb} {_money(covered, finding)} "
            f"of {_money(abs(gap), finding)}"
        )
    funded = [e for e in since if e.event == "escrow_funded" and "funded_amount" in e.amounts]
    if funded and family == "amount":
        last = funded[-1]
        chain = finding["chain_funded_base_units"]
        held = (
            "as the chain holds"
            if chain is not None and int(chain) == last.amounts["funded_amount"]
            else f"while the chain now holds {_money(int(chain or 0), finding)}"
        )
        parts.append(
            f"the last escrow_funded, {_when(last.ledger, last.closed_at)} in tx {_short(last.tx_hash)}, set "
            f"funded_amount to {_money(last.amounts['funded_amount'], finding)}, {held}"
        )
    return gap, covered, parts


def _explain_one(
    finding: Mapping[str, Any],
    scanned: list[EscrowEvent],
    ops: pl.DataFrame,
    activity: ChainActivity,
    operations_note: str | None,
    synced_at: datetime | None = None,
) -> tuple[str, ExplainOutcome, list[dict[str, Any]]]:
    scan = activity.scan
    synced = finding["db_ledger_sequence"]
    if synced is not None:
        synced_at = None  # the ledger is exact; the update time only stands in for it
    since_words = _since_words(synced, synced_at)
    base = {
        "invoice_id": finding["invoice_id"],
        "contract_id": finding["contract_id"],
        "reason_code": finding["reason_code"],
        "token_decimals": finding["token_decimals"],
        "currency": finding["currency"],
    }
    operation_parts, lines, contradicted, landed = _operations(ops, activity, finding, base)
    since = [e for e in scanned if _after_sync(e, synced, synced_at)]
    # Events of landed transactions the scan did not see (outside its window, or no scan).
    seen = {(e.tx_hash, e.event, e.ledger) for e in since}
    since += [e for e in landed if (e.tx_hash, e.event, e.ledger) not in seen]
    since.sort(key=lambda e: (e.ledger, e.event_id))
    lines += [_event_line(e, finding, base) for e in since]
    gap, covered, coverage_parts = _coverage(since, finding, since_words)
    parts = coverage_parts[:1] + operation_parts + coverage_parts[1:]
    oldest = scan.oldest_ledger
    before_window = (synced is not None and oldest is not None and synced + 1 < oldest) or (
        synced_at is not None and scan.oldest_closed_at is not None and synced_at < scan.oldest_closed_at
    )
    if before_window:
        when = (
            f"last synced at ledger {synced:,}"
            if synced is not None
            else f"last updated it at {synced_at:%Y-%m-%d %H:%M} UTC"
        )
        parts.append(
            f"the database {when}, before the RPC's oldest ledger {oldest:,}: earlier events are in "
            f"{HISTORY_SOURCE} (contract_id {finding['contract_id']})"
        )
    if scan.unavailable:
        parts.append(f"escrow events unavailable: {scan.unavailable}")
    if operations_note:
        parts.append(operations_note)
    if contradicted or (gap and covered == abs(gap)):
        outcome = ExplainOutcome.EXPLAINED
    elif covered or (since and _FAMILY.get(finding["reason_code"]) is None):
        outcome = ExplainOutcome.PARTIAL
    elif scan.unavailable and not since:
        outcome = ExplainOutcome.UNAVAILABLE
        parts.insert(0, "unavailable")
    else:
        outcome = ExplainOutcome.UNEXPLAINED
        if not since and not parts:
            parts.append(
                f"unexplained: no escrow event since {since_words}, and no database operation "
                "disagrees with the chain"
            )
        elif not since:
            parts.insert(0, f"unexplained: no escrow event since {since_words}")
    return "; ".join(parts), outcome, lines


def _after_sync(event: EscrowEvent, synced: int | None, synced_at: datetime | None) -> bool:
    """Whether ``event`` came after the database last synced the escrow: by ledger when the
    database recorded one, else by its summary's update time, else every event in the window."""
    if synced is not None:
        return event.ledger > synced
    if synced_at is not None:
        return event.closed_at > synced_at
    return True


def _since_words(synced: int | None, synced_at: datetime | None) -> str:
    if synced is not None:
        return f"the database's last sync (ledger {synced:,})"
    if synced_at is not None:
        return f"the database's last update ({synced_at:%Y-%m-%d %H:%M} UTC)"
    return "the start of the RPC's window"


def _amount_text(events: Iterable[EscrowEvent]) -> str | None:
    amounts = [e.amounts["amount"] for e in events if "amount" in e.amounts]
    return str(sum(amounts)) if amounts else None


def _operation_verdict(
    op: Mapping[str, Any], lookup: TransactionLookup | None, finding: Mapping[str, Any]
) -> _Verdict:
    """What one database operation's transaction says; no note when the chain and the database agree."""
    kind, db_status, tx_hash = (
        one_line(op["operation_type"] or "operation"),
        one_line(op["status"]),
        op["tx_hash"],
    )
    if not _TX_HASH.fullmatch(tx_hash or ""):
        return _Verdict(
            f"the database's stellar_transaction_hash {one_line(tx_hash or '')[:80]!r} on its {kind} is not a transaction hash"
        )
    if lookup is None or lookup.status == "unavailable":
        why = lookup.unavailable if lookup is not None else "not looked up"
        return _Verdict(f"{kind} in tx {_short(tx_hash)} could not be checked ({why})")
    amount = _amount_text(e for e in lookup.events if e.contract_id == finding["contract_id"])
    what = f"{kind} of {_money(int(amount), finding)}" if amount is not None else kind
    when = _when(lookup.ledger, lookup.closed_at)
    if lookup.status == "SUCCESS" and db_status in NOT_COMPLETED:
        return _Verdict(
            f"{what} in tx {_short(tx_hash)} landed {when}, but the database marks it {db_status}", True
        )
    if lookup.status == "FAILED" and db_status == "completed":
        return _Verdict(
            f"{kind} in tx {_short(tx_hash)} failed on chain {when}, but the database marks it completed",
            True,
        )
    if lookup.status == "NOT_FOUND":
        completed = op["completed_at"]
        oldest_at = lookup.oldest_closed_at
        if completed is not None and oldest_at is not None and completed < oldest_at:
            # Past the RPC's retention, NOT_FOUND says nothing either way.
            return _Verdict(
                f"{kind} in tx {_short(tx_hash)} ({db_status}) is older than the RPC keeps "
                f"(from ledger {lookup.oldest_ledger:,}); see {HISTORY_SOURCE}"
            )
        if db_status == "completed" or completed is not None:
            return _Verdict(
                f"{kind} in tx {_short(tx_hash)} is not on chain, but the database marks it {db_status}", True
            )
    return _Verdict()  # agrees, or pending and not on chain: a transaction not yet sent


def _event_note(event: EscrowEvent, finding: Mapping[str, Any]) -> str:
    amounts = ", ".join(
        f"{name} {_money(value, finding) if name != 'status' else value}"
        for name, value in sorted(event.amounts.items())
    )
    return f"{event.event}: {amounts}" if amounts else event.event
