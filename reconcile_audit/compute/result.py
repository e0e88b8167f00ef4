"""The run's result: what Compute hands to Output.

The classify cell builds one :class:`AuditResult`; history, persist, the report and delivery all
read its counts instead of counting the findings again, so every artifact agrees on them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

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
    result holds every row, as classify spooled them when it spools; carried from the shards when
    it is a merge, which holds only the rows they stored."""

    balances_checked: int  # rows whose escrow balance was read
    database_sides_compared: bool  # the source had the database's other sides

    COLUMNS: ClassVar = ("chain_balance_base_units", "db_ledger_sequence")  # counted from these

    @classmethod
    def of(cls, findings: pl.DataFrame) -> Tallies:
        balances, sides = cls.COLUMNS
        return cls(
            balances_checked=int(findings.get_column(balances).is_not_null().sum()),
            database_sides_compared=bool(findings.get_column(sides).is_not_null().any()),
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
class Spool:
    """Every row of a run, kept on disk: at 1M invoices, holding them took the run's peak past
    1.5 GB. The result holds only the rows that need a look (``schemas.HELD``).

    ``directory`` holds classify's Parquet parts of the FINDINGS rows, each row with ``_row``, its
    position in the run's order; part k holds the rows ``k * part_rows`` to ``(k + 1) * part_rows``.
    ``counts`` and ``tallies`` are of every row. ``positions`` is the ``_row`` of each row the
    result holds, in the result's order.
    """

    directory: Path
    part_rows: int
    positions: pl.Series
    counts: ClassCounts
    tallies: Tallies

    def scan(self) -> pl.LazyFrame:
        """Every row as classify wrote it (FINDINGS and ``_row``), in the run's order."""
        return pl.scan_parquet(self.directory / "*.parquet")

    def every_row(self, held: pl.DataFrame) -> Iterator[pl.DataFrame]:
        """Every row, in the run's order, one classify part at a time (at 1M invoices, all at once
        was 0.5 GB): those of ``held`` (in line with the result's rows, any columns FINDINGS names
        or adds) as they are there, the others as classify wrote them, with a column the spool
        lacks null: a plain match has no life."""
        positions = self.positions.cast(pl.Int64)
        for index, part in enumerate(sorted(self.directory.glob("*.parquet"))):
            start = index * self.part_rows
            ours = positions.is_between(start, start + self.part_rows, closed="left")
            taken = positions.filter(ours)
            spooled = (
                pl.read_parquet(part)
                .with_columns(pl.col("_row").cast(pl.Int64))
                .filter(~pl.col("_row").is_in(taken.implode()))
                .select(
                    *(
                        pl.col(name) if name in FINDINGS else pl.lit(None, dtype=dtype).alias(name)
                        for name, dtype in held.schema.items()
                    ),
                    "_row",
                )
            )
            rows = held.filter(ours).with_columns(taken.alias("_row"))
            yield pl.concat([rows, spooled]).sort("_row").drop("_row")


def spool_part(part: pl.DataFrame, directory: Path, index: int) -> None:
    """Write ``part`` (FINDINGS rows with ``_row``) as the spool's part ``index``."""
    # lz4: written and read again within the run, so speed matters more than size.
    part.select(*FINDINGS.names(), "_row").write_parquet(
        directory / f"part-{index:05d}.parquet", compression="lz4"
    )


@dataclass(frozen=True)
class AuditResult:
    """The FINDINGS frame (one row per extracted invoice), its class counts, and the ledger range
    the escrows were read at (``None`` when nothing was read).

    A merge of shards (``held_tallies`` set) holds only the rows the shards stored: every
    non-match, and the matches with a flag. Its plain matches are in ``counts`` alone. A run that
    spools (``spool`` set) holds the same rows, and its plain matches are on disk.
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
    spool: Spool | None = None

    def __post_init__(self) -> None:
        if self.spool is not None:
            held = count_classes(self.findings)
            every = self.spool.counts
            if (
                self.counts != every
                or held.non_match != every.non_match
                or held.match > every.match
                or self.spool.positions.len() != self.findings.height
            ):
                raise ValueError(f"counts say {self.counts}, the spool {every}, the held rows {held}")
        elif self.held_tallies is not None:
            held = count_classes(self.findings)
            if held.total - held.match != self.counts.non_match or held.match > self.counts.match:
                raise ValueError(f"counts say {self.counts}, the merged rows hold {held}")
        elif self.counts.total != self.findings.height:
            raise ValueError(
                f"counts say {self.counts.total} invoices, the findings hold {self.findings.height}"
            )

    @property
    def holds_every_row(self) -> bool:
        return self.held_tallies is None and self.spool is None

    @property
    def knows_every_class(self) -> bool:
        """Whether tonight's class of every invoice can be looked up (``classes_of``): not for a
        merge of shards, which never saw the plain matches."""
        return self.holds_every_row or self.spool is not None

    def classes_of(self, invoice_ids: pl.Series) -> pl.DataFrame:
        """``invoice_id`` and ``class`` of tonight's rows of ``invoice_ids``."""
        wanted = pl.col("invoice_id").is_in(invoice_ids.implode())
        rows = self.findings.lazy() if self.spool is None else self.spool.scan()
        return rows.filter(wanted).select("invoice_id", "class").collect()

    @property
    def tallies(self) -> Tallies:
        if self.held_tallies is not None:
            return self.held_tallies
        if self.spool is not None:
            return self.spool.tallies
        return Tallies.of(self.findings)

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
        spool: Spool | None = None,
    ) -> AuditResult:
        """Check ``findings`` against FINDINGS and count its classes (with ``spool``, the rows
        it holds were counted as classify spooled them)."""
        frame = conform(findings, FINDINGS, "result")
        return cls(
            frame,
            count_classes(frame) if spool is None else spool.counts,
            ledger_min,
            ledger_max,
            incomplete,
            reread,
            stranded or Stranded.not_checked(NOT_LOOKED_FOR),
            spool=spool,
        )

    def with_explanations(self, explained: Explained) -> AuditResult:
        """This result with each explained finding's ``explanation``; classes and counts unchanged."""
        return replace(self, findings=_with_explanations(self.findings, explained), explained=explained)

    def for_tenant(self, tenant_id: str) -> AuditResult | None:
        """This result narrowed to one tenant's invoices and stranded escrows (its own report);
        None for a merge of shards, whose plain matches are counts without rows."""
        if not self.knows_every_class:
            return None
        frame = self.findings.filter(pl.col("tenant_id") == tenant_id)
        counts, tallies = count_classes(frame), None
        if self.spool is not None:  # the tenant's result holds its rows as a merge does: no spool
            every = (
                self.spool.scan()
                .filter(pl.col("tenant_id") == tenant_id)
                .select("class", *Tallies.COLUMNS)
                .collect()
            )
            counts, tallies = count_classes(every), Tallies.of(every)
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
            self,
            findings=frame,
            counts=counts,
            stranded=stranded,
            explained=explained,
            held_tallies=tallies,
            spool=None,
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
