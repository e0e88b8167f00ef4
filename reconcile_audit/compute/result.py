"""The run's result: what Compute hands to Output.

The classify cell builds one :class:`AuditResult`; history, persist, the report and delivery all
read its counts instead of counting the findings again, so every artifact agrees on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from reconcile_audit.compute.schemas import (
    FINDINGS,
    AuditStatus,
    ClassCounts,
    chunked_like,
    conform,
    count_classes,
)
from reconcile_audit.compute.stranded import Stranded

if TYPE_CHECKING:  # explain reads the RPC (stellar-sdk): the CLI has no need to load it
    from reconcile_audit.compute.explain import Explained

NOT_LOOKED_FOR: Final = "the run did not look for invoices outside the audit"


@dataclass(frozen=True)
class Tallies:
    """Counts over every row of a run that its facts report. Counted from the findings when the
    result holds every row; carried from the shards when it is a merge, which holds only the rows
    they stored."""

    balances_checked: int  # rows whose escrow balance was read
    database_sides_compared: bool  # the source had the database's other sides

    @classmethod
    def of(cls, findings: pl.DataFrame) -> Tallies:
        return cls(
            balances_checked=int(findings.get_column("chain_balance_base_units").is_not_null().sum()),
            database_sides_compared=bool(findings.get_column("db_ledger_sequence").is_not_null().any()),
        )

    def to_facts(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> Tallies:
        return cls(
            balances_checked=int(facts.get("balances_checked") or 0),
            database_sides_compared=bool(facts.get("database_sides_compared")),
        )

    @classmethod
    def combined(cls, parts: list[Tallies]) -> Tallies:
        return cls(
            balances_checked=sum(part.balances_checked for part in parts),
            database_sides_compared=any(part.database_sides_compared for part in parts),
        )


@dataclass(frozen=True)
class AuditResult:
    """The FINDINGS frame (one row per extracted invoice), its class counts, and the ledger range
    the escrows were read at (``None`` when nothing was read).

    A merge of shards (``held_tallies`` set) holds only the rows the shards stored: every
    non-match, and the matches with a flag. Its plain matches are in ``counts`` alone.
    """

    findings: pl.DataFrame
    counts: ClassCounts
    ledger_min: int | None = None
    ledger_max: int | None = None
    incomplete: str | None = None  # why the ledger read cannot stand as a result (an outage)
    reread: int = 0  # escrows read again after the sweep because they changed while it ran
    # Escrows of invoices outside the audit that still hold funds: apart from the counts.
    stranded: Stranded = field(default_factory=lambda: Stranded.not_checked(NOT_LOOKED_FOR))
    held_tallies: Tallies | None = None
    merged_shards: int | None = None  # a merge: how many shards it combined
    # Why the worst mismatches drifted (the explain stage); None when it did not run.
    explained: Explained | None = None

    def __post_init__(self) -> None:
        if self.held_tallies is not None:
            held = count_classes(self.findings)
            if held.total - held.match != self.counts.non_match or held.match > self.counts.match:
                raise ValueError(f"counts say {self.counts}, the merged rows hold {held}")
        elif self.counts.total != self.findings.height:
            raise ValueError(
                f"counts say {self.counts.total} invoices, the findings hold {self.findings.height}"
            )

    @property
    def holds_every_row(self) -> bool:
        return self.held_tallies is None

    @property
    def tallies(self) -> Tallies:
        return self.held_tallies if self.held_tallies is not None else Tallies.of(self.findings)

    def stored_facts(self) -> dict[str, Any]:
        """What a merge of shards needs from each shard's stored result that its rows do not say
        (``reconciliation_runs.results["facts"]``)."""
        return {
            "tallies": self.tallies.to_facts(),
            "reread": self.reread,
            "stranded": self.stranded.to_facts(),
        }

    @classmethod
    def of(
        cls,
        findings: pl.DataFrame,
        *,
        ledger_min: int | None = None,
        ledger_max: int | None = None,
        incomplete: str | None = None,
        reread: int = 0,
        stranded: Stranded | None = None,
    ) -> AuditResult:
        """Check ``findings`` against FINDINGS and count its classes: the one place they are counted."""
        frame = conform(findings, FINDINGS, "result")
        return cls(
            frame,
            count_classes(frame),
            ledger_min,
            ledger_max,
            incomplete,
            reread,
            stranded or Stranded.not_checked(NOT_LOOKED_FOR),
        )

    def with_explanations(self, explained: Explained) -> AuditResult:
        """This result with each explained finding's ``explanation``; classes and counts unchanged."""
        return replace(self, findings=_with_explanations(self.findings, explained), explained=explained)

    def for_tenant(self, tenant_id: str) -> AuditResult | None:
        """This result narrowed to one tenant's invoices and stranded escrows (its own report);
        None for a merge of shards, whose plain matches are counts without rows."""
        if not self.holds_every_row:
            return None
        frame = self.findings.filter(pl.col("tenant_id") == tenant_id)
        stranded = replace(self.stranded, frame=self.stranded.frame.filter(pl.col("tenant_id") == tenant_id))
        explained = self.explained
        if explained is not None:
            ids = frame.get_column("invoice_id").implode()
            explained = replace(
                explained,
                explanations=explained.explanations.filter(pl.col("invoice_id").is_in(ids)),
                events=explained.events.filter(pl.col("invoice_id").is_in(ids)),
            )
        return replace(
            self, findings=frame, counts=count_classes(frame), stranded=stranded, explained=explained
        )

    @classmethod
    def empty(cls) -> AuditResult:
        return cls(pl.DataFrame(schema=FINDINGS), ClassCounts.zero())

    @property
    def status(self) -> AuditStatus:
        return AuditStatus.INCOMPLETE if self.incomplete else self.counts.status


def _with_explanations(findings: pl.DataFrame, explained: Explained) -> pl.DataFrame:
    """``findings`` with ``explanation`` filled for the explained rows (null for the rest)."""
    if explained.explanations.is_empty():
        return findings
    # One row per invoice id on the right, so that an id twice in one run cannot multiply rows.
    by_invoice = explained.explanations.unique("invoice_id", keep="first").select("invoice_id", "explanation")
    # Joined on the two columns it needs and set beside the others: a join of every column copied
    # every finding (0.5 GB at 1M invoices).
    explanation = (
        findings.select("invoice_id", "class")
        .join(by_invoice, on="invoice_id", how="left", maintain_order="left")
        .select(pl.when(pl.col("class") == "mismatch").then(pl.col("explanation")).alias("explanation"))
        .to_series()
    )
    return findings.with_columns(chunked_like(explanation, findings))
