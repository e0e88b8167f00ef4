"""The run's result: what Compute hands to Output.

The classify cell builds one :class:`AuditResult`; history, persist, the report and delivery all
read its counts instead of counting the findings again, so every artifact agrees on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import polars as pl

from reconcile_audit.compute.schemas import FINDINGS, AuditStatus, ClassCounts, conform, count_classes
from reconcile_audit.compute.stranded import Stranded

NOT_LOOKED_FOR: Final = "the run did not look for invoices outside the audit"


@dataclass(frozen=True)
class AuditResult:
    """The FINDINGS frame (one row per extracted invoice), its class counts, and the ledger range
    the escrows were read at (``None`` when nothing was read)."""

    findings: pl.DataFrame
    counts: ClassCounts
    ledger_min: int | None = None
    ledger_max: int | None = None
    incomplete: str | None = None  # why the ledger read cannot stand as a result (an outage)
    reread: int = 0  # escrows read again after the sweep because they changed while it ran
    # Escrows of invoices outside the audit that still hold funds: apart from the counts.
    stranded: Stranded = field(default_factory=lambda: Stranded.not_checked(NOT_LOOKED_FOR))

    def __post_init__(self) -> None:
        if self.counts.total != self.findings.height:
            raise ValueError(
                f"counts say {self.counts.total} invoices, the findings hold {self.findings.height}"
            )

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

    @classmethod
    def empty(cls) -> AuditResult:
        return cls(pl.DataFrame(schema=FINDINGS), ClassCounts.zero())

    @property
    def status(self) -> AuditStatus:
        return AuditStatus.INCOMPLETE if self.incomplete else self.counts.status
