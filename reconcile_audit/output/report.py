"""Render: the run's HTML report (email-safe, CSS inlined) and its text alternative.

Everything the reader sees is computed here into a view model: ordering, cuts, bar widths,
deltas against the previous run, and amounts formatted from exact integers. The templates in
``templates/`` only lay it out. The same HTML is the emailed body and the ``report.html``
artifact, so it is held under ``max_bytes`` after inlining (Gmail clips bodies past ~102 KB):
the finding lists are cut to the longest length that fits, and the report says how many rows
are not shown and that the full list is in ``findings.csv``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import PurePath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import quote

import css_inline
import jinja2
import polars as pl

from reconcile_audit.compute.amounts import format_base_units, format_decimal, format_token_amount, one_line
from reconcile_audit.compute.lifecycle import FindingState
from reconcile_audit.compute.result import AuditResult
from reconcile_audit.compute.schemas import (
    CLASS_ORDER,
    CLASSES,
    FINDING_CLASSES,
    FINDINGS,
    LIFECYCLE,
    AuditStatus,
)
from reconcile_audit.compute.settings import CURRENCY_TOKENS_SETTING
from reconcile_audit.compute.stranded import Stranded
from reconcile_audit.output.summary import RunFacts, identity
from reconcile_audit.resources import TEMPLATES_DIR

if TYPE_CHECKING:  # explain reads the RPC (stellar-sdk), which rendering never needs
    from reconcile_audit.compute.explain import Explained

STATUS_WORDS: Final = {status: status.value.upper() for status in AuditStatus}
CLASS_WORDS: Final = {
    "match": "Match",
    "mismatch": "Mismatch",
    "missing_on_chain": "Missing on chain",
    "unlinked": "Unlinked",
    "error": "Error",
}
# Order of findings of equal (or no) drift: money first, then what blocks reading money.
_CLASS_RANK: Final = {name: rank for rank, name in enumerate(CLASS_ORDER)}
TREND_RUNS: Final = 30
SECONDARY_ROWS: Final = 50  # rows at most in the acknowledged / resolved / expiry / stranded lists
BAR_MAX_PX: Final = 200  # fits a 375 px phone screen beside the page's padding
# Every listed row renders to at least this many bytes, which bounds the search for the cut.
_MIN_ROW_BYTES: Final = 32
RESULT_FILES: Final = (
    ("findings.csv", "the findings (every class but match) as CSV, worst first"),
    ("results.parquet", "every invoice as Parquet"),
    ("stranded.parquet", "escrows outside the audit that still hold funds"),
    ("drift_events.parquet", "the events and transactions behind each explained finding"),
    ("summary.json", "the run summary as JSON"),
)


class HistoryView(Protocol):
    """What the report reads from ``history.HistoryComparison``.

    ``findings``: HISTORY_FINDINGS (FINDINGS plus ``finding_state`` new | persisting | null,
    ``first_seen_at``, ``age_days``). ``resolved``: RESOLVED_FINDINGS (the previous run's
    ``class`` and ``reason``, ``first_seen_at``, ``resolved_as``). ``trend``: TREND, the last runs
    oldest first with the current one flagged ``current`` (appended here when absent).
    ``previous_counts``: the previous completed run's counts, or None. An optional ``warning``
    attribute (why history is incomplete) is shown when present.
    """

    @property
    def findings(self) -> pl.DataFrame: ...

    @property
    def resolved(self) -> pl.DataFrame: ...

    @property
    def trend(self) -> pl.DataFrame: ...

    @property
    def previous_counts(self) -> Mapping[str, int] | None: ...


@dataclass(frozen=True)
class Report:
    html: str
    text: str
    findings_shown: int  # rows of the worst-findings list shown
    findings_omitted: int  # findings (non-match rows) not listed there
    html_bytes: int  # UTF-8 size of ``html``, after inlining
    subject: str
    counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # per class + "total"


# --- formatting --------------------------------------------------------------------------------
def _format_count(n: int) -> str:
    return f"{n:,}"


def _format_change(current: int, previous: int | None) -> str:
    if previous is None:
        return "n/a"
    change = current - previous
    if change == 0:
        return "no change"
    return f"+{change:,}" if change > 0 else f"\u2212{-change:,}"


def _format_when(moment: datetime | None) -> str:
    if moment is None:
        return "n/a"
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {rest} s" if hours else f"{minutes} min {rest} s"


def _plain(value: object) -> str:
    """Text of a data value with control characters escaped, so an id cannot break a line."""
    return "" if value is None else one_line(str(value))


# --- counts ------------------------------------------------------------------------------------
def email_subject(facts: RunFacts, counts: Mapping[str, int]) -> str:
    parts = [f"{counts.get(c, 0):,} {CLASS_WORDS[c].lower()}" for c in FINDING_CLASSES if counts.get(c)]
    scope = f" (tenant {_plain(facts.tenant_id)})" if facts.tenant_id else ""
    word = STATUS_WORDS[facts.status]
    if facts.status == AuditStatus.FAILED:
        return f"[reconcile-audit] {word}: run {facts.run_id} did not complete{scope}"
    detail = ", ".join(parts) if parts else "all match"
    return f"[reconcile-audit] {word}: {detail} of {counts.get('total', 0):,} invoices{scope}"


# --- the view model ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FindingRow:
    rank: str
    invoice_id: str
    tenant_id: str
    class_name: str
    class_word: str
    db_amount: str
    chain_amount: str
    drift: str
    reason: str
    notes: str  # database data-quality flags, in words; "" when none
    explanation: str = ""  # why it drifted (the explain stage); "" when not explained
    timeline: tuple[TimelineRow, ...] = ()  # the events and transactions behind it, oldest first


@dataclass(frozen=True)
class TimelineRow:
    """One event or transaction behind a finding, as the report lists it under the finding."""

    ledger: str
    when: str
    what: str  # the event, or "fund (tx landed, DB: failed)"
    amount: str
    investor: str
    tx: str


TIMELINE_FINDINGS: Final = 10  # worst findings that show their timeline in the report file
TIMELINE_FINDINGS_EMAIL: Final = 3
TIMELINE_ROWS: Final = 8  # rows per timeline; the newest are kept


# Flags that change how finance reads a finding's amounts; archived and TTL-expiring escrows
# have a section of their own.
_FLAG_NOTES: Final = {
    "null_total": "the database has no funded total for this invoice (no summary row, or NULL): read as 0",
    "duplicate_summary": "the database has several escrow_summaries rows for this invoice: the latest was used",
    "balance_surplus": "the escrow holds more tokens than its status requires (stray transfers)",
    "balance_unread": "the escrow holds its tokens, but its balance could not be read",
    "balance_archived": "the escrow's token balance entry is archived: restore it before it pays out",
    "changed_during_run": "the escrow changed while the sweep read it; this is how it stood when read again after",
}


@dataclass(frozen=True)
class StateRow:
    invoice_id: str
    class_name: str
    class_word: str
    age_days: str
    first_seen: str
    reason: str
    resolved_as: str  # resolved rows only: "now matches" or "no longer extracted"
    finding_id: str = ""
    overdue: bool = False
    acknowledgement: str = ""  # "by ana on 2026-11-30 until 2026-12-31: reason" (held or lapsed)
    lapsed: str = ""  # why a reopened finding's acknowledgement no longer holds
    explanation: str = ""
    previous_explanation: str = ""  # what explained it in the previous run, still unreconciled


@dataclass(frozen=True)
class StrandedRow:
    invoice_id: str
    tenant_id: str
    where: str  # the invoice's database status, and when it was deleted
    holds: str  # what the escrow holds, "not read" or "" when it holds no tokens
    owes: str  # F - DP still owed to investors, or ""
    reason: str
    contract_id: str


@dataclass(frozen=True)
class ExpiryRow:
    invoice_id: str
    contract_id: str
    state: str
    class_word: str
    live_until: str
    latest: str
    ledgers_left: str


@dataclass(frozen=True)
class Section:
    """One list of the report, already cut. ``omitted`` rows are only in findings.csv."""

    rows: tuple[Any, ...]
    total: int

    @property
    def omitted(self) -> int:
        return self.total - len(self.rows)

    def cut(self, limit: int) -> Section:
        return Section(self.rows[:limit], self.total)


@dataclass(frozen=True)
class CountRow:
    class_name: str
    class_word: str
    count: str
    change: str


@dataclass(frozen=True)
class BarSegment:
    class_name: str
    width: int
    count: int


@dataclass(frozen=True)
class TrendRow:
    label: str
    run_key: str
    total: str
    findings: str
    segments: tuple[BarSegment, ...]
    current: bool


def worst_first(frame: pl.DataFrame) -> pl.DataFrame:
    """Worst first: money missing from an escrow (``balance_short``) whatever its size, then drift
    by size, then the other findings by class."""
    return (
        frame.with_columns(
            (pl.col("reason_code") != "balance_short").alias("_held"),
            pl.col("class")
            .replace_strict(_CLASS_RANK, default=len(CLASS_ORDER), return_dtype=pl.Int64)
            .alias("_order"),
        )
        .sort(["_held", "drift_rank", "_order", "invoice_id"], nulls_last=True)
        .drop("_held", "_order")
    )


def _drift_text(row: Mapping[str, Any]) -> str:
    delta = row["delta_base_units"]
    if delta is None or row["token_decimals"] is None:
        return ""
    amount = format_base_units(delta, row["token_decimals"], signed=True)
    if amount == "n/a":
        return ""
    currency = _plain(row["currency"])
    if amount.startswith("+"):
        return f"DB over by {amount[1:]} {currency}".rstrip()
    if amount.startswith("\u2212"):
        return f"chain over by {amount[1:]} {currency}".rstrip()
    return "none"


def _currencies_fact(checked: tuple[str, ...] | None) -> str:
    if checked is None:
        return f"not checked against funding tokens ({CURRENCY_TOKENS_SETTING} is not set)"
    return "funding token checked for " + ", ".join(_plain(c) for c in checked)


def _balances_fact(checked: int | None) -> str:
    if checked is None:
        return "n/a"
    if checked == 0:
        return "none read: no custodial escrow in a Stellar Asset Contract"
    return f"{checked:,} custodial escrows held to their status"


def _sides_fact(compared: bool | None) -> str:
    if compared is None:
        return "n/a"
    if compared:
        return "total_released, available_amount and the synced ledger compared"
    return "not compared: the source has no total_released, available_amount or stellar_ledger_sequence"


def _abbreviated(address: str | None) -> str:
    return f"{address[:4]}…{address[-4:]}" if address and len(address) > 12 else _plain(address or "")


def _timeline_row(row: Mapping[str, Any]) -> TimelineRow:
    when = row["closed_at"]
    what = _plain(row["event"])
    if row["source"] == "transaction":
        what = f"{what} (tx {_plain(row['tx_status'])}, DB: {_plain(row['db_status'])})"
    amount = row["amount_base_units"]
    return TimelineRow(
        ledger="" if row["ledger"] is None else f"{row['ledger']:,}",
        when=when.strftime("%Y-%m-%d %H:%M UTC") if isinstance(when, datetime) else "",
        what=what,
        amount="" if amount is None else format_token_amount(amount, row["token_decimals"], row["currency"]),
        investor=_abbreviated(row["investor"]),
        tx=f"{row['tx_hash'][:8]}…" if row["tx_hash"] else "",
    )


def _timelines(
    explained: Explained | None, invoice_ids: list[str | None]
) -> dict[str | None, tuple[TimelineRow, ...]]:
    """The timeline of each of ``invoice_ids`` (the worst findings), newest ``TIMELINE_ROWS`` kept."""
    if explained is None or explained.events.is_empty():
        return {}
    return {
        invoice_id: tuple(_timeline_row(r) for r in rows.tail(TIMELINE_ROWS).iter_rows(named=True))
        for invoice_id in invoice_ids
        if (rows := explained.timeline(invoice_id)).height
    }


def _finding_row(
    row: Mapping[str, Any], timelines: Mapping[str | None, tuple[TimelineRow, ...]] | None = None
) -> FindingRow:
    decimals = row["token_decimals"]
    return FindingRow(
        explanation=_plain(row.get("explanation") or ""),
        timeline=(timelines or {}).get(row["invoice_id"], ()),
        rank="" if row["drift_rank"] is None else str(row["drift_rank"]),
        invoice_id=_plain(row["invoice_id"]),
        tenant_id=_plain(row["tenant_id"]),
        class_name=row["class"],
        class_word=CLASS_WORDS.get(row["class"], _plain(row["class"])),
        db_amount=format_decimal(row["db_total_funded"])
        if row["db_total_funded"] is not None
        else format_base_units(row["db_funded_base_units"], decimals),
        chain_amount=format_base_units(row["chain_funded_base_units"], decimals)
        if row["chain_funded_base_units"] is not None
        else "not read",
        drift=_drift_text(row),
        reason=_plain(row["reason"]),
        notes="; ".join(_FLAG_NOTES[flag] for flag in (row["flags"] or []) if flag in _FLAG_NOTES),
    )


_RESOLVED_AS: Final = {
    "match": "now matches",
    "not_extracted": "no longer extracted",
    "no_longer_found": "now matches or no longer extracted",
}


def _day(moment: object) -> str:
    return moment.strftime("%Y-%m-%d") if isinstance(moment, datetime) else _plain(moment)


def _acknowledgement(row: Mapping[str, Any]) -> str:
    if not row.get("acked_by"):
        return ""
    until = f" until {_day(row['acked_until'])}" if row.get("acked_until") else ""
    return f"by {_plain(row['acked_by'])} on {_day(row['acked_at'])}{until}: {_plain(row['ack_reason'])}"


def _state_row(row: Mapping[str, Any]) -> StateRow:
    first_seen = row.get("first_seen_at")
    age = row.get("age_days")
    return StateRow(
        finding_id=_plain(row.get("finding_id") or ""),
        overdue=bool(row.get("overdue")),
        acknowledgement=_acknowledgement(row),
        lapsed=_plain(row.get("ack_lapsed") or ""),
        invoice_id=_plain(row["invoice_id"]),
        class_name=row["class"],
        class_word=CLASS_WORDS.get(row["class"], _plain(row["class"])),
        age_days="" if age is None else f"{age:,} day{'s' if age != 1 else ''}",
        first_seen=first_seen.strftime("%Y-%m-%d")
        if isinstance(first_seen, datetime)
        else _plain(first_seen),
        reason=_plain(row["reason"]),
        explanation=_plain(row.get("explanation") or ""),
        previous_explanation=_plain(row.get("previous_explanation") or ""),
        resolved_as=_RESOLVED_AS.get(row.get("resolved_as") or "", _plain(row.get("resolved_as"))),
    )


def _expiry_row(row: Mapping[str, Any]) -> ExpiryRow:
    flags = row["flags"] or []
    live, latest = row["live_until_ledger"], row["latest_ledger"]
    left = "" if live is None or latest is None or "archived" in flags else _format_count(live - latest)
    return ExpiryRow(
        invoice_id=_plain(row["invoice_id"]),
        contract_id=_plain(row["contract_id"]),
        state="Archived: needs restore" if "archived" in flags else "TTL expiring: needs bump",
        class_word=CLASS_WORDS.get(row["class"], _plain(row["class"])),
        live_until="" if live is None else _format_count(live),
        latest="" if latest is None else _format_count(latest),
        ledgers_left=left,
    )


def _stranded_row(row: Mapping[str, Any]) -> StrandedRow:
    decimals, symbol = row["token_decimals"], row["token_symbol"]

    def money(base_units: str) -> str:
        return format_token_amount(base_units, decimals, symbol)

    where = f"status {_plain(row['status'])}"
    if row["deleted_at"] is not None:
        where += f", deleted {_plain(row['deleted_at'])}"
    balance, owed = row["chain_balance_base_units"], row["chain_owed_base_units"]
    if row["reason_code"] == "stranded_unread":
        holds = "not read"
    else:
        holds = "" if balance is None or balance == "0" else money(balance)
    return StrandedRow(
        invoice_id=_plain(row["invoice_id"]),
        tenant_id=_plain(row["tenant_id"]) if row["tenant_id"] else "none",
        where=where,
        holds=holds,
        owes="" if owed is None else money(owed),
        reason=_plain(row["reason"]),
        contract_id=_plain(row["contract_id"]),
    )


def _explained_fact(explained: Mapping[str, int] | None) -> str:
    if explained is None:
        return "not looked for"
    if "from_shards" in explained:
        return f"{explained['from_shards']:,} findings carry the explanation their shard found"
    looked = sum(v for k, v in explained.items() if k != "beyond")
    if not looked and not explained.get("beyond"):
        return "no mismatch whose money moved"
    parts = ", ".join(
        f"{explained[k]:,} {k}"
        for k in ("explained", "partial", "unexplained", "unavailable")
        if explained.get(k)
    )
    beyond = (
        f"; {explained['beyond']:,} more not looked at (RECONCILE_EXPLAIN_MAX)"
        if explained.get("beyond")
        else ""
    )
    return f"{looked:,} mismatches looked up on chain: {parts or 'none'}{beyond}"


def _stranded_fact(stranded: Stranded) -> str:
    if stranded.skipped is not None:
        return f"not checked: {stranded.skipped}"
    fact = (
        f"{stranded.holding:,} of {stranded.checked:,} out-of-scope invoices' escrows still hold or owe funds"
    )
    if stranded.unread:
        fact += f"; {stranded.unread:,} could not be read"
    return fact


def _section(frame: pl.DataFrame, cap: int, build: Callable[[Mapping[str, Any]], Any]) -> Section:
    return Section(tuple(build(row) for row in frame.head(cap).iter_rows(named=True)), frame.height)


def _segments(counts: Mapping[str, int], scale: int) -> tuple[BarSegment, ...]:
    if scale <= 0:
        return ()
    segments = []
    for name in FINDING_CLASSES:
        n = int(counts.get(name) or 0)
        if n > 0:
            # A non-zero count never disappears from the bar, however small against the maximum.
            segments.append(BarSegment(name, max(2, round(n * BAR_MAX_PX / scale)), n))
    return tuple(segments)


def _trend_rows(
    trend: pl.DataFrame | None, facts: RunFacts, counts: Mapping[str, int]
) -> tuple[TrendRow, ...]:
    runs: list[tuple[str, str, dict[str, int], bool]] = []
    if trend is not None and trend.height:
        for row in trend.tail(TREND_RUNS).iter_rows(named=True):
            started = row.get("started_at")
            label = started.strftime("%Y-%m-%d %H:%M") if isinstance(started, datetime) else _plain(started)
            values = {c: int(row.get(c) or 0) for c in CLASSES}
            values["total"] = int(row.get("total") or sum(values.values()))
            key = _plain(row.get("run_key"))
            current = bool(row.get("current")) or key == facts.run_id
            runs.append((label, key, values, current))
    if facts.status != AuditStatus.FAILED and not any(current for *_, current in runs):
        # A trend read before this run was stored does not hold it yet.
        runs.append((facts.started_at.strftime("%Y-%m-%d %H:%M"), facts.run_id, dict(counts), True))
    runs = runs[-TREND_RUNS:]
    scale = max((v["total"] - v["match"] for _, _, v, _ in runs), default=0)
    return tuple(
        TrendRow(
            label=label,
            run_key=key,
            total=_format_count(v["total"]),
            findings=_format_count(v["total"] - v["match"]),
            segments=_segments(v, scale),
            current=current,
        )
        for label, key, v, current in runs
    )


def _empty_findings() -> pl.DataFrame:
    return pl.DataFrame(schema=FINDINGS)


@dataclass(frozen=True)
class _Lists:
    new: Section
    reopened: Section
    persisting: Section  # unacknowledged only
    acknowledged: Section
    resolved: Section
    worst: Section
    expiry: Section
    stranded: Section
    overdue: int
    max_attention: int  # rows itemised across new, reopened and persisting together

    def cut(self, limit: int) -> _Lists:
        """The worst-findings list gets ``limit`` rows; the others at most SECONDARY_ROWS, so on a
        bad night the ranked list, which says where the money is, keeps most of the budget. The
        findings that need a person share ``max_attention`` rows, new ones first."""
        secondary = min(limit, SECONDARY_ROWS)
        budget = min(limit, self.max_attention)
        attention = []
        for section in (self.new, self.reopened, self.persisting):
            attention.append(section.cut(budget))
            budget -= len(attention[-1].rows)
        return replace(
            self,
            new=attention[0],
            reopened=attention[1],
            persisting=attention[2],
            acknowledged=self.acknowledged.cut(secondary),
            resolved=self.resolved.cut(secondary),
            worst=self.worst.cut(limit),
            expiry=self.expiry.cut(secondary),
            stranded=self.stranded.cut(secondary),
        )

    @property
    def longest(self) -> int:
        """The largest limit that still changes what :meth:`cut` shows."""
        others = max(s.total for s in (self.acknowledged, self.resolved, self.expiry, self.stranded))
        attention = min(self.new.total + self.reopened.total + self.persisting.total, self.max_attention)
        return max(self.worst.total, min(others, SECONDARY_ROWS), attention)


def _lists(
    findings: pl.DataFrame,
    history: HistoryView | None,
    cap: int,
    stranded: pl.DataFrame,
    *,
    max_attention: int,
    list_acknowledged: bool,
    explained: Explained | None = None,
    timeline_findings: int = TIMELINE_FINDINGS,
) -> _Lists:
    non_match = worst_first(findings.filter(pl.col("class") != "match"))
    timelines = _timelines(explained, non_match.head(timeline_findings).get_column("invoice_id").to_list())
    has_flag = pl.col("flags").list.contains("archived") | pl.col("flags").list.contains("ttl_expiring")
    expiry = (
        findings.filter(has_flag)
        .with_columns(pl.col("flags").list.contains("archived").not_().alias("_not_archived"))
        .sort(["_not_archived", "live_until_ledger", "invoice_id"], nulls_last=True)
    )
    if history is not None and "finding_state" in history.findings.columns:
        states = history.findings.filter(pl.col("class") != "match").with_columns(
            pl.lit(None, dtype=dtype).alias(name)
            for name, dtype in LIFECYCLE.items()
            if name not in history.findings.columns
        )

        def in_state(state: FindingState) -> pl.DataFrame:
            # Overdue first, then the oldest, then the largest drift.
            return states.filter(pl.col("finding_state") == state.value).sort(
                ["overdue", "age_days", "drift_rank", "invoice_id"],
                descending=[True, True, False, False],
                nulls_last=True,
            )

        new = worst_first(states.filter(pl.col("finding_state") == FindingState.NEW.value))
        reopened, persisting = in_state(FindingState.REOPENED), in_state(FindingState.PERSISTING)
        acknowledged = in_state(FindingState.ACKNOWLEDGED)
        overdue = int(states.get_column("overdue").fill_null(False).sum())
        resolved = history.resolved.sort(["first_seen_at", "invoice_id"], nulls_last=True)
    else:
        new = reopened = persisting = acknowledged = _empty_findings()
        overdue = 0
        resolved = pl.DataFrame(schema={"invoice_id": pl.String, "class": pl.String, "reason": pl.String})
    return _Lists(
        new=_section(new, cap, _state_row),
        reopened=_section(reopened, cap, _state_row),
        persisting=_section(persisting, cap, _state_row),
        acknowledged=_section(acknowledged, cap if list_acknowledged else 0, _state_row),
        resolved=_section(resolved, cap, _state_row),
        overdue=overdue,
        max_attention=max_attention,
        worst=_section(non_match, cap, lambda row: _finding_row(row, timelines)),
        expiry=_section(expiry, cap, _expiry_row),
        # Known money first, then the escrows that could not be read.
        stranded=_section(
            stranded.sort("reason_code", "tenant_id", "invoice_id", nulls_last=True), cap, _stranded_row
        ),
    )


def _view(
    facts: RunFacts,
    counts: Mapping[str, int],
    previous: Mapping[str, int] | None,
    lists: _Lists,
    trend: tuple[TrendRow, ...],
    has_history: bool,
    history_warning: str | None,
    redact: Callable[[str], str],
    stranded: Stranded,
    email: bool,
) -> dict[str, Any]:
    total = counts["total"]
    findings_total = total - counts["match"]
    if facts.status == AuditStatus.FAILED:
        headline = "The run did not complete."
    elif facts.status == AuditStatus.INCOMPLETE:
        headline = (
            f"Incomplete: not every escrow was read. {findings_total:,} of {total:,} invoices need attention."
        )
    elif total == 0:
        headline = "0 invoices in scope: nothing to reconcile."
    elif findings_total and facts.finding_states and facts.finding_states["acknowledged"]:
        headline = (
            f"{findings_total:,} of {total:,} invoices have findings: "
            f"{facts.finding_states['unacknowledged']:,} need a person, "
            f"{facts.finding_states['acknowledged']:,} acknowledged."
        )
    elif findings_total:
        headline = f"{findings_total:,} of {total:,} invoices need attention."
    else:
        headline = f"All {total:,} invoices match the chain."
    ledger_range = (
        "not read"
        if facts.ledger_min is None
        else f"{facts.ledger_min:,} to {facts.ledger_max if facts.ledger_max is not None else facts.ledger_min:,}"
    )
    if facts.reread:
        ledger_range += f"; {facts.reread:,} escrows changed during the sweep and were read again"
    prev_total = None if previous is None else sum(int(previous.get(c) or 0) for c in CLASSES)
    return {
        "status": facts.status,
        "status_word": STATUS_WORDS[facts.status],
        "headline": headline,
        "failure_message": _plain(redact(facts.failure_message)) if facts.failure_message else "",
        "persist_error": _plain(redact(facts.persist_error)).rstrip(". ") if facts.persist_error else "",
        "persist_consequence": "History and the health check miss this run."
        if facts.status == AuditStatus.FAILED
        else "The findings below are complete; history and the health check miss this run.",
        "delivery_notes": tuple(_plain(redact(n)) for n in facts.delivery_notes),
        "facts": (
            ("Run", _plain(facts.run_id if facts.part is None else f"{facts.run_id} ({facts.part})")),
            ("Started", _format_when(facts.started_at)),
            ("Finished", _format_when(facts.finished_at)),
            ("Tenant", _plain(facts.tenant_id) if facts.tenant_id else "all tenants"),
            ("Ledger range", ledger_range),
            ("Currencies", _currencies_fact(facts.currencies_checked)),
            ("Escrow balances", _balances_fact(facts.balances_checked)),
            ("Database sides", _sides_fact(facts.database_sides_compared)),
            ("Outside the audit", _plain(redact(_stranded_fact(stranded)))),
            ("Drift causes", _explained_fact(facts.explained)),
            ("Duration", _format_duration(facts.duration_seconds)),
            ("Tool version", _plain(facts.tool_version)),
        ),
        "has_counts": not (facts.status == AuditStatus.FAILED and total == 0),
        "counts": tuple(
            CountRow(
                c,
                CLASS_WORDS[c],
                _format_count(counts[c]),
                _format_change(counts[c], None if previous is None else int(previous.get(c) or 0)),
            )
            for c in CLASSES
        ),
        "total": _format_count(total),
        "total_change": _format_change(total, prev_total),
        "has_history": has_history,
        "history_warning": _plain(redact(history_warning)) if history_warning else "",
        "has_previous": previous is not None,
        "new": lists.new,
        "reopened": lists.reopened,
        "persisting": lists.persisting,
        "acknowledged": lists.acknowledged,
        "attention_total": lists.new.total + lists.reopened.total + lists.persisting.total,
        "attention_omitted": lists.new.omitted + lists.reopened.omitted + lists.persisting.omitted,
        "overdue": lists.overdue,
        "attention_first": email,
        "resolved": lists.resolved,
        "worst": lists.worst,
        "expiry": lists.expiry,
        "stranded": lists.stranded,
        "stranded_checked": stranded.skipped is None,
        "trend": trend,
        "trend_title": f"Trend of the last {len(trend)} run{'' if len(trend) == 1 else 's'}"
        if trend
        else "Trend of recent runs",
        "legend": tuple((c, CLASS_WORDS[c]) for c in FINDING_CLASSES),
        "bar_max_px": BAR_MAX_PX,
        "links": _links(facts),
        "run_folder": _plain(facts.run_folder or facts.run_id),
        "attachment_note": _plain(facts.attachment_note) if facts.attachment_note else "",
        "tool_version": _plain(facts.tool_version),
    }


def _links(facts: RunFacts) -> dict[str, Any] | None:
    """Absolute links to the run's files under ``report_base_url``; None without one, as a
    relative link in an email leads nowhere."""
    if not facts.report_base_url:
        return None
    base = f"{facts.report_base_url.rstrip('/')}/{quote(facts.run_id)}"
    notebook = PurePath(facts.notebook_path).name or "notebook.ipynb"
    return {
        "notebook": f"{base}/{quote(notebook)}",
        "report": f"{base}/report.html",
        "files": tuple((f"{base}/{name}", label) for name, label in RESULT_FILES),
    }


# --- rendering ---------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def environment(templates_dir: str = str(TEMPLATES_DIR)) -> jinja2.Environment:
    """The report's Jinja2 environment: HTML autoescaped, every missing variable an error."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2", "html"), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


_INLINER: Final = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False, minify_css=True)


def _render_html(env: jinja2.Environment, view: Mapping[str, Any]) -> str:
    return _INLINER.inline(env.get_template("report.html.j2").render(view))


def _html_size(html: str) -> int:
    return len(html.encode("utf-8"))


def render_report(
    result: AuditResult | None,
    history: HistoryView | None,
    facts: RunFacts,
    *,
    max_bytes: int = 100_000,
    redact: Callable[[str], str] = identity,
    templates_dir: str | None = None,
    max_attention: int = SECONDARY_ROWS,
    email: bool = False,
) -> Report:
    """Render the run into HTML (CSS inlined, under ``max_bytes``) and text.

    ``result``: the run's findings and counts (``None`` for a run that failed before classify).
    ``history``: the comparison with earlier runs, or ``None`` when history could not be read.
    ``redact``: applied to the free-text facts (pass ``settings.redact``).
    ``max_attention``: findings that need a person (new, reopened, unacknowledged persisting)
    itemised at most, together; the rest are one line. ``email``: the email's layout, whose first
    screen holds only what needs a person, and which counts acknowledged findings instead of
    listing them (the report file lists them).
    """
    result = result or AuditResult.empty()
    frame, counts = result.findings, result.counts
    previous = None if history is None else history.previous_counts
    env = environment(templates_dir or str(TEMPLATES_DIR))
    cap = max(max_bytes // _MIN_ROW_BYTES, 0)
    lists = _lists(
        frame,
        history,
        cap,
        result.stranded.frame,
        max_attention=max_attention,
        list_acknowledged=not email,
        explained=result.explained,
        timeline_findings=TIMELINE_FINDINGS_EMAIL if email else TIMELINE_FINDINGS,
    )
    trend = _trend_rows(None if history is None else history.trend, facts, counts)
    history_warning: str | None = getattr(history, "warning", None)

    def view_for(limit: int) -> dict[str, Any]:
        return _view(
            facts,
            counts,
            previous,
            lists.cut(limit),
            trend,
            history is not None,
            history_warning,
            redact,
            result.stranded,
            email,
        )

    # Longest cut that fits: size grows with the limit, so bisect on the final inlined bytes.
    low, high = 0, min(lists.longest, cap)
    html = _render_html(env, view_for(high))
    if _html_size(html) > max_bytes:
        while low < high:
            middle = (low + high + 1) // 2
            if _html_size(_render_html(env, view_for(middle))) <= max_bytes:
                low = middle
            else:
                high = middle - 1
        html = _render_html(env, view_for(low))
        high = low
    view = view_for(high)
    text = env.get_template("report.txt.j2").render(view)
    worst = lists.worst.cut(high)
    return Report(
        html=html,
        text=text,
        findings_shown=len(worst.rows),
        findings_omitted=counts["total"] - counts["match"] - len(worst.rows),
        html_bytes=_html_size(html),
        subject=email_subject(facts, counts),
        counts=MappingProxyType(counts),
    )
