"""Deliver: the report email over SMTP and the run's artifacts under ``reports/<run_id>/``.

Nothing here raises over a run: a failed send is logged (redacted) and returned as a
:class:`DeliveryOutcome`, which the caller counts in the metrics and notes in the summary.
Metrics themselves are built and pushed by :mod:`reconcile_audit.output.metrics`.
"""

from __future__ import annotations

import gzip
import json
import logging
import mimetypes
import os
import smtplib
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Final

import polars as pl
from prometheus_client import CollectorRegistry

from reconcile_audit.compute.schemas import FINDINGS, DeliveryStatus
from reconcile_audit.compute.settings import Settings
from reconcile_audit.output.metrics import write_textfile
from reconcile_audit.output.report import Report
from reconcile_audit.output.summary import RunFacts, RunSummary

LOGGER = logging.getLogger(__name__)

# Types a mail client should open as what they are; mimetypes does not know the last two.
_CONTENT_TYPES: Final = {
    ".csv": ("text", "csv"),
    ".parquet": ("application", "vnd.apache.parquet"),
    ".ipynb": ("application", "x-ipynb+json"),
}
# Exact integer columns: their leading "-" is a sign, never a spreadsheet formula.
_NUMERIC_TEXT: Final = frozenset(
    {"db_funded_base_units", "chain_funded_base_units", "delta_base_units", "db_total_funded"}
)
MAX_ATTACHMENT_BYTES: Final = 10_000_000  # before base64; common relays cap a message at 10-25 MB
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
    results_csv: Path
    metrics_prom: Path


def build_email(
    settings: Settings,
    report: Report,
    facts: RunFacts,
    attachments: Sequence[Path],
    *,
    max_attachment_bytes: int = MAX_ATTACHMENT_BYTES,
) -> EmailMessage:
    """``multipart/mixed`` holding ``multipart/alternative`` (text, then HTML) and the attachments.

    The text part comes first because clients show the last alternative they understand. An
    attachment over ``max_attachment_bytes`` is sent gzip-compressed; if it is still too big it
    is left out and a short ``attachments-not-included.txt`` says where the file is, because
    relays refuse messages of tens of megabytes and the report must still arrive.
    """
    message = EmailMessage()
    message["Subject"] = _header(settings.redact(report.subject))
    message["From"] = _header(settings.alert_email_from)
    message["To"] = _header(", ".join(settings.alert_email_to))
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=_domain_of(settings.alert_email_from))
    message["X-Reconcile-Run-Id"] = _header(facts.run_id)
    message["X-Reconcile-Status"] = facts.status
    message.set_content(report.text, subtype="plain", charset="utf-8")
    message.add_alternative(report.html, subtype="html", charset="utf-8")
    left_out: list[str] = []
    for path in attachments:
        size = path.stat().st_size
        maintype, subtype = _content_type(path)
        if size <= max_attachment_bytes and maintype == "text":
            message.add_attachment(
                path.read_text(encoding="utf-8"), subtype=subtype, charset="utf-8", filename=path.name
            )
        elif size <= max_attachment_bytes:
            message.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
        else:
            packed = gzip.compress(path.read_bytes(), mtime=0)
            if len(packed) <= max_attachment_bytes:
                message.add_attachment(
                    packed, maintype="application", subtype="gzip", filename=f"{path.name}.gz"
                )
            else:
                left_out.append(f"{path.name} ({size:,} bytes)")
    if left_out:
        LOGGER.warning("attachments too large for the email, left out: %s", ", ".join(left_out))
        note = (
            f"Too large to attach even compressed (limit {max_attachment_bytes:,} bytes): "
            f"{', '.join(left_out)}.\nThe files are in the run's output folder, {facts.run_id}/, "
            "on the host that ran the audit.\n"
        )
        message.add_attachment(
            note, subtype="plain", charset="utf-8", filename="attachments-not-included.txt"
        )
    return message


def _header(value: str) -> str:
    # A line break in a header value would start a new header (or, in the email package, raise).
    return " ".join(value.splitlines())


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip("> ") or "localhost"


def _content_type(path: Path) -> tuple[str, str]:
    known = _CONTENT_TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    if guessed:
        maintype, _, subtype = guessed.partition("/")
        return maintype, subtype
    return "application", "octet-stream"


def send_email(
    settings: Settings,
    message: EmailMessage,
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
    """
    recipients = tuple(settings.alert_email_to)
    if not recipients:
        return DeliveryOutcome(DeliveryStatus.SKIPPED, "ALERT_EMAIL_TO is not set")
    if not settings.smtp_host:
        return _failed(settings, "SMTP_HOST is not set", None, recipients)
    size = len(message.as_bytes())
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
            refused = client.send_message(
                message, from_addr=settings.alert_email_from, to_addrs=list(recipients)
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
    LOGGER.error("sending the report email failed: %s", detail)
    return DeliveryOutcome(DeliveryStatus.FAILED, detail, size, recipients)


def _neutralise_formula(column: str) -> pl.Expr:
    # Spreadsheets run a cell that starts with "=", "+", "-" or "@" as a formula; a hostile id
    # must stay text for the finance reader who opens results.csv (OWASP "CSV injection").
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


def write_artifacts(
    out_dir: Path,
    findings: pl.DataFrame | None,
    report: Report,
    summary: RunSummary | Mapping[str, Any],
    registry: CollectorRegistry,
) -> ArtifactPaths:
    """Write report.html, report.txt, summary.json, results.parquet, results.csv, metrics.prom.

    ``results.parquet`` is the whole FINDINGS frame, types kept; ``results.csv`` is the same
    rows for people. ``findings`` may be None for a run that failed before classifying: the
    result files are then written empty, with the documented columns.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(schema=FINDINGS) if findings is None else findings
    paths = ArtifactPaths(
        directory=out_dir,
        report_html=out_dir / "report.html",
        report_txt=out_dir / "report.txt",
        summary_json=out_dir / "summary.json",
        results_parquet=out_dir / "results.parquet",
        results_csv=out_dir / "results.csv",
        metrics_prom=out_dir / "metrics.prom",
    )
    write_atomically(paths.report_html, lambda path: path.write_text(report.html, encoding="utf-8"))
    write_atomically(paths.report_txt, lambda path: path.write_text(report.text, encoding="utf-8"))
    if isinstance(summary, RunSummary):
        summary_text = summary.to_json()
    else:
        summary_text = json.dumps(dict(summary), indent=2, sort_keys=True, default=str) + "\n"
    write_atomically(paths.summary_json, lambda path: path.write_text(summary_text, encoding="utf-8"))
    write_atomically(paths.results_parquet, frame.write_parquet)
    write_atomically(paths.results_csv, findings_csv_frame(frame).write_csv)
    write_textfile(registry, paths.metrics_prom)
    return paths
