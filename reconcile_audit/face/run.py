"""The run context: what every notebook cell of one run shares, and the delivery sequence.

:meth:`RunContext.start` is the notebook's first call. It fixes the run's identity (id and key),
starts the clock, sends the package's log to ``run.log`` beside the artifacts, installs
redaction, and records the run as started. Later cells call one stage each and hand their
results to the context (``persist``, ``render``, ``deliver``), so no cell passes six keyword
arguments around. The runner builds the same context (:meth:`RunContext.create`) to record a run
whose notebook died, so a failed run and a completed one are written by the same code.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re
import secrets
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import polars as pl
from prometheus_client import CollectorRegistry

from reconcile_audit import __version__
from reconcile_audit.compute import persist
from reconcile_audit.compute.history import HistoryComparison
from reconcile_audit.compute.persist import PersistOutcome, RunRecord
from reconcile_audit.compute.result import AuditResult
from reconcile_audit.compute.schemas import AuditStatus, ClassCounts, DeliveryStatus, RunStatus
from reconcile_audit.compute.settings import RedactingFilter, Settings, install_redaction, load_settings
from reconcile_audit.errors import PersistError
from reconcile_audit.output import deliver, metrics
from reconcile_audit.output.deliver import ArtifactPaths
from reconcile_audit.output.report import Report, render_report
from reconcile_audit.output.summary import RunFacts, RunSummary

log = logging.getLogger(__name__)

RUN_LOG: Final = "run.log"
RUN_EVENTS: Final = "run.jsonl"  # the same records as JSON lines, which the runner follows
SPOOL: Final = ".spool"  # classify's plain matches until results.parquet holds them; the runner removes it


RUN_ID_PATTERN: Final = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]+")  # what new_run_id makes; sorts by time


def new_run_id(now: datetime) -> str:
    """Sortable and unique: the UTC start time plus a short random suffix."""
    return f"{now.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def default_run_key(tenant_id: str | None, now: datetime) -> str:
    """One run per tenant scope per UTC day: a rerun the same night replaces the failed one."""
    return f"{tenant_id or 'all'}:{now.astimezone(UTC).strftime('%Y-%m-%d')}"


@dataclass
class StageClock:
    """Wall-clock time of the run and of each stage, for the report and the metrics."""

    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _origin: float = field(default_factory=time.perf_counter)
    _stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        # The runner follows this record: when the kernel dies or a cell times out, papermill
        # leaves no trace of which cell was running, and this names it.
        log.info("stage %s started", name, extra={"stage": name})
        begin = time.perf_counter()
        try:
            yield
        finally:
            self._stages[name] = self._stages.get(name, 0.0) + time.perf_counter() - begin
            release_freed_memory()

    @property
    def stage_seconds(self) -> Mapping[str, float]:
        return MappingProxyType(dict(self._stages))

    def elapsed(self) -> float:
        return time.perf_counter() - self._origin


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system between stages. glibc keeps what a stage
    freed (its Python objects, DuckDB's and Arrow's buffers) for reuse, and the next stage's
    peak then stacks on top of it: at 1M invoices that is hundreds of MB. A no-op off glibc."""
    try:
        _LIBC.malloc_trim(0)
    except AttributeError:
        pass


try:
    _LIBC: Any = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc (macOS, musl): nothing to trim
    _LIBC = None


TEXT_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: for log shippers (``--log-format json``) and ``run.jsonl``,
    which the runner follows to put the kernel's warnings on its own console."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "console", False):
            event["console"] = True
        if getattr(record, "stage", None):
            event["stage"] = record.stage  # type: ignore[attr-defined]
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False, default=str)


def log_to_file(path: Path, settings: Settings, *, level: int = logging.INFO) -> logging.Handler:
    """Send the package's log records to ``path`` (text) and beside it to ``run.jsonl`` (JSON
    lines), secrets redacted.

    Every drifted invoice logs one warning (the emit stage): in the notebook's cell outputs that
    could be thousands of lines, so the complete log goes to files next to the artifacts. The
    runner follows ``run.jsonl`` and repeats its warnings on the console.
    """
    package = logging.getLogger("reconcile_audit")
    handler = None
    for target, formatter in (
        (Path(path), logging.Formatter(TEXT_LOG_FORMAT)),
        (Path(path).with_name(RUN_EVENTS), JsonLogFormatter()),
    ):
        resolved = str(target.resolve())
        for old in [h for h in package.handlers if isinstance(h, logging.FileHandler)]:
            if old.baseFilename == resolved:  # a rerun of the cell must not log every line twice
                package.removeHandler(old)
                old.close()
        file_handler = logging.FileHandler(target, encoding="utf-8")
        file_handler.setLevel(level)
        file_handler.setFormatter(formatter)
        file_handler.addFilter(RedactingFilter(settings.secrets))
        package.addHandler(file_handler)
        handler = handler or file_handler
    package.setLevel(min(package.getEffectiveLevel(), level))
    assert handler is not None
    return handler


def _run_status(result: AuditResult | None) -> RunStatus:
    if result is None:
        return RunStatus.FAILED
    return RunStatus.INCOMPLETE if result.incomplete else RunStatus.COMPLETED


def _incomplete_note(reason: str) -> str:
    return (
        f"The run is incomplete: {reason}. Escrows that were not read are listed as errors; "
        "this result is not a clean bill of health."
    )


@dataclass(frozen=True)
class Delivered:
    """What the deliver step did: the artifact paths, the summary written, and delivery notes."""

    paths: ArtifactPaths
    summary: RunSummary
    notes: tuple[str, ...]
    registry: CollectorRegistry


@dataclass(frozen=True)
class RunContext:
    """One run's identity, settings, clock and artifact folder."""

    settings: Settings
    run_id: str
    run_key: str
    out_dir: Path
    clock: StageClock
    demo: bool = False

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        run_id: str = "",
        run_key: str = "",
        out_dir: Path,
        clock: StageClock | None = None,
        demo: bool = False,
    ) -> RunContext:
        """The context alone, with no side effect (the runner's, before the notebook runs)."""
        clock = clock or StageClock()
        return cls(
            settings=settings,
            run_id=run_id or new_run_id(clock.started_at),
            run_key=run_key or settings.run_key or default_run_key(settings.tenant_id, clock.started_at),
            out_dir=out_dir,
            clock=clock,
            demo=demo,
        )

    @classmethod
    def start(
        cls,
        parameters: Mapping[str, Any],
        *,
        run_id: str = "",
        output_dir: str | Path = "",
        demo: bool = False,
    ) -> RunContext:
        """The notebook's first call: load the settings, then set up and record the run.

        ``parameters`` are the settings among the notebook's parameters (empty means "from the
        environment"). ``output_dir`` empty: a new temporary folder. Raises
        :class:`~reconcile_audit.errors.ConfigError` for bad settings and
        :class:`~reconcile_audit.errors.PersistError` when the state database refuses the start.
        """
        clock = StageClock()
        settings = load_settings(parameters)
        out_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="reconcile-audit-"))
        out_dir.mkdir(parents=True, exist_ok=True)
        context = cls.create(settings, run_id=run_id, out_dir=out_dir, clock=clock, demo=demo)
        install_redaction(settings)
        log_to_file(out_dir / RUN_LOG, settings)
        persist.start_run(
            context.state_url,
            context.run_key,
            settings.tenant_id,
            clock.started_at,
            attempt=context.run_id,
            shard=settings.shard,
        )
        return context

    @property
    def state_url(self) -> str:
        return self.settings.state_url()

    @property
    def started_at(self) -> datetime:
        return self.clock.started_at

    @property
    def headline(self) -> str:
        sources = "demo data" if self.demo else "configured sources"
        shard = "" if self.settings.shard is None else f", shard {self.settings.shard}"
        return f"run `{self.run_id}`, key `{self.run_key}`{shard}, {sources}; artifacts in `{self.out_dir}`"

    def stage(self, name: str) -> Any:
        """``with context.stage("extract"): ...`` times one stage for the report and metrics."""
        return self.clock.stage(name)

    @property
    def spool(self) -> Path:
        """The folder where classify keeps the plain matches (:class:`~reconcile_audit.compute.result.Spool`)."""
        return self.out_dir / SPOOL

    # --- records -------------------------------------------------------------------------------

    def run_record(self, result: AuditResult | None, *, error_message: str | None = None) -> RunRecord:
        """The ``reconciliation_runs`` row: completed with ``result``, or failed without one."""
        return RunRecord(
            run_key=self.run_key,
            tenant_id=self.settings.tenant_id,
            started_at=self.started_at,
            finished_at=datetime.now(UTC),
            status=_run_status(result),
            counts=ClassCounts.zero() if result is None else result.counts,
            ledger_min=None if result is None else result.ledger_min,
            ledger_max=None if result is None else result.ledger_max,
            error_message=f"incomplete: {result.incomplete}"
            if result and result.incomplete
            else error_message,
            attempt=self.run_id,
            shard=self.settings.shard,
        )

    def persist(self, result: AuditResult, comparison: HistoryComparison | None = None) -> PersistOutcome:
        """Store the completed run and its non-match findings, with the finding ids, states and
        open periods ``comparison`` gave them (never raises; see persist_run)."""
        return persist.persist_run(
            self.state_url,
            self.run_record(result),
            result.findings if comparison is None else comparison.findings,
            result.stranded.frame,
            result.stored_facts(),
        )

    def facts(
        self,
        result: AuditResult | None,
        persisted: PersistOutcome | None,
        *,
        comparison: HistoryComparison | None = None,
        failure_message: str | None = None,
    ) -> RunFacts:
        persist_error = None
        if persisted is not None and not persisted.ok:
            persist_error = persisted.error or "the run was not stored"
        return RunFacts(
            run_id=self.run_id,
            status=AuditStatus.FAILED if result is None else result.status,
            started_at=self.started_at,
            finished_at=datetime.now(UTC),
            tenant_id=self.settings.tenant_id,
            ledger_min=None if result is None else result.ledger_min,
            ledger_max=None if result is None else result.ledger_max,
            duration_seconds=self.clock.elapsed(),
            tool_version=__version__,
            persist_error=persist_error,
            failure_message=_incomplete_note(result.incomplete)
            if result and result.incomplete
            else failure_message,
            currencies_checked=None
            if self.settings.currency_tokens is None
            else tuple(sorted(self.settings.currency_tokens)),
            run_folder=f"{socket.gethostname()}:{self.out_dir}",
            database_sides_compared=None if result is None else result.tallies.database_sides_compared,
            balances_checked=None if result is None else result.tallies.balances_checked,
            reread=None if result is None else result.reread,
            stranded=None if result is None or result.stranded.skipped else result.stranded.frame.height,
            report_base_url=self.settings.report_base_url,
            part=self._part(result),
            finding_states=None
            if result is None or comparison is None or comparison.warning is not None
            else comparison.state_counts(),
            explained=_explained_counts(result),
        )

    def _part(self, result: AuditResult | None) -> str | None:
        if self.settings.shard is not None:
            return f"shard {self.settings.shard} of run key {self.run_key}"
        if result is not None and result.merged_shards is not None:
            return f"merged from {result.merged_shards} shards of run key {self.run_key}"
        return None

    def render(
        self, result: AuditResult, comparison: HistoryComparison | None, persisted: PersistOutcome | None
    ) -> tuple[RunFacts, Report]:
        """The run's facts and its report, secrets redacted."""
        facts = self.facts(result, persisted, comparison=comparison)
        return facts, render_report(result, comparison, facts, redact=self.settings.redact)

    def cumulative_mismatches(self, counts: ClassCounts, persisted: PersistOutcome | None) -> int | None:
        """The monotonic counter's value: every persisted mismatch of the scope, this run included.

        When this run was not stored, its mismatches are added to the stored total so the counter
        still moves; when the history cannot be read the counter is left out (``None``) rather
        than pushed as a reset.
        """
        if persisted is not None and persisted.state_unreachable:
            return None
        try:
            stored = persist.cumulative_mismatches(self.state_url, self.settings.tenant_id)
        except PersistError as exc:
            log.warning("mismatch counter left out of the metrics: %s", exc)
            return None
        # A run whose findings failed to store is still written as `failed` with its counts when
        # possible (marked_failed), and the stored total then already holds its mismatches.
        if persisted is not None and (persisted.ok or persisted.marked_failed):
            return stored
        return stored + counts.mismatch

    # --- delivery ------------------------------------------------------------------------------

    def deliver(
        self,
        result: AuditResult | None,
        *,
        report: Report,
        facts: RunFacts,
        persisted: PersistOutcome | None,
        comparison: HistoryComparison | None = None,
        send: bool,
        failed_cell: str | None = None,
    ) -> Delivered:
        """Write the artifacts, then (when ``send``) email the report and push the metrics.

        The artifacts are written first so the email can attach the findings and so a failing
        SMTP server or Pushgateway never costs the run its files; ``summary.json`` and
        ``metrics.prom`` are then rewritten with what delivery did. Never raises over a delivery
        failure: it is a note in the summary and a metric.
        """
        settings = self.settings
        counts = ClassCounts.zero() if result is None else result.counts
        audited = facts.status.audited
        # A run that was not stored did not succeed: the health check and history miss it.
        success = audited and facts.persist_error is None
        cumulative = self.cumulative_mismatches(counts, persisted)
        tenant = metrics.tenant_label(settings.tenant_id)
        # Artifacts carry the history columns (new / persisting, age) when there are any.
        findings = None if result is None else (comparison.findings if comparison else result.findings)

        def registry_for(email_bytes: int | None, email_failed: bool) -> CollectorRegistry:
            return metrics.build_registry(
                metrics.RunMetricsInput(
                    success=success,
                    finished_at_epoch=(facts.finished_at or datetime.now(UTC)).timestamp(),
                    duration_seconds=self.clock.elapsed(),
                    tenant=tenant,
                    status=facts.status,
                    cumulative_mismatches=cumulative,
                    class_counts=counts.by_class() if audited else None,
                    findings_by_age=comparison.findings_by_age()
                    if audited and comparison is not None and comparison.warning is None
                    else None,
                    unacknowledged=facts.finding_states["unacknowledged"]
                    if audited and facts.finding_states is not None
                    else None,
                    stage_seconds=self.clock.stage_seconds,
                    stranded=facts.stranded if audited else None,
                    explained=facts.explained if audited else None,
                    email_bytes=email_bytes,
                    email_failed=email_failed,
                )
            )

        def summary_of(run_facts: RunFacts) -> RunSummary:
            return RunSummary.from_run(
                run_facts, counts, report, redact=settings.redact, failed_cell=failed_cell
            )

        timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.clock.stage_seconds.items())
        log.info("stage timings: %s", timings, extra={"console": True})
        registry = registry_for(None, False)
        summary = summary_of(facts)
        paths = deliver.write_artifacts(
            self.out_dir,
            findings,
            report,
            summary,
            registry,
            None if result is None else result.stranded.frame,
            None if result is None or result.explained is None else result.explained.events,
            None if result is None else result.spool,
        )
        if not send:
            return Delivered(paths, summary, (), registry)
        if settings.shard is not None:
            # One email and one push per run key, from its merge, never one per shard.
            note = f"shard {settings.shard}: nothing sent; `reconcile-audit merge` delivers the whole run"
            return Delivered(paths, summary, (note,), registry)

        notes: list[str] = []
        email = self.send_report(result, comparison, facts, findings, settings.alert_email_to)
        notes.append(f"email {email.status}: {email.detail}")
        notes.extend(self.send_tenant_reports(result, comparison, facts))
        skipped = email.status == DeliveryStatus.SKIPPED
        registry = registry_for(
            None if skipped else email.message_bytes, email.status == DeliveryStatus.FAILED
        )
        pushed = metrics.push(registry, settings.pushgateway_url, tenant=tenant)
        notes.append(
            f"metrics push {pushed.status}: {pushed.detail}"
            if pushed.detail
            else f"metrics push {pushed.status}"
        )
        if settings.metrics_textfile_dir is not None:
            written = metrics.write_textfile_dir(registry, settings.metrics_textfile_dir, tenant)
            notes.append(f"metrics textfile written to {written}")
        summary = summary_of(replace(facts, delivery_notes=(*facts.delivery_notes, *notes)))
        deliver.write_atomically(
            paths.summary_json, lambda path: path.write_text(summary.to_json(), encoding="utf-8")
        )
        metrics.write_textfile(registry, paths.metrics_prom)
        return Delivered(paths, summary, tuple(notes), registry)

    def send_tenant_reports(
        self, result: AuditResult | None, comparison: HistoryComparison | None, facts: RunFacts
    ) -> list[str]:
        """Each tenant of RECONCILE_TENANT_RECIPIENTS gets a report of its own invoices only,
        built from the same findings; returns one delivery note per tenant."""
        notes = []
        for tenant, recipients in self.settings.tenant_recipients.items():
            # A failed run is the operator's to handle: a tenant's team hears of audited results only.
            own = None if result is None else result.for_tenant(tenant)
            if own is None:
                why = (
                    "the run has no result"
                    if result is None
                    else "a merge of shards has no per-tenant counts"
                )
                notes.append(f"email to tenant {tenant} {DeliveryStatus.SKIPPED}: {why}")
                continue
            own_comparison = None if comparison is None else comparison.for_tenant(tenant)
            findings = own_comparison.findings if own_comparison else own.findings
            own_facts = replace(
                facts,
                tenant_id=tenant,
                stranded=None if facts.stranded is None else own.stranded.frame.height,
                finding_states=None
                if own_comparison is None or facts.finding_states is None
                else own_comparison.state_counts(),
            )
            sent = self.send_report(own, own_comparison, own_facts, findings, recipients)
            notes.append(f"email to tenant {tenant} {sent.status}: {sent.detail}")
        return notes

    def send_report(
        self,
        result: AuditResult | None,
        comparison: HistoryComparison | None,
        facts: RunFacts,
        findings: pl.DataFrame | None,
        recipients: tuple[str, ...],
    ) -> deliver.DeliveryOutcome:
        """Email the report with the findings attached to ``recipients``. Built only when there
        are recipients: at 1M invoices the attachment alone is real work. The email's report is
        rendered again with the footer saying what is attached and what had to be cut."""
        settings = replace(self.settings, alert_email_to=recipients)
        if not recipients:
            return deliver.DeliveryOutcome(DeliveryStatus.SKIPPED, "ALERT_EMAIL_TO is not set")
        attachment = (
            None
            if findings is None
            else deliver.findings_attachment(findings, settings.email_max_attachment_bytes)
        )
        email_facts = replace(facts, attachment_note=None if attachment is None else attachment.note)
        # The first screen holds what needs a person; acknowledged findings are a count.
        report = render_report(
            result,
            comparison,
            email_facts,
            redact=settings.redact,
            max_attention=settings.email_max_new,
            email=True,
        )
        return deliver.send_email(settings, deliver.build_email(settings, report, email_facts, attachment))

    def record_failure(
        self,
        failure_message: str,
        *,
        send: bool,
        failed_cell: str | None = None,
        state_reachable: bool = True,
    ) -> RunSummary:
        """The runner's path when the notebook died: the notebook cannot finish its own record.

        Ends the attempt as failed (so the health check reads ``failed``), renders a FAILED
        report, writes every artifact (empty results), and when ``send`` emails the report and
        pushes the failure metrics, which leave the last-success timestamp untouched. Each step
        is independent: an unreachable state database must not stop the metrics that would alert
        on it (``state_reachable=False`` skips it without a word, as the caller already said why).
        Safe whatever the notebook got to: an attempt that already ended completed (the persist
        cell ran, a later one broke) stays completed, and a key's completed result is never
        replaced by a failure.
        """
        message = self.settings.redact(failure_message)
        if state_reachable:
            persisted = persist.persist_run(
                self.state_url, self.run_record(None, error_message=message), AuditResult.empty().findings
            )
        else:
            persisted = PersistOutcome(
                ok=False,
                run_key=self.run_key,
                run_id=None,
                findings_written=0,
                results_rows=0,
                seconds=0.0,
                error="the state database could not be reached",
                state_unreachable=True,
            )
        facts = self.facts(None, persisted, failure_message=message)
        rendered = render_report(None, None, facts, redact=self.settings.redact)
        delivered = self.deliver(
            None, report=rendered, facts=facts, persisted=persisted, send=send, failed_cell=failed_cell
        )
        return delivered.summary


def _explained_counts(result: AuditResult | None) -> dict[str, int] | None:
    """Mismatches per explain outcome, and ``beyond`` RECONCILE_EXPLAIN_MAX; for a merge of shards,
    which does not explain again, ``from_shards``: the findings that carry a shard's explanation."""
    if result is None:
        return None
    if result.explained is not None:
        return {**result.explained.counts(), "beyond": result.explained.skipped}
    if result.merged_shards is not None:
        return {"from_shards": int(result.findings.get_column("explanation").is_not_null().sum())}
    return None
