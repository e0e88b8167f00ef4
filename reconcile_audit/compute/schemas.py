"""The frames that flow between stages: their documented schemas, checked at stage boundaries.

Amounts in base units can reach the i128 limits, which neither Arrow's decimal128(38) nor
polars' Int128 (no Arrow mapping) can carry, so base-unit amounts travel as ``String`` holding
an exact base-10 integer (``"-170141183460469231731687303715884105728"``). DuckDB casts them to
HUGEINT / BIGNUM for exact arithmetic. Money is never a float.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import polars as pl

# --- the run's vocabulary: one spelling each ---------------------------------------------------


class FindingClass(StrEnum):
    """The class of one invoice. Every extracted invoice lands in exactly one."""

    MATCH = "match"
    MISMATCH = "mismatch"
    MISSING_ON_CHAIN = "missing_on_chain"
    UNLINKED = "unlinked"
    ERROR = "error"


# Column order: FINDINGS, the tables and the metrics list the classes this way.
CLASSES: Final = tuple(member.value for member in FindingClass)
# Most urgent first: the order reports, summaries and the stored results digest list classes in.
CLASS_ORDER: Final = (
    FindingClass.MISMATCH.value,
    FindingClass.MISSING_ON_CHAIN.value,
    FindingClass.ERROR.value,
    FindingClass.UNLINKED.value,
    FindingClass.MATCH.value,
)
FINDING_CLASSES: Final = tuple(name for name in CLASS_ORDER if name != FindingClass.MATCH)
COUNT_NAMES: Final = ("total", *CLASSES)


class RunStatus(StrEnum):
    """A run attempt (and a ``reconciliation_runs`` result): started, finished with a result,
    failed, or abandoned (it never recorded an end: killed, or its host died)."""

    RUNNING = "running"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"  # it ran to the end, but too few escrows were read to stand as a result
    FAILED = "failed"
    ABANDONED = "abandoned"


class AuditStatus(StrEnum):
    """What a run says about the money: the report's banner, ``summary.json`` and the exit code."""

    CLEAN = "clean"
    FINDINGS = "findings"
    INCOMPLETE = "incomplete"  # too few escrows read (an RPC outage): not a result to trust
    FAILED = "failed"

    @property
    def audited(self) -> bool:
        """The run audited every invoice: its counts are a result (clean or findings)."""
        return self in (AuditStatus.CLEAN, AuditStatus.FINDINGS)


class HealthStatus(StrEnum):
    """What the backend's health check reads from the latest finished run (``summary --json``)."""

    NOT_RUN = "not_run"
    STALE = "stale"
    HEALTHY = "healthy"
    FINDINGS = "findings"
    INCOMPLETE = "incomplete"
    FAILED = "failed"


class DeliveryStatus(StrEnum):
    """What one delivery channel did: the email is sent, the metrics pushed."""

    SENT = "sent"
    PUSHED = "pushed"
    SKIPPED = "skipped"
    FAILED = "failed"
    CHECKED = "checked"  # `reconcile-audit check`: reachable and accepting, nothing delivered


@dataclass(frozen=True)
class ClassCounts(Mapping[str, int]):
    """Invoices per class. ``total`` is always the sum of the five classes, none negative.

    Also a read-only mapping of ``total`` and each class to its count: what the report,
    ``summary.json`` and ``summary --json`` read. Persisted runs read back as this type too.
    """

    total: int
    match: int
    mismatch: int
    missing_on_chain: int
    unlinked: int
    error: int

    def __post_init__(self) -> None:
        per_class = self.by_class()
        if any(count < 0 for count in per_class.values()) or self.total != sum(per_class.values()):
            raise ValueError(f"counts must be non-negative and sum to total {self.total}: {per_class}")

    def by_class(self) -> dict[str, int]:
        """``{class: count}`` in ``CLASS_ORDER``."""
        return {name: getattr(self, name) for name in CLASS_ORDER}

    @property
    def non_match(self) -> int:
        return self.total - self.match

    @property
    def status(self) -> AuditStatus:
        """The verdict of a completed run with these counts."""
        return AuditStatus.FINDINGS if self.non_match else AuditStatus.CLEAN

    def __getitem__(self, name: str) -> int:
        if name not in COUNT_NAMES:
            raise KeyError(name)
        return int(getattr(self, name))

    def __iter__(self) -> Iterator[str]:
        return iter(COUNT_NAMES)

    def __len__(self) -> int:
        return len(COUNT_NAMES)

    @classmethod
    def of(cls, counts: Any) -> ClassCounts:
        """From a mapping or any object with ``total`` and one attribute per class."""
        if isinstance(counts, Mapping):
            return cls(**{name: int(counts[name]) for name in COUNT_NAMES})
        return cls(**{name: int(getattr(counts, name)) for name in COUNT_NAMES})

    @classmethod
    def zero(cls) -> ClassCounts:
        return cls(total=0, match=0, mismatch=0, missing_on_chain=0, unlinked=0, error=0)

    @classmethod
    def summed(cls, parts: Iterable[Mapping[str, int]]) -> ClassCounts:
        """The counts of several parts of one run (classify's parts, a merge's shards) together."""
        listed = list(parts)
        return cls(**{name: sum(part[name] for part in listed) for name in COUNT_NAMES})


def count_classes(findings: pl.DataFrame) -> ClassCounts:
    """How many findings fall in each class. Raises ``ValueError`` on a class outside ``CLASSES``."""
    counts = findings.get_column("class").value_counts()
    by_class: dict[str, int] = {row[0]: int(row[1]) for row in counts.iter_rows()}
    unknown = set(by_class) - set(CLASSES)
    if unknown:
        raise ValueError(f"findings hold unknown classes {sorted(map(str, unknown))}")
    return ClassCounts(total=findings.height, **{name: by_class.get(name, 0) for name in CLASSES})


# --- extract: one row per reconcilable invoice ------------------------------------------------
INVOICES: Final = pl.Schema(
    {
        "invoice_pk": pl.String,  # invoices.id (uuid as text)
        "invoice_id": pl.String,  # invoices.invoice_id, the business id the contract stores
        "tenant_id": pl.String,  # nullable
        "status": pl.String,  # linked_escrow | funded | partially_funded (by default)
        "currency": pl.String,  # nullable
        "db_total_funded": pl.String,  # escrow_summaries.total_funded, exact decimal text at its scale; "0" if NULL
        "total_was_null": pl.Boolean,  # no summary row, or a NULL total coerced to 0
        "summary_row_count": pl.Int64,  # escrow_summaries rows for the invoice; > 1 is a duplicate
        "op_contract_id": pl.String,  # latest completed `create` escrow_operations.contract_id
        # The database's other sides, when the source has them (null otherwise; a custom extract
        # may leave them out): what it says was paid out, what the escrow holds, and the ledger
        # the row was synced at. Exact decimal text in major units, like db_total_funded.
        "db_total_released": pl.String,
        "db_available": pl.String,
        "db_ledger_sequence": pl.Int64,
    }
)
OPTIONAL_INVOICE_COLUMNS: Final = ("db_total_released", "db_available", "db_ledger_sequence")

# --- extract: invoices outside the audit whose escrow was created (stranded candidates) -------
OUT_OF_SCOPE: Final = pl.Schema(
    {
        "invoice_pk": pl.String,
        "invoice_id": pl.String,
        "tenant_id": pl.String,
        "status": pl.String,  # the database status that puts it outside the audit (or a reconcilable one, deleted)
        "currency": pl.String,
        "deleted_at": pl.String,  # invoices.deleted_at as the database prints it; null when not deleted
        "op_contract_id": pl.String,  # latest completed `create` escrow_operations.contract_id
    }
)

# --- resolve: INVOICES plus the chosen address -------------------------------------------------
RESOLVED: Final = pl.Schema(
    {
        **INVOICES,
        "contract_id": pl.String,  # the address used (as given, trimmed); null when none known
        "address_source": pl.String,  # escrow_operations | escrow_addr_by_invoice | null
        "address_error": pl.String,  # why contract_id is not a valid C... strkey; null when valid
        "invoice_id_error": pl.String,  # why invoice_id fails the backend's id rule; null when valid
    }
)

# --- ledger: one row per distinct valid contract_id asked for ---------------------------------
# read_status: ok | no_instance | no_escrow | error
LEDGER: Final = pl.Schema(
    {
        "contract_id": pl.String,
        "read_status": pl.String,
        "read_error": pl.String,  # cause when read_status is error (or why decimals are unknown)
        "escrow_invoice_id": pl.String,
        "funded_amount": pl.String,  # i128 base units, exact integer text
        "amount": pl.String,  # i128
        "funding_target": pl.String,  # i128
        "escrow_status": pl.Int64,  # u32: 0 open, 1 funded, 2 settled, 3 withdrawn, 4 cancelled
        "funding_token": pl.String,  # C... address of the token contract
        "distributed_principal": pl.String,  # i128, null when absent
        "token_decimals": pl.Int64,  # null when unknown: the invoice becomes an error
        "token_decimals_source": pl.String,  # metadata | configured | null
        "latest_ledger": pl.Int64,  # latestLedger of the batch that read this entry
        "last_modified_ledger": pl.Int64,  # lastModifiedLedgerSeq
        "live_until_ledger": pl.Int64,  # liveUntilLedgerSeq (0 or below latest: archived)
        # The money the escrow holds (issue 11): read for custodial escrows funded in a Stellar
        # Asset Contract, with the instance in the same getLedgerEntries call (one ledger).
        "custodial": pl.Boolean,  # runs code that moves tokens into the escrow; null when not read
        "chain_balance": pl.String,  # i128 token balance; "0" when the entry is absent; null when not read
        "balance_note": pl.String,  # why chain_balance is null (not custodial, not a SAC, an error)
        "balance_last_modified_ledger": pl.Int64,
        "balance_live_until_ledger": pl.Int64,  # balances archive too: a read does not extend them
    }
)

ESCROW_STATUS_WORDS: Final = {0: "open", 1: "funded", 2: "settled", 3: "withdrawn", 4: "cancelled"}

BALANCE_COLUMNS: Final = (
    "custodial",
    "chain_balance",
    "balance_note",
    "balance_last_modified_ledger",
    "balance_live_until_ledger",
)

FLAGS: Final = (
    "archived",
    "ttl_expiring",
    "duplicate_summary",
    "null_total",
    "balance_surplus",  # a custodial escrow holds more than its status requires (stray tokens)
    "balance_unread",  # a custodial escrow whose balance could not be read (not a SAC, an error)
    "balance_archived",  # its Balance entry is archived: restore it before the escrow pays out
    "balance_ttl_expiring",
    "db_stale",  # the escrow changed after the ledger the database row was synced at
    "changed_during_run",  # modified while the sweep ran: read again, and still a finding
    "settled_during_run",  # modified while the sweep ran: read again, and now it matches
)

# --- classify: the findings frame, one row per extracted invoice ------------------------------
# This is the contract that reports, history and users rely on (README.md, "Findings").
FINDINGS: Final = pl.Schema(
    {
        "invoice_id": pl.String,
        "tenant_id": pl.String,
        "contract_id": pl.String,
        "class": pl.String,  # one of CLASSES
        "reason_code": pl.String,
        "reason": pl.String,  # a sentence for people
        "db_funded_base_units": pl.String,  # exact integer text; null when decimals unknown
        "chain_funded_base_units": pl.String,  # exact integer text; null when not read
        "delta_base_units": pl.String,  # database minus chain, exact integer text
        "drift_rank": pl.Int64,  # 1 = largest absolute drift in major units; null if none
        "token_decimals": pl.Int64,
        "currency": pl.String,
        "db_total_funded": pl.String,  # major units exactly as stored, decimal text at the column's scale
        "flags": pl.List(pl.String),  # subset of FLAGS, sorted
        "escrow_invoice_id": pl.String,
        "escrow_status": pl.Int64,
        "funding_token": pl.String,
        "address_source": pl.String,
        "latest_ledger": pl.Int64,
        "last_modified_ledger": pl.Int64,
        "live_until_ledger": pl.Int64,
        "chain_balance_base_units": pl.String,  # what a custodial escrow holds; null otherwise
        "chain_distributed_base_units": pl.String,  # DistributedPrincipal; null when absent (0)
        "custodial": pl.Boolean,  # null when the escrow was not read
        "db_released_base_units": pl.String,  # DB total_released in base units; null when absent
        "db_available_base_units": pl.String,  # DB available_amount in base units; null when absent
        "db_ledger_sequence": pl.Int64,  # the ledger the DB row was synced at; null when absent
        "explanation": pl.String,  # why it drifted (compute.explain); null when not explained
    }
)
# The FINDINGS rows that are kept whole where the rest are only counted: by the state database,
# a merge of shards and a run's result (the rest spooled): every non-match, every flagged match.
HELD: Final = pl.col("class").ne_missing("match") | (pl.col("flags").list.len() > 0)


# --- explain: why a drift happened (compute.explain) ----------------------------------------
DRIFT_EVENTS: Final = pl.Schema(
    {
        "invoice_id": pl.String,
        "contract_id": pl.String,
        "reason_code": pl.String,  # the finding's
        "source": pl.String,  # "event" (getEvents) | "transaction" (getTransaction of a DB operation)
        "ledger": pl.Int64,
        "closed_at": pl.Datetime("us", "UTC"),
        "event": pl.String,  # the contract event's name, or the DB operation's type
        "amount_base_units": pl.String,  # exact integer text: the event's amount, if it has one
        "token_decimals": pl.Int64,
        "currency": pl.String,
        "investor": pl.String,
        "tx_hash": pl.String,
        "tx_status": pl.String,  # SUCCESS | FAILED | NOT_FOUND | unavailable (transactions only)
        "db_status": pl.String,  # the DB operation's status (transactions only)
        "note": pl.String,  # what this row says about the finding
    }
)
# One row per explained finding.
EXPLANATIONS: Final = pl.Schema(
    {"invoice_id": pl.String, "explanation": pl.String, "explain_outcome": pl.String}
)


# --- stranded: escrows of out-of-scope invoices that still hold or owe money -----------------
# Apart from FINDINGS: they never change the five classes or ``total``.
STRANDED: Final = pl.Schema(
    {
        "invoice_id": pl.String,
        "invoice_pk": pl.String,
        "tenant_id": pl.String,
        "status": pl.String,  # the invoice's database status
        "deleted_at": pl.String,  # null when not deleted
        "contract_id": pl.String,
        "reason_code": pl.String,  # see STRANDED_REASONS
        "reason": pl.String,  # a sentence for people, amounts in major units
        "escrow_status": pl.Int64,
        "funding_token": pl.String,
        "token_symbol": pl.String,  # the funding token's METADATA symbol; null when not read
        "token_decimals": pl.Int64,
        "custodial": pl.Boolean,
        "chain_balance_base_units": pl.String,  # what the escrow holds; null when not read
        "chain_owed_base_units": pl.String,  # F - DP while open, funded or cancelled; null otherwise
        "chain_funded_base_units": pl.String,
        "chain_distributed_base_units": pl.String,
        "latest_ledger": pl.Int64,
    }
)
STRANDED_REASONS: Final = (
    "stranded_funds",  # the escrow holds tokens, or still owes investors
    "stranded_unread",  # the escrow could not be read (or its balance): it may hold funds
)
STRANDED_CLASS: Final = "stranded"
"""The class stranded escrows are stored under in ``reconciliation_findings``, beside the five."""


# --- lifecycle: a finding across runs ---------------------------------------------------------
# The acknowledgements as read back (reconciliation_acknowledgements), oldest first.
ACKNOWLEDGEMENTS: Final = pl.Schema(
    {
        "id": pl.Int64,
        "finding_id": pl.String,
        "invoice_id": pl.String,
        "tenant_id": pl.String,
        "action": pl.String,  # ack | unack
        "evidence": pl.String,  # what was acknowledged; null for unack
        "acked_by": pl.String,
        "acked_at": pl.Datetime("us", "UTC"),
        "reason": pl.String,
        "acked_until": pl.Datetime("us", "UTC"),  # null: until the evidence changes
    }
)
# What compute.lifecycle.mark_states adds to a findings frame: a finding's life (compute/lifecycle.py).
LIFECYCLE: Final = pl.Schema(
    {
        "finding_id": pl.String,  # <invoice_id>:<class>/<family>; null without an invoice id or for match
        "evidence": pl.String,  # canonical JSON of EVIDENCE_COLUMNS; null for match
        "finding_state": pl.String,  # FindingState; null for match
        "first_seen_at": pl.Datetime("us", "UTC"),  # start of the current open period; null for match
        "age_days": pl.Int64,  # whole days since first_seen_at; null for match
        "age_bucket": pl.String,  # one of lifecycle.AGE_BUCKETS; null for match
        "overdue": pl.Boolean,  # open, not acknowledged, older than the SLA; null for match
        "acked_by": pl.String,  # the acknowledgement that holds, or the one that lapsed (reopened)
        "acked_at": pl.Datetime("us", "UTC"),
        "ack_reason": pl.String,
        "acked_until": pl.Datetime("us", "UTC"),
        "ack_lapsed": pl.String,  # reopened by a lapse: "evidence changed" | "until passed" | "resolved since"
        "previous_explanation": pl.String,  # the explanation stored with the previous run's finding
    }
)


# --- history: FINDINGS compared with earlier runs of the same tenant scope --------------------
HISTORY_FINDINGS: Final = pl.Schema({**FINDINGS, **LIFECYCLE})
# Non-match in the previous completed run, now match or no longer extracted.
RESOLVED_FINDINGS: Final = pl.Schema(
    {
        "invoice_id": pl.String,
        "tenant_id": pl.String,
        "contract_id": pl.String,  # as in the previous run
        "class": pl.String,  # the previous run's class
        "reason_code": pl.String,  # the previous run's
        "reason": pl.String,  # the previous run's
        "first_seen_at": pl.Datetime("us", "UTC"),
        "resolved_as": pl.String,  # match | not_extracted | no_longer_found (a merge: either)
    }
)
# The last runs (earlier completed ones, then the current run), oldest first.
TREND: Final = pl.Schema(
    {
        "run_key": pl.String,
        "started_at": pl.Datetime("us", "UTC"),
        "total": pl.Int64,
        **{name: pl.Int64 for name in CLASSES},
        "current": pl.Boolean,  # the run being compared (not yet persisted)
    }
)


def conform(frame: pl.DataFrame, schema: pl.Schema, stage: str) -> pl.DataFrame:
    """Check ``frame`` has every column of ``schema`` with castable types; return it in order.

    Extra columns are kept after the documented ones. Raises ``ValueError`` naming the stage and
    the missing columns, because a frame that breaks its schema is a bug, not bad input.
    """
    missing = [name for name in schema if name not in frame.columns]
    if missing:
        raise ValueError(f"{stage}: frame is missing documented columns {missing}")
    extra = [name for name in frame.columns if name not in schema]
    return frame.select(*[pl.col(name).cast(dtype, strict=True) for name, dtype in schema.items()], *extra)


def stored_once(series: pl.Series) -> pl.Series:
    """``series`` (strings) with each distinct value stored once and every row a view of it. For
    columns of a few distinct long values, such as a token address on every row, which polars
    otherwise stores once per row (at 1M rows, about 70 MB a column against 15 MB)."""
    if series.is_empty():
        return series
    # Built from Python strings: the distinct values taken from ``series`` would be views into
    # its buffers, and keep them alive.
    uniques = pl.Series(series.name, series.unique(maintain_order=True).to_list(), dtype=series.dtype)
    codes = pl.Series(range(uniques.len()), dtype=pl.UInt32)
    return uniques.gather(series.replace_strict(uniques, codes, return_dtype=pl.UInt32))


def compacted(frame: pl.DataFrame, few_distinct: Iterable[str] = ()) -> pl.DataFrame:
    """``frame`` with each column that is null on every row held as one null (a polars scalar
    column, not a 16-byte view or 8 bytes per row: at 1M rows, 15 MB a column), and its
    ``few_distinct`` string columns stored once (:func:`stored_once`), in ``frame``'s chunks."""
    if frame.is_empty():
        return frame
    null = [name for name in frame.columns if frame.get_column(name).null_count() == frame.height]
    return frame.with_columns(
        *(
            chunked_like(stored_once(frame.get_column(name)), frame)
            for name in few_distinct
            if name not in null
        ),
        *(pl.repeat(None, frame.height, dtype=frame.schema[name]).alias(name) for name in null),
    )


def filled_at(frame: pl.DataFrame, rows: pl.Series, values: pl.Series) -> pl.Series:
    """A column as long as ``frame``, named and typed as ``values``: ``values`` at the positions
    ``rows``, null everywhere else, in ``frame``'s chunks (:func:`chunked_like`). For a column
    computed on a few rows of a large frame (the findings' ids, their drift ranks, their life)."""
    column = pl.repeat(None, frame.height, dtype=values.dtype, eager=True).alias(values.name)
    return chunked_like(column.scatter(rows, values), frame)


def chunked_like(series: pl.Series, frame: pl.DataFrame) -> pl.Series:
    """``series`` (as long as ``frame``) cut into the chunks of ``frame``'s columns, without a
    copy. A column chunked apart from the others makes polars copy the whole frame into one chunk
    at its next operation: 0.35 GB for the findings of 1M invoices."""
    lengths = frame.to_series(0).chunk_lengths() if frame.width else []
    if len(lengths) <= 1 or series.chunk_lengths() == lengths:
        return series
    pieces, start = [], 0
    for length in lengths:
        pieces.append(series.slice(start, length))
        start += length
    return pl.concat(pieces, rechunk=False)
