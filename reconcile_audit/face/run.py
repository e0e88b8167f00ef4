"""Glue between the stages for the notebook and the runner: run identity, timings, run records,
facts, metrics input, and the delivery sequence. No stage logic lives here.

The notebook calls one stage per cell; what those cells share (when the run started, how long
each stage took, what to persist and report about it) is built here so the cells stay short and
the runner's failure path builds exactly the same records as a successful notebook run.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from reconcile_audit import __version__
from reconcile_audit.compute.classify import ClassCounts, count_classes
from reconcile_audit.compute.schemas import CLASSES
from reconcile_audit.compute.settings import RedactingFilter, Settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from reconcile_audit.compute.ledger import LedgerRead
    from reconcile_audit.compute.persist import PersistOutcome, RunRecord
    from reconcile_audit.output.deliver import ArtifactPaths
    from reconcile_audit.output.report import Report, RunFacts, RunSummary, Status

log = logging.getLogger(__name__)

RUN_LOG: Final = "run.log"


# --- identity and timing ------------------------------------------------------------------------


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
        begin = time.perf_counter()
        try:
            yield
        finally:
            self._stages[name] = self._stages.get(name, 0.0) + time.perf_counter() - begin

    @property
    def stage_seconds(self) -> Mapping[str, float]:
        return MappingProxyType(dict(self._stages))

    def elapsed(self) -> float:
        return time.perf_counter() - self._origin


def log_to_file(path: Path, settings: Settings, *, level: int = logging.INFO) -> logging.Handler:
    """Send the package's log records to ``path`` as well, secrets redacted.

    Every drifted invoice logs one warning (the emit stage): in the notebook's cell outputs that
    could be thousands of lines, so the complete log goes to a file next to the artifacts.
    """
    package = logging.getLogger("reconcile_audit")
    target = str(Path(path).resolve())
    for old in [h for h in package.handlers if isinstance(h, logging.FileHandler)]:
        if old.baseFilename == target:  # a rerun of the cell must not log every line twice
            package.removeHandler(old)
            old.close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(settings.secrets))
    package.setLevel(min(package.getEffectiveLevel(), level))
    package.addHandler(handler)
    return handler


# --- between stages -----------------------------------------------------------------------------


def contract_ids_to_read(resolved: pl.DataFrame) -> list[str]:
    """The distinct valid contract ids of the RESOLVED frame: what the ledger stage reads."""
    valid = resolved.filter(pl.col("contract_id").is_not_null() & pl.col("address_error").is_null())
    return valid.get_column("contract_id").unique(maintain_order=True).to_list()


def run_record(
    *,
    run_key: str,
    tenant_id: str | None,
    started_at: datetime,
    finished_at: datetime | None,
    counts: Mapping[str, int],
    ledger_read: LedgerRead | None = None,
    failed: bool = False,
    error_message: str | None = None,
) -> RunRecord:
    """The ``reconciliation_runs`` row of this run."""
    from reconcile_audit.compute.persist import RunRecord

    return RunRecord(
        run_key=run_key,
        tenant_id=tenant_id,
        started_at=started_at,
        finished_at=finished_at,
        status="failed" if failed else "completed",
        total=int(counts.get("total", sum(int(counts.get(c, 0)) for c in CLASSES))),
        **{name: int(counts.get(name, 0)) for name in CLASSES},
        ledger_min=None if ledger_read is None else ledger_read.ledger_min,
        ledger_max=None if ledger_read is None else ledger_read.ledger_max,
        error_message=error_message,
    )


def run_facts(
    *,
    run_id: str,
    status: Status,
    clock: StageClock,
    tenant_id: str | None,
    ledger_read: LedgerRead | None = None,
    persist_outcome: PersistOutcome | None = None,
    failure_message: str | None = None,
    delivery_notes: tuple[str, ...] = (),
) -> RunFacts:
    from reconcile_audit.output.report import RunFacts

    persist_error = None
    if persist_outcome is not None and not persist_outcome.ok:
        persist_error = persist_outcome.error or "the run was not stored"
    return RunFacts(
        run_id=run_id,
        status=status,
        started_at=clock.started_at,
        finished_at=datetime.now(UTC),
        tenant_id=tenant_id,
        ledger_min=None if ledger_read is None else ledger_read.ledger_min,
        ledger_max=None if ledger_read is None else ledger_read.ledger_max,
        duration_seconds=clock.elapsed(),
        tool_version=__version__,
        persist_error=persist_error,
        delivery_notes=delivery_notes,
        failure_message=failure_message,
    )


def cumulative_mismatches(
    settings: Settings, counts: Mapping[str, int], persist_outcome: PersistOutcome | None
) -> int | None:
    """The monotonic counter's value: every persisted mismatch of the scope, this run included.

    When this run was not stored, its mismatches are added to the stored total so the counter
    still moves; when the history cannot be read the counter is left out (``None``) rather than
    pushed as a reset.
    """
    from reconcile_audit.compute import persist
    from reconcile_audit.errors import PersistError

    try:
        stored = persist.cumulative_mismatches(settings.state_database_url.reveal(), settings.tenant_id)
    except PersistError as exc:
        log.warning("mismatch counter left out of the metrics: %s", exc)
        return None
    # A run whose findings failed to store is still written as `failed` with its counts when
    # possible (marked_failed), and the stored total then already holds its mismatches.
    if persist_outcome is not None and (persist_outcome.ok or persist_outcome.marked_failed):
        return stored
    return stored + int(counts.get("mismatch", 0))


# --- delivery -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    """What the deliver step did: the artifact paths, the summary written, and delivery notes."""

    paths: ArtifactPaths
    summary: RunSummary
    notes: tuple[str, ...]
    registry: CollectorRegistry


def deliver_run(
    settings: Settings,
    *,
    out_dir: Path,
    findings: pl.DataFrame | None,
    report: Report,
    facts: RunFacts,
    clock: StageClock,
    cumulative: int | None,
    send: bool,
) -> Delivered:
    """Write the artifacts, then (when ``send``) email the report and push the metrics.

    The artifacts are written first so the email can attach ``results.csv`` and so a failing
    SMTP server or Pushgateway never costs the run its files; ``summary.json`` and
    ``metrics.prom`` are then rewritten with what delivery did. Never raises over a delivery
    failure: it is a note in the summary and a metric.
    """
    from dataclasses import replace

    from reconcile_audit.output import deliver, metrics
    from reconcile_audit.output.report import RunSummary

    counts = ClassCounts.zero() if findings is None else count_classes(findings)
    success = facts.status != "failed"

    def registry_for(email_bytes: int | None, email_failed: bool) -> CollectorRegistry:
        return metrics.build_registry(
            metrics.RunMetricsInput(
                success=success,
                finished_at_epoch=(facts.finished_at or datetime.now(UTC)).timestamp(),
                duration_seconds=clock.elapsed(),
                cumulative_mismatches=cumulative,
                class_counts={c: counts[c] for c in CLASSES} if success else None,
                stage_seconds=clock.stage_seconds,
                email_bytes=email_bytes,
                email_failed=email_failed,
            )
        )

    registry = registry_for(None, False)
    summary = RunSummary.from_run(facts, counts, report, redact=settings.redact)
    paths = deliver.write_artifacts(out_dir, findings, report, summary, registry)
    if not send:
        return Delivered(paths, summary, (), registry)

    notes: list[str] = []
    message = deliver.build_email(settings, report, facts, [paths.results_csv])
    email = deliver.send_email(settings, message)
    notes.append(f"email {email.status}: {email.detail}")
    registry = registry_for(
        email.message_bytes if email.status != "skipped" else None, email.status == "failed"
    )
    pushed = metrics.push(registry, settings.pushgateway_url)
    notes.append(
        f"metrics push {pushed.status}: {pushed.detail}" if pushed.detail else f"metrics push {pushed.status}"
    )
    if settings.metrics_textfile_dir is not None:
        metrics.write_textfile_dir(registry, settings.metrics_textfile_dir)
        notes.append(f"metrics textfile written to {settings.metrics_textfile_dir}")
    final_facts = replace(facts, delivery_notes=(*facts.delivery_notes, *notes))
    summary = RunSummary.from_run(final_facts, counts, report, redact=settings.redact)
    paths.summary_json.write_text(summary.to_json(), encoding="utf-8")
    metrics.write_textfile(registry, paths.metrics_prom)
    return Delivered(paths, summary, tuple(notes), registry)


def record_failed_run(
    settings: Settings,
    *,
    run_id: str,
    run_key: str,
    out_dir: Path,
    clock: StageClock,
    failure_message: str,
    send: bool,
    already_persisted: bool = False,
) -> RunSummary:
    """The runner's path when a notebook cell failed: the notebook cannot finish its own record.

    Stores the run as failed (so the health check reads ``failed``), renders a FAILED report,
    writes every artifact (empty results), and when ``send`` emails the report and pushes the
    failure metrics, which leave the last-success timestamp untouched. Each step is independent:
    an unreachable state database must not stop the metrics that would alert on it.

    ``already_persisted``: the notebook's persist cell completed before the failure (render or
    deliver broke). Its run row and findings are then kept: rewriting the run as failed would
    delete findings the history needs, and the reconciliation itself did complete.
    """
    from reconcile_audit.compute import persist
    from reconcile_audit.output import report
    message = settings.redact(failure_message)
    counts = ClassCounts.zero()
    record = run_record(
        run_key=run_key,
        tenant_id=settings.tenant_id,
        started_at=clock.started_at,
        finished_at=datetime.now(UTC),
        counts=counts,
        failed=True,
        error_message=message,
    )
    outcome = None
    if not already_persisted:
        outcome = persist.persist_run(
            settings.state_database_url.reveal(), record, pl.DataFrame(schema=_findings())
        )
    facts = run_facts(
        run_id=run_id,
        status="failed",
        clock=clock,
        tenant_id=settings.tenant_id,
        persist_outcome=outcome,
        failure_message=message,
    )
    rendered = report.render_report(None, None, facts, redact=settings.redact)
    delivered = deliver_run(
        settings,
        out_dir=out_dir,
        findings=None,
        report=rendered,
        facts=facts,
        clock=clock,
        cumulative=cumulative_mismatches(settings, counts, outcome),
        send=send,
    )
    return delivered.summary


def _findings() -> pl.Schema:
    from reconcile_audit.compute.schemas import FINDINGS

    return FINDINGS


def summary_payload(summary: RunSummary, **extra: Any) -> dict[str, Any]:
    """``summary.json`` content with runner-only keys (e.g. the failed cell) added."""
    return {**summary.to_dict(), **extra}


# --- compact views for the notebook (HTML tables: light, and they survive nbconvert) ------------


def _bar_rows(rows: list[tuple[str, Mapping[str, int]]], width_px: int) -> str:
    from html import escape

    colours = {
        "match": "#4c9a2a",
        "mismatch": "#c0392b",
        "missing_on_chain": "#d68910",
        "unlinked": "#7f8c8d",
        "error": "#8e44ad",
    }
    peak = max((sum(values.values()) for _, values in rows), default=0) or 1
    lines = []
    for label, values in rows:
        cells = "".join(
            f'<span title="{escape(name)}: {count:,}" style="display:inline-block;height:12px;'
            f'width:{max(round(width_px * count / peak), 1 if count else 0)}px;background:{colours.get(name, "#555")}">'
            "</span>"
            for name, count in values.items()
        )
        detail = ", ".join(f"{escape(name)} {count:,}" for name, count in values.items() if count)
        lines.append(
            f"<tr><td style='text-align:left'>{escape(label)}</td>"
            f"<td style='text-align:left;white-space:nowrap'>{cells}</td>"
            f"<td style='text-align:left'>{detail}</td></tr>"
        )
    return "<table>" + "".join(lines) + "</table>"


def settings_table(settings: Settings, *, max_chars: int = 100) -> pl.DataFrame:
    """The settings as a two-column frame, secrets redacted and long values (a large
    ESCROW_ADDR_BY_INVOICE) cut, so the executed notebook stays small and safe to keep."""
    from dataclasses import fields

    from reconcile_audit.compute.settings import REDACTED, Secret, redact_url

    names, values = [], []
    for item in fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, Secret):
            text = redact_url(value.reveal()) if "url" in item.name else REDACTED
        else:
            text = "" if value is None else str(value)
        if len(text) > max_chars:
            text = f"{text[:max_chars]}... ({len(text):,} characters)"
        names.append(item.name)
        values.append(text)
    return pl.DataFrame({"setting": names, "value": values})


def class_chart_html(counts: Mapping[str, int], *, width_px: int = 320) -> str:
    """One bar per class, scaled to the largest; counts written beside each bar."""
    return _bar_rows([(name, {name: int(counts.get(name, 0))}) for name in CLASSES], width_px)


def trend_chart_html(trend: pl.DataFrame, *, width_px: int = 320) -> str:
    """One stacked bar per run (oldest first) of the non-match classes: the trend across runs."""
    rows = []
    for run in trend.iter_rows(named=True):
        label = str(run["run_key"]) + (" (this run)" if run.get("current") else "")
        rows.append((label, {name: int(run[name] or 0) for name in CLASSES if name != "match"}))
    return _bar_rows(rows, width_px)
