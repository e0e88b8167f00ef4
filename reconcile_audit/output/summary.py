"""The run's facts and its machine-readable summary: the ``summary.json`` contract.

``summary.json`` is what schedulers, the runner and other tools read. Its shape is versioned by
``schema_version``: a field may be added within a version; renaming or removing one, or
changing what it means, takes a new version. ``RunSummary.from_json`` reads it back for the
runner, so nothing outside this module parses the file by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Protocol

from reconcile_audit.compute.schemas import CLASSES, AuditStatus, ClassCounts

SUMMARY_SCHEMA_VERSION: Final = 1


def identity(text: str) -> str:
    return text


@dataclass(frozen=True)
class RunFacts:
    """Facts about the run that the findings do not carry.

    Free-text fields (``failure_message``, ``persist_error``, ``delivery_notes``) may come from
    exceptions; :func:`render_report` passes them through its ``redact`` callable.
    """

    run_id: str
    status: AuditStatus
    started_at: datetime
    finished_at: datetime | None
    tenant_id: str | None
    ledger_min: int | None
    ledger_max: int | None
    duration_seconds: float | None
    tool_version: str
    notebook_path: str = "notebook.ipynb"
    persist_error: str | None = None
    delivery_notes: tuple[str, ...] = ()
    failure_message: str | None = None
    # The invoice currencies checked against their funding tokens; None: no currency was checked.
    currencies_checked: tuple[str, ...] | None = None
    # Where the run's files are: the folder on the host that ran it, and, when published, the URL
    # of the folder that holds run folders (RECONCILE_REPORT_BASE_URL).
    run_folder: str | None = None
    report_base_url: str | None = None
    attachment_note: str | None = None  # what the email attaches, and what it had to leave out
    # Whether escrow_summaries' other sides (released, available, synced ledger) were compared;
    # None when the run did not get that far.
    database_sides_compared: bool | None = None
    # Custodial escrows whose token balance was read and held to their status.
    balances_checked: int | None = None
    # Escrows of findings that changed while the sweep ran, read again after it.
    reread: int | None = None
    # Escrows outside the audit that still hold or owe funds, or could not be read; None: not checked.
    stranded: int | None = None
    # What part of its run key this run audited: "shard 2/4 ...", "merged from 4 shards ..."; None: all.
    part: str | None = None
    # Open findings per state (new, reopened, persisting, acknowledged) and overdue; None: no history.
    finding_states: Mapping[str, int] | None = None
    # Mismatches per explain outcome (explained, partial, unexplained, unavailable) and "beyond"
    # RECONCILE_EXPLAIN_MAX; None when the explain stage did not run.
    explained: Mapping[str, int] | None = None


class ListedFindings(Protocol):
    """How many findings the report listed (``report.Report`` has these)."""

    @property
    def findings_shown(self) -> int: ...

    @property
    def findings_omitted(self) -> int: ...


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


@dataclass(frozen=True)
class RunSummary:
    """The run's machine-readable summary (``summary.json``), which the runner reads back."""

    run_id: str
    status: AuditStatus
    total: int
    counts: Mapping[str, int]
    tenant_id: str | None
    started_at: str | None
    finished_at: str | None
    ledger_min: int | None
    ledger_max: int | None
    duration_seconds: float | None
    tool_version: str
    persisted: bool
    persist_error: str | None
    delivery: tuple[str, ...]
    failure_message: str | None
    findings_shown: int | None = None
    findings_omitted: int | None = None
    failed_cell: str | None = None  # the notebook cell that failed, when the runner recorded it
    # The currencies checked against their funding tokens; None when RECONCILE_CURRENCY_TOKENS is unset.
    currencies_checked: tuple[str, ...] | None = None
    # Escrows outside the audit that still hold or owe funds, or could not be read; None: not checked.
    stranded: int | None = None
    # Findings no acknowledgement covers, findings one does, and unacknowledged ones older than
    # RECONCILE_FINDING_SLA_DAYS; None when the run had no history to judge them by.
    unacknowledged: int | None = None
    acknowledged: int | None = None
    overdue: int | None = None
    # Mismatches by what the chain said of their cause, and "beyond" RECONCILE_EXPLAIN_MAX; None
    # when the explain stage did not run.
    explained: Mapping[str, int] | None = None
    schema_version: int = SUMMARY_SCHEMA_VERSION

    @property
    def needs_a_person(self) -> bool:
        """Findings that no acknowledgement covers (every finding, when none could be judged)."""
        if self.status != AuditStatus.FINDINGS:
            return False
        return self.unacknowledged is None or self.unacknowledged > 0

    @property
    def class_counts(self) -> ClassCounts:
        return ClassCounts(total=self.total, **{name: int(self.counts.get(name, 0)) for name in CLASSES})

    @classmethod
    def from_run(
        cls,
        facts: RunFacts,
        counts: Mapping[str, int],
        report: ListedFindings | None = None,
        *,
        redact: Callable[[str], str] = identity,
        failed_cell: str | None = None,
    ) -> RunSummary:
        per_class = {c: int(counts.get(c, 0)) for c in CLASSES}
        states = facts.finding_states

        def clean(text: str | None) -> str | None:
            return None if text is None else redact(text)

        return cls(
            run_id=facts.run_id,
            status=facts.status,
            total=sum(per_class.values()),
            counts=MappingProxyType(per_class),
            tenant_id=facts.tenant_id,
            started_at=_iso(facts.started_at),
            finished_at=_iso(facts.finished_at),
            ledger_min=facts.ledger_min,
            ledger_max=facts.ledger_max,
            duration_seconds=facts.duration_seconds,
            tool_version=facts.tool_version,
            persisted=facts.persist_error is None,
            persist_error=clean(facts.persist_error),
            delivery=tuple(redact(n) for n in facts.delivery_notes),
            failure_message=clean(facts.failure_message),
            findings_shown=None if report is None else report.findings_shown,
            findings_omitted=None if report is None else report.findings_omitted,
            failed_cell=failed_cell,
            currencies_checked=facts.currencies_checked,
            stranded=facts.stranded,
            unacknowledged=None if states is None else states["unacknowledged"],
            acknowledged=None if states is None else states["acknowledged"],
            overdue=None if states is None else states["overdue"],
            explained=None if facts.explained is None else MappingProxyType(dict(facts.explained)),
        )

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["counts"] = dict(self.counts)
        data["delivery"] = list(self.delivery)
        data["explained"] = None if self.explained is None else dict(self.explained)
        data["currencies_checked"] = (
            None if self.currencies_checked is None else list(self.currencies_checked)
        )
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunSummary:
        data = json.loads(text)
        data["status"] = AuditStatus(data["status"])
        data["counts"] = MappingProxyType({c: int(data["counts"].get(c, 0)) for c in CLASSES})
        data["delivery"] = tuple(data.get("delivery") or ())
        if data.get("currencies_checked") is not None:
            data["currencies_checked"] = tuple(data["currencies_checked"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
