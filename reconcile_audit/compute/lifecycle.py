"""A finding's life across runs: its stable id, its evidence, acknowledgements, state and age.

A *finding* is one invoice's non-match row. Its **id** is ``<invoice_id>:<class>/<family>``
(``INV-7:mismatch/amount``): the invoice plus the kind of finding, where the family groups the
reason codes that are one problem seen from different sides (``db_over_chain`` and
``chain_over_db`` are both ``amount``), so the id lives across runs while the delta moves. A
row without an invoice id has no finding id: it is always new and cannot be acknowledged.

Its **evidence** is what a person acknowledged: the class, the reason code and the exact
amounts on each side, as canonical JSON text. An acknowledgement holds while the evidence is the
same, its ``until`` has not passed, and the finding has been open without a break since before
it was given; otherwise it has lapsed and the finding is ``reopened``.

States, one per non-match row (match rows have none):

- ``acknowledged``: an acknowledgement holds;
- ``reopened``: an acknowledgement lapsed, or the finding was open in an earlier run, resolved,
  and came back under the same id;
- ``persisting``: open in the previous run under the same id;
- ``new``: otherwise.

(``resolved`` findings are the previous run's that are no longer open: ``RESOLVED_FINDINGS``.)
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Final

import polars as pl

from reconcile_audit.compute.schemas import STRANDED_CLASS, FindingClass, filled_at


class FindingState(StrEnum):
    """Where a finding stands in its life. Every non-match row of a run is in exactly one."""

    NEW = "new"
    PERSISTING = "persisting"
    ACKNOWLEDGED = "acknowledged"
    REOPENED = "reopened"
    RESOLVED = "resolved"


OPEN_STATES: Final = (
    FindingState.NEW,
    FindingState.REOPENED,
    FindingState.PERSISTING,
    FindingState.ACKNOWLEDGED,
)
"""The states of a current finding, in the order the report lists them (what needs a person first)."""


class AckAction(StrEnum):
    """A row of the append-only ``reconciliation_acknowledgements`` table."""

    ACK = "ack"
    UNACK = "unack"


# The reason codes that are one problem, seen from different sides, share a family; a new reason
# code without one is a family of its own.
REASON_FAMILIES: Final = {
    "db_over_chain": "amount",
    "chain_over_db": "amount",
    "db_amount_not_representable": "amount",
    "invoice_id_mismatch": "invoice_id",
    "token_mismatch": "token",
    "unmapped_currency": "currency",
    "balance_short": "balance",
    "released_mismatch": "released",
    "available_mismatch": "available",
    "invalid_invoice_id": "invoice_id",
    "no_address": "address",
    "invalid_address": "address",
    "not_read": "read",
    "read_error": "read",
    "unknown_read_status": "read",
    "no_instance": "escrow",
    "no_escrow": "escrow",
    "undecodable_amount": "decode",
    "unknown_token_decimals": "decode",
    "unsupported_token_decimals": "decode",
    "invalid_db_amount": "db_amount",
    "stranded_funds": "funds",
    "stranded_unread": "funds",
}
EVIDENCE_COLUMNS: Final = (
    "class",
    "reason_code",
    "db_funded_base_units",
    "chain_funded_base_units",
    "delta_base_units",
    "chain_balance_base_units",
)
# Ageing buckets of open findings, in whole days since first seen (the buckets finance teams use).
AGE_BUCKETS: Final = (("0-1", 0, 1), ("2-7", 2, 7), ("8-30", 8, 30), ("over-30", 31, None))
DEFAULT_SLA_DAYS: Final = 7


def finding_kind() -> pl.Expr:
    """``<class>/<family>`` from ``class`` and ``reason_code`` (``stranded/funds`` for stranded rows)."""
    family = pl.col("reason_code").replace_strict(REASON_FAMILIES, default=pl.col("reason_code"))
    return pl.concat_str(pl.col("class"), pl.lit("/"), family)


def finding_id() -> pl.Expr:
    """The stable id ``<invoice_id>:<class>/<family>`` of a non-match row (null without an invoice id)."""
    return pl.concat_str(pl.col("invoice_id"), pl.lit(":"), finding_kind())


def evidence() -> pl.Expr:
    """Canonical JSON of a non-match row's class, reason code and exact amounts."""
    return pl.struct([pl.col(name).cast(pl.String) for name in EVIDENCE_COLUMNS]).struct.json_encode()


def with_identity(findings: pl.DataFrame) -> pl.DataFrame:
    """``findings`` (FINDINGS or STRANDED columns) with ``finding_id`` and ``evidence``, null for
    matches. Computed on the non-match rows only: at 1M invoices the JSON of every match cost
    0.3 s for nothing."""
    frame = findings
    for name in EVIDENCE_COLUMNS:
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(name))
    if "class" not in findings.columns:
        frame = frame.with_columns(pl.lit(STRANDED_CLASS).alias("class"))
    open_rows = frame.with_row_index("_row").filter(pl.col("class").ne_missing(FindingClass.MATCH))
    identity = open_rows.select("_row", finding_id().alias("finding_id"), evidence().alias("evidence"))
    rows = identity.get_column("_row")
    return findings.with_columns(
        filled_at(findings, rows, identity.get_column(name).cast(pl.String))
        for name in ("finding_id", "evidence")
    )


def age_bucket(age_days: pl.Expr) -> pl.Expr:
    expr = pl.when(age_days.is_null()).then(pl.lit(None, dtype=pl.String))
    for name, low, high in AGE_BUCKETS:
        upper = age_days <= high if high is not None else pl.lit(True)
        expr = expr.when((age_days >= low) & upper).then(pl.lit(name))
    return expr


def latest_acknowledgements(acks: pl.DataFrame) -> pl.DataFrame:
    """The newest row per finding id (an ``unack`` withdraws the ``ack`` before it)."""
    return acks.sort("acked_at", "id").group_by("finding_id", maintain_order=True).last()


def with_acknowledgements(findings: pl.DataFrame, acks: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """``findings`` (``class``, ``finding_id``, ``evidence``, ``first_seen_at``: the start of its
    open period) with the newest acknowledgement of each (``acked_by``, ``acked_at``,
    ``ack_reason``, ``acked_until``: null after an unack), ``ack_lapsed`` (why an ack no longer
    holds) and ``ack_holds``. The one rule for an acknowledgement, used by history and health.
    """
    now_lit = pl.lit(now, dtype=pl.Datetime("us", "UTC"))
    latest = latest_acknowledgements(acks).select(
        "finding_id",
        (pl.col("action") == AckAction.ACK).alias("_acked"),
        pl.col("evidence").alias("_ack_evidence"),
        "acked_by",
        "acked_at",
        pl.col("reason").alias("ack_reason"),
        "acked_until",
    )
    is_open = pl.col("class").ne_missing(FindingClass.MATCH)
    acked = is_open & pl.col("_acked").fill_null(False)
    lapse = (
        pl.when(~acked)
        .then(pl.lit(None, dtype=pl.String))
        .when(pl.col("_ack_evidence") != pl.col("evidence"))
        .then(pl.lit("evidence changed"))
        .when(pl.col("acked_until").is_not_null() & (pl.col("acked_until") <= now_lit))
        .then(pl.lit("until passed"))
        .when(pl.col("acked_at") < pl.col("first_seen_at"))
        .then(pl.lit("resolved since"))
    )
    ack_columns = ("acked_by", "acked_at", "ack_reason", "acked_until")
    return (
        findings.drop([*ack_columns, "ack_lapsed", "ack_holds"], strict=False)
        .join(latest, on="finding_id", how="left", maintain_order="left")
        .with_columns(lapse.alias("ack_lapsed"), acked.alias("_shown"))
        .with_columns(
            (pl.col("_shown") & pl.col("ack_lapsed").is_null()).alias("ack_holds"),
            # An unack leaves no acknowledgement to show.
            *[pl.when(pl.col("_shown")).then(pl.col(name)).alias(name) for name in ack_columns],
        )
        .drop("_acked", "_ack_evidence", "_shown")
    )


def mark_states(
    findings: pl.DataFrame,
    *,
    streaks: pl.DataFrame,
    earlier_ids: pl.Series,
    acks: pl.DataFrame,
    now: datetime,
    sla_days: int = DEFAULT_SLA_DAYS,
) -> pl.DataFrame:
    """Add the :data:`~reconcile_audit.compute.schemas.LIFECYCLE` columns to ``findings``.

    ``streaks``: the finding ids open in the previous run, each with ``first_seen_at``, the start of
    its unbroken streak of runs (:func:`streak_starts`); ``earlier_ids``: the finding ids open in
    any earlier run; ``acks``: :data:`~reconcile_audit.compute.schemas.ACKNOWLEDGEMENTS` rows.
    """
    now_lit = pl.lit(now, dtype=pl.Datetime("us", "UTC"))
    is_open = pl.col("class").ne_missing(FindingClass.MATCH)
    since = streaks.select("finding_id", pl.col("first_seen_at").alias("_since"))
    frame = (
        with_identity(findings)
        .join(since, on="finding_id", how="left", maintain_order="left")
        .with_columns(
            pl.col("_since").is_not_null().alias("_in_previous"),
            pl.col("finding_id").is_in(earlier_ids.implode()).fill_null(False).alias("_seen_before"),
        )
        .with_columns(pl.when(is_open).then(pl.coalesce("_since", now_lit)).alias("first_seen_at"))
        .drop("_since")
    )
    frame = with_acknowledgements(frame, acks, now)
    state = (
        pl.when(~is_open)
        .then(pl.lit(None, dtype=pl.String))
        .when(pl.col("ack_holds"))
        .then(pl.lit(FindingState.ACKNOWLEDGED.value))
        .when(pl.col("ack_lapsed").is_not_null() | (~pl.col("_in_previous") & pl.col("_seen_before")))
        .then(pl.lit(FindingState.REOPENED.value))
        .when(pl.col("_in_previous"))
        .then(pl.lit(FindingState.PERSISTING.value))
        .otherwise(pl.lit(FindingState.NEW.value))
    )
    return (
        frame.with_columns(state.alias("finding_state"), age_days(now).alias("age_days"))
        .with_columns(
            age_bucket(pl.col("age_days")).alias("age_bucket"),
            pl.when(is_open).then(overdue(sla_days)).alias("overdue"),
        )
        .drop("_in_previous", "_seen_before", "ack_holds")
    )


def streak_starts(appearances: pl.DataFrame, key: str = "finding_id") -> pl.DataFrame:
    """``(key, first_seen_at)`` of each finding open in the previous run: the start of its
    unbroken streak of runs under the same ``key`` (its finding id, or its invoice).
    ``appearances``: ``invoice_id``, ``class``, ``reason_code``, ``recency`` (1 = the previous run)
    and ``started_at`` of each earlier run in which the invoice was a finding."""
    frame = with_identity(appearances) if key == "finding_id" else appearances
    return (
        frame.filter(pl.col(key).is_not_null())
        .unique([key, "recency"])
        .with_columns((pl.col("recency") - pl.col("recency").rank("dense").over(key)).alias("_gap"))
        .filter(pl.col("_gap") == 0)  # recencies 1, 2, 3... without a break; empty unless 1 is there
        .group_by(key)
        .agg(pl.col("started_at").min().alias("first_seen_at"))
    )


def overdue(sla_days: int) -> pl.Expr:
    """Open longer than ``sla_days`` whole days without an acknowledgement that holds."""
    return ~pl.col("ack_holds") & (pl.col("age_days") > sla_days)


def age_days(now: datetime) -> pl.Expr:
    """Whole days from ``first_seen_at`` to ``now``."""
    return (pl.lit(now, dtype=pl.Datetime("us", "UTC")) - pl.col("first_seen_at")).dt.total_days()


def state_counts(findings: pl.DataFrame) -> dict[str, int]:
    """Open findings per state of :data:`OPEN_STATES` (each present), ``unacknowledged``,
    ``acknowledged`` and ``overdue``."""
    states = findings.get_column("finding_state")
    counts = {state.value: int((states == state.value).sum()) for state in OPEN_STATES}
    counts["unacknowledged"] = int(states.is_not_null().sum()) - counts[FindingState.ACKNOWLEDGED]
    counts["overdue"] = int(findings.get_column("overdue").fill_null(False).sum())
    return counts
