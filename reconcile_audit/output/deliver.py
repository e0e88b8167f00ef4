"""Deliver: the report email over SMTP and the run's artifacts under ``reports/<run_id>/``.

Nothing here raises over a run: a failed send is logged (redacted) and returned as a
:class:`DeliveryOutcome`, which the caller counts in the metrics and notes in the summary.
Metrics themselves are built and pushed by :mod:`reconcile_audit.output.metrics`.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import smtplib
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Final

import polars as pl
from prometheus_client import CollectorRegistry

from reconcile_audit.compute.result import Spool
from reconcile_audit.compute.schemas import DRIFT_EVENTS, FINDINGS, STRANDED, DeliveryStatus
from reconcile_audit.compute.settings import Settings, envelope_addresses
from reconcile_audit.output.metrics import write_textfile
from reconcile_audit.output.report import Report, worst_first
from reconcile_audit.output.summary import RunFacts, RunSummary

LOGGER = logging.getLogger(__name__)

# Exact integer columns: their leading "-" is a sign, never a spreadsheet formula.
_NUMERIC_TEXT: Final = frozenset(
    {"db_funded_base_units", "chain_funded_base_units", "delta_base_units", "db_total_funded"}
)
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class DeliveryOutcome:
    status: DeliveryStatus
    detail: str = ""
    message_bytes: int | None = None  # size of the message as sent (or attempted)
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArtifactPaths:
    directory: Path
    report_html: Path
    report_txt: Path
    summary_json: Path
    results_parquet: Path
    findings_csv: Path
    stranded_parquet: Path
    metrics_prom: Path
    drift_events_parquet: Path


@dataclass(frozen=True)
class Attachment:
    """What the email attaches, and a sentence saying so (and what was cut) for its footer."""

    filename: str
    data: bytes
    maintype: str
    subtype: str
    note: str


GZIP_ABOVE_BYTES: Final = 1_000_000  # a findings CSV past this travels gzip-compressed
FINDINGS_CSV: Final = "findings.csv"  # in the run folder, and attached to the email


def non_match_worst_first(findings: pl.DataFrame) -> pl.DataFrame:
    """The findings a person reads: every class but match, the report's order."""
    return worst_first(findings.filter(pl.col("class") != "match"))


def findings_attachment(findings: pl.DataFrame, max_bytes: int) -> Attachment | None:
    """The findings (every class but match), worst first, as CSV: gzip-compressed above 1 MB, and
    cut to the first rows that fit ``max_bytes``. None when there is nothing to attach.

    Matches stay out: at 1M invoices every-invoice CSV is some 300 MB, which no relay takes, and
    the full results stay in the run folder.
    """
    rows = non_match_worst_first(findings)
    if rows.is_empty() or max_bytes <= 0:
        return None
    cells = findings_csv_frame(rows)

    def packed(count: int) -> tuple[bytes, bool]:
        data = cells.head(count).write_csv().encode("utf-8")
        if len(data) <= GZIP_ABOVE_BYTES:
            return data, False
        return gzip.compress(data, compresslevel=6, mtime=0), True

    total = cells.height
    data, zipped = packed(total)
    kept = total
    if len(data) > max_bytes:
        # Shrink by the measured bytes per row until the cut fits; each pass compresses once.
        while kept > 0 and len(data) > max_bytes:
            kept = min(kept - 1, int(kept * max_bytes / len(data) * 0.95))
            data, zipped = packed(max(kept, 0))
        if kept <= 0:
            return None
    name = FINDINGS_CSV + (".gz" if zipped else "")
    note = f"Attached: {name}, the {total:,} findings (every class but match), worst first."
    if kept < total:
        note = (
            f"Attached: {name}, the worst {kept:,} of {total:,} findings; the rest did not fit the "
            f"{max_bytes:,}-byte attachment limit (RECONCILE_EMAIL_MAX_ATTACHMENT_BYTES) and are in "
            "findings.csv in the run folder."
        )
    maintype, subtype = ("application", "gzip") if zipped else ("text", "csv")
    return Attachment(name, data, maintype, subtype, note)


def build_email(
    settings: Settings, report: Report, facts: RunFacts, attachment: Attachment | None
) -> EmailMessage:
    """``multipart/mixed`` holding ``multipart/alternative`` (text, then HTML) and the findings.

    The text part comes first because clients show the last alternative they understand. The
    headers let mail filters sort the nightly mail: ``List-Id`` names the audit (and its tenant),
    ``Auto-Submitted`` marks it as machine-sent so no out-of-office reply answers it.
    """
    message = EmailMessage()
    domain = _domain_of(settings.alert_email_from)
    message["Subject"] = _header(settings.redact(report.subject))
    message["From"] = _header(settings.alert_email_from)
    message["To"] = _header(", ".join(settings.alert_email_to))
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(idstring="reconcile-audit", domain=domain)
    message["List-Id"] = _list_id(facts.tenant_id, domain)
    message["Auto-Submitted"] = "auto-generated"
    message["X-Reconcile-Run-Id"] = _header(facts.run_id)
    message["X-Reconcile-Status"] = facts.status
    message.set_content(report.text, subtype="plain", charset="utf-8")
    message.add_alternative(report.html, subtype="html", charset="utf-8")
    if attachment is not None:
        message.add_attachment(
            attachment.data,
            maintype=attachment.maintype,
            subtype=attachment.subtype,
            filename=attachment.filename,
        )
    return message


def _list_id(tenant_id: str | None, domain: str) -> str:
    """RFC 2919: ``Escrow reconciliation (acme) <acme.escrow-reconciliation.example.com>``."""
    label = re.sub(r"[^a-z0-9-]+", "-", (tenant_id or "all").lower()).strip("-")[:40] or "tenant"
    name = f"Escrow reconciliation ({_header(tenant_id)[:60]})" if tenant_id else "Escrow reconciliation"
    return f"{name} <{label}.escrow-reconciliation.{domain}>"


def _header(value: str) -> str:
    # A line break in a header value would start a new header (or, in the email package, raise).
    return " ".join(value.splitlines())


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip("> ") or "localhost"


def check_smtp(settings: Settings, *, timeout_seconds: float = 15.0) -> DeliveryOutcome:
    """Connect, upgrade to TLS as a send would, log in, and quit: nothing is sent. SKIPPED when
    no recipient is set (no email is ever built then)."""
    return send_email(settings, None, timeout_seconds=timeout_seconds)


def send_email(
    settings: Settings,
    message: EmailMessage | None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    implicit_tls: bool | None = None,
    timeout_seconds: float = 30.0,
) -> DeliveryOutcome:
    """Send ``message`` to ``settings.alert_email_to`` over SMTP; never raises.

    ``implicit_tls`` (default: port 465) connects with TLS from the first byte. Otherwise STARTTLS
    is used when ``smtp_starttls`` is set and the server offers it; credentials are then never
    sent over a connection that did not upgrade.
    ``ssl_context`` defaults to the system trust store (pass one to trust a private CA).
    ``message=None`` goes as far as the login and sends nothing (:func:`check_smtp`).
    """
    recipients = tuple(settings.alert_email_to)
    if not recipients:
        return DeliveryOutcome(DeliveryStatus.SKIPPED, "ALERT_EMAIL_TO is not set")
    if not settings.smtp_host:
        return _failed(settings, "SMTP_HOST is not set", None, recipients)
    size = len(message.as_bytes()) if message is not None else None
    context = ssl_context or ssl.create_default_context()
    tls_from_start = settings.smtp_port == 465 if implicit_tls is None else implicit_tls
    try:
        if tls_from_start:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.smtp_host, settings.smtp_port, timeout=timeout_seconds, context=context
            )
        else:
            client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout_seconds)
        with client:
            client.ehlo()
            secure = tls_from_start
            if settings.smtp_starttls and not secure and client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
                secure = True
            if settings.smtp_user and settings.smtp_password:
                if settings.smtp_starttls and not secure:
                    return _failed(
                        settings,
                        "the server does not offer STARTTLS; refusing to send credentials in clear "
                        "(set SMTP_STARTTLS=false to allow it)",
                        size,
                        recipients,
                    )
                client.login(settings.smtp_user, settings.smtp_password.reveal())
            if message is None:
                client.noop()
                return DeliveryOutcome(
                    DeliveryStatus.CHECKED,
                    f"{settings.smtp_host}:{settings.smtp_port} accepts "
                    + (
                        "a TLS login"
                        if secure and settings.smtp_user
                        else "a login"
                        if settings.smtp_user
                        else "mail"
                    )
                    + f" for {len(recipients)} recipient(s); nothing sent",
                    None,
                    recipients,
                )
            refused = client.send_message(
                message, from_addr=settings.alert_email_from, to_addrs=envelope_addresses(recipients)
            )
    except (smtplib.SMTPException, OSError) as exc:  # ssl.SSLError and timeouts are OSErrors
        return _failed(settings, f"{type(exc).__name__}: {exc}", size, recipients)
    if refused:
        return _failed(settings, f"recipients refused: {sorted(refused)}", size, recipients)
    LOGGER.info("report email sent to %d recipient(s), %d bytes", len(recipients), size)
    return DeliveryOutcome(DeliveryStatus.SENT, f"sent to {', '.join(recipients)}", size, recipients)


def _failed(
    settings: Settings, detail: str, size: int | None, recipients: tuple[str, ...]
) -> DeliveryOutcome:
    detail = settings.redact(detail)
    LOGGER.error("the SMTP server %s:%s: %s", settings.smtp_host, settings.smtp_port, detail)
    return DeliveryOutcome(DeliveryStatus.FAILED, detail, size, recipients)


def _neutralise_formula(column: str) -> pl.Expr:
    # Spreadsheets run a cell that starts with "=", "+", "-" or "@" as a formula; a hostile id
    # must stay text for the finance reader who opens findings.csv (OWASP "CSV injection").
    value = pl.col(column)
    starts = pl.any_horizontal(*[value.str.starts_with(prefix) for prefix in _FORMULA_START])
    if column in _NUMERIC_TEXT:  # a negative amount stays a number; anything else is text
        starts = starts & ~value.str.contains(r"^-?[0-9]+(\.[0-9]+)?$")
    return pl.when(starts).then(pl.lit("'") + value).otherwise(value).alias(column)


def findings_csv_frame(findings: pl.DataFrame) -> pl.DataFrame:
    """The FINDINGS frame as CSV cells: flags joined with ';', amounts as exact text."""
    text_columns = [name for name, dtype in findings.schema.items() if dtype == pl.String]
    return findings.with_columns(
        pl.col("flags").list.sort().list.join(";"),
        *[_neutralise_formula(name) for name in text_columns],
    )


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """``write`` a temporary file beside ``path``, then rename it into place.

    A reader never sees half a file under the real name, and a write that fails (a full disk)
    leaves the previous file, or none, instead of a truncated one.
    """
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _write_parts(path: Path, parts: Iterator[pl.DataFrame]) -> None:
    """One Parquet file of ``parts`` (one schema), one part in memory at a time."""
    import pyarrow.parquet as pq  # the CLI imports this module and never writes Parquet

    writer: pq.ParquetWriter | None = None
    try:
        for part in parts:
            table = part.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def write_artifacts(
    out_dir: Path,
    findings: pl.DataFrame | None,
    report: Report,
    summary: RunSummary | Mapping[str, Any],
    registry: CollectorRegistry,
    stranded: pl.DataFrame | None = None,
    drift_events: pl.DataFrame | None = None,
    spool: Spool | None = None,
) -> ArtifactPaths:
    """Write report.html, report.txt, summary.json, results.parquet, findings.csv,
    stranded.parquet, drift_events.parquet, metrics.prom.

    ``results.parquet`` is the whole FINDINGS frame, types kept; ``findings.csv`` its findings
    (every class but match), worst first, for people; ``stranded.parquet`` the STRANDED frame.
    ``findings`` (``stranded``) may be None for a run that failed before classifying (did not
    check them): the files are then written empty, with the documented columns.
    ``drift_events.parquet`` is the DRIFT_EVENTS frame: the events and transactions behind each
    explained finding (empty when nothing was explained). ``spool``: where the run keeps the
    plain matches ``findings`` leaves out; ``results.parquet`` has them too, in the run's order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(schema=FINDINGS) if findings is None else findings
    paths = ArtifactPaths(
        directory=out_dir,
        report_html=out_dir / "report.html",
        report_txt=out_dir / "report.txt",
        summary_json=out_dir / "summary.json",
        results_parquet=out_dir / "results.parquet",
        findings_csv=out_dir / FINDINGS_CSV,
        stranded_parquet=out_dir / "stranded.parquet",
        metrics_prom=out_dir / "metrics.prom",
        drift_events_parquet=out_dir / "drift_events.parquet",
    )
    write_atomically(paths.report_html, lambda path: path.write_text(report.html, encoding="utf-8"))
    write_atomically(paths.report_txt, lambda path: path.write_text(report.text, encoding="utf-8"))
    if isinstance(summary, RunSummary):
        summary_text = summary.to_json()
    else:
        summary_text = json.dumps(dict(summary), indent=2, sort_keys=True, default=str) + "\n"
    write_atomically(paths.summary_json, lambda path: path.write_text(summary_text, encoding="utf-8"))
    if spool is None:
        write_atomically(paths.results_parquet, frame.write_parquet)
    else:
        write_atomically(paths.results_parquet, lambda path: _write_parts(path, spool.every_row(frame)))
    write_atomically(paths.findings_csv, findings_csv_frame(non_match_worst_first(frame)).write_csv)
    write_atomically(
        paths.stranded_parquet,
        (pl.DataFrame(schema=STRANDED) if stranded is None else stranded).write_parquet,
    )
    write_atomically(
        paths.drift_events_parquet,
        (pl.DataFrame(schema=DRIFT_EVENTS) if drift_events is None else drift_events).write_parquet,
    )
    write_textfile(registry, paths.metrics_prom)
    return paths
