from __future__ import annotations

import email
import email.policy
import gzip
import io
import json
import ssl
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import trustme

from reconcile_audit.compute.result import AuditResult
from reconcile_audit.compute.schemas import FINDINGS
from reconcile_audit.compute.settings import Settings, load_settings
from reconcile_audit.errors import ConfigError
from reconcile_audit.output.deliver import (
    Attachment,
    build_email,
    findings_attachment,
    findings_csv_frame,
    send_email,
    write_artifacts,
)
from reconcile_audit.output.metrics import RunMetricsInput, build_registry
from reconcile_audit.output.report import Report, render_report, worst_first
from reconcile_audit.output.summary import RunSummary
from tests import factories
from tests.factories import facts, finding, frame, history_for, mismatch, realistic_rows
from tests.services import Inbox, free_port, running_smtp

PASSWORD = "s3cr3t-smtp-pa55"
USER = "reconcile"


@pytest.fixture
def plain_smtp() -> Iterator[tuple[Inbox, int]]:
    """No TLS, AUTH allowed in clear (a local relay)."""
    with running_smtp(PASSWORD, user=USER) as server:
        yield server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1 from ``ca``, and a client that trusts it."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


@pytest.fixture
def tls_smtp(ca: trustme.CA) -> Iterator[tuple[Inbox, int, ssl.SSLContext]]:
    """STARTTLS required, AUTH required and only over TLS: what a real relay looks like."""
    server_context, client_context = tls_contexts(ca)
    with running_smtp(
        PASSWORD,
        user=USER,
        tls_context=server_context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
    ) as (inbox, port):
        yield inbox, port, client_context


@pytest.fixture
def implicit_tls_smtp(ca: trustme.CA) -> Iterator[tuple[Inbox, int, ssl.SSLContext]]:
    """TLS from the first byte (what port 465 speaks), AUTH required."""
    server_context, client_context = tls_contexts(ca)
    # auth_require_tls stays off: aiosmtpd only counts STARTTLS as TLS for that check, and the
    # socket here is TLS throughout.
    with running_smtp(PASSWORD, user=USER, ssl_context=server_context, auth_required=True) as (inbox, port):
        yield inbox, port, client_context


def settings_for(
    port: int, *, starttls: bool, login: bool = True, to: str = "ops@example.com,fin@example.com"
) -> Settings:
    params: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_starttls": starttls,
        "alert_email_to": to,
        "alert_email_from": "audit@example.com",
    }
    environ = {}
    if login:
        params["smtp_user"] = USER
        environ["SMTP_PASSWORD"] = PASSWORD
    return factories.settings(environ, **params)


def report_and_csv(tmp_path: Path) -> tuple[Report, Attachment | None, pl.DataFrame]:
    findings = frame(realistic_rows())
    report = render_report(AuditResult.of(findings), history_for(findings), facts())
    return report, findings_attachment(findings, 5_000_000), findings


def check_message(message: EmailMessage, report: Report, findings: pl.DataFrame) -> None:
    assert message.get_content_type() == "multipart/mixed"
    assert message["Subject"] == report.subject
    assert "FINDINGS" in message["Subject"] and "3 mismatch" in message["Subject"]
    parts = list(message.iter_parts())
    alternative = parts[0]
    assert alternative.get_content_type() == "multipart/alternative"
    kinds = [p.get_content_type() for p in alternative.iter_parts()]
    assert kinds == ["text/plain", "text/html"]  # the richest last: clients show the last they can
    text_part, html_part = alternative.iter_parts()
    assert text_part.get_content().replace("\r\n", "\n") == report.text
    html = html_part.get_content().replace("\r\n", "\n")
    assert html.rstrip("\n") == report.html.rstrip("\n")
    assert len(html.encode()) < 100_000
    attachments = list(message.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["findings.csv"]
    assert attachments[0].get_content_type() == "text/csv"
    csv = pl.read_csv(io.StringIO(attachments[0].get_content()), infer_schema=False)
    open_findings = findings.filter(pl.col("class") != "match")
    assert csv.height == open_findings.height  # the findings only: no match row travels
    assert sorted(csv["invoice_id"].to_list()) == sorted(open_findings["invoice_id"].to_list())
    assert message["List-Id"] == "Escrow reconciliation (acme) <acme.escrow-reconciliation.example.com>"
    assert message["Auto-Submitted"] == "auto-generated" and message["Date"] and message["Message-ID"]


def test_plain_smtp_with_login_receives_the_report(plain_smtp: tuple[Inbox, int], tmp_path: Path) -> None:
    inbox, port = plain_smtp
    report, attachment, findings = report_and_csv(tmp_path)
    settings = settings_for(port, starttls=False)
    message = build_email(settings, report, facts(), attachment)
    outcome = send_email(settings, message)
    assert outcome.status == "sent", outcome.detail
    assert outcome.message_bytes == len(message.as_bytes())
    assert sorted(inbox.envelopes[0].rcpt_tos) == ["fin@example.com", "ops@example.com"]
    check_message(inbox.only_message(), report, findings)


def test_starttls_and_login_against_a_relay_that_requires_both(
    tls_smtp: tuple[Inbox, int, ssl.SSLContext], tmp_path: Path
) -> None:
    inbox, port, client_context = tls_smtp
    report, attachment, findings = report_and_csv(tmp_path)
    settings = settings_for(port, starttls=True)
    outcome = send_email(
        settings, build_email(settings, report, facts(), attachment), ssl_context=client_context
    )
    assert outcome.status == "sent", outcome.detail
    check_message(inbox.only_message(), report, findings)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_implicit_tls_and_login(implicit_tls_smtp: tuple[Inbox, int, ssl.SSLContext], tmp_path: Path) -> None:
    inbox, port, client_context = implicit_tls_smtp
    report, attachment, findings = report_and_csv(tmp_path)
    settings = settings_for(port, starttls=True)
    message = build_email(settings, report, facts(), attachment)
    outcome = send_email(settings, message, ssl_context=client_context, implicit_tls=True)
    assert outcome.status == "sent", outcome.detail
    check_message(inbox.only_message(), report, findings)


def test_an_untrusted_certificate_fails_without_raising(
    tls_smtp: tuple[Inbox, int, ssl.SSLContext], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox, port, _ = tls_smtp
    report, attachment, _ = report_and_csv(tmp_path)
    settings = settings_for(port, starttls=True)
    outcome = send_email(settings, build_email(settings, report, facts(), attachment))  # system trust store
    assert outcome.status == "failed" and "SSL" in outcome.detail
    assert not inbox.envelopes
    assert PASSWORD not in caplog.text


def test_credentials_are_never_sent_in_clear_when_starttls_is_wanted(
    plain_smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    inbox, port = plain_smtp
    report, attachment, _ = report_and_csv(tmp_path)
    settings = settings_for(port, starttls=True)  # the plain server offers no STARTTLS
    outcome = send_email(settings, build_email(settings, report, facts(), attachment))
    assert outcome.status == "failed" and "STARTTLS" in outcome.detail
    assert not inbox.envelopes


def test_wrong_password_is_reported_redacted(
    plain_smtp: tuple[Inbox, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox, port = plain_smtp
    report, attachment, _ = report_and_csv(tmp_path)
    settings = settings_for(port, starttls=False).with_changes(smtp_user="intruder")
    outcome = send_email(settings, build_email(settings, report, facts(), attachment))
    assert outcome.status == "failed" and "Authentication" in outcome.detail
    assert not inbox.envelopes
    assert PASSWORD not in caplog.text and PASSWORD not in outcome.detail


def test_no_recipients_means_skipped_and_no_server_means_failed(tmp_path: Path) -> None:
    report, attachment, _ = report_and_csv(tmp_path)
    quiet = settings_for(free_port(), starttls=False, to="")
    assert send_email(quiet, build_email(quiet, report, facts(), attachment)).status == "skipped"
    closed = settings_for(free_port(), starttls=False)
    outcome = send_email(closed, build_email(closed, report, facts(), attachment), timeout_seconds=5)
    assert outcome.status == "failed" and "ConnectionRefused" in outcome.detail


def test_artifacts(tmp_path: Path) -> None:
    rows = [
        *realistic_rows(),
        finding(
            '=HYPERLINK("http://x")', "error", reason="bad id", flags=["null_total", "duplicate_summary"]
        ),
        mismatch("NEG-1", 100, 10_000_000, drift_rank=9),
    ]
    findings = frame(rows)
    report = render_report(AuditResult.of(findings), None, facts())
    summary = RunSummary.from_run(facts(), report.counts, report)
    registry = build_registry(RunMetricsInput(success=True, finished_at_epoch=1.0, duration_seconds=1.0))
    paths = write_artifacts(tmp_path / "run-1", findings, report, summary, registry)

    assert paths.report_html.read_text() == report.html
    assert paths.report_txt.read_text() == report.text
    data = json.loads(paths.summary_json.read_text())
    assert data["run_id"] == "20261124T020003Z-acme" and data["status"] == "findings"
    assert data["total"] == findings.height == sum(data["counts"].values())
    assert "escrow_reconciliation_mismatches_total" not in paths.metrics_prom.read_text()  # none given
    assert 'escrow_reconciliation_last_run_success{tenant="all"} 1.0' in paths.metrics_prom.read_text()

    parquet = pl.read_parquet(paths.results_parquet)
    assert parquet.schema == FINDINGS
    assert parquet.equals(findings)

    csv = pl.read_csv(paths.findings_csv, infer_schema=False)
    assert csv.columns == list(FINDINGS)
    # The findings only, in the report's order: every invoice is in results.parquet.
    assert "match" not in csv["class"].to_list()
    expected = findings_csv_frame(worst_first(findings.filter(pl.col("class") != "match")))
    assert csv["invoice_id"].to_list() == expected["invoice_id"].to_list()
    by_id = {row["invoice_id"]: row for row in csv.iter_rows(named=True)}
    hostile = by_id['\'=HYPERLINK("http://x")']  # a formula stays text in a spreadsheet
    assert hostile["flags"] == "duplicate_summary;null_total"
    negative = by_id["NEG-1"]
    assert negative["delta_base_units"] == str(100 * 100_000 - 10_000_000)  # the sign is kept
    assert negative["db_total_funded"] == "1.00"


def test_artifacts_of_a_failed_run_have_the_documented_columns(tmp_path: Path) -> None:
    failed = facts(status="failed", failure_message="boom")
    report = render_report(None, None, failed)
    registry = build_registry(RunMetricsInput(success=False, finished_at_epoch=1.0, duration_seconds=1.0))
    paths = write_artifacts(tmp_path, None, report, RunSummary.from_run(failed, report.counts), registry)
    assert pl.read_parquet(paths.results_parquet).schema == FINDINGS
    assert json.loads(paths.summary_json.read_text())["status"] == "failed"
    assert "last_success" not in paths.metrics_prom.read_text()


def _reparsed(message: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_findings_attachment_is_compressed_above_1_mb_and_cut_to_the_cap_worst_first() -> None:
    rows = [finding(f"M-{i:06d}") for i in range(50)]
    rows += [mismatch(f"D-{i:06d}", 100_000 + i, 1, drift_rank=9_000 - i) for i in range(9_000)]
    findings = frame(rows)
    whole = findings_attachment(findings, 50_000_000)
    assert whole is not None and whole.filename == "findings.csv.gz" and whole.maintype == "application"
    csv = pl.read_csv(io.BytesIO(gzip.decompress(whole.data)), infer_schema=False)
    assert csv.height == 9_000 and not csv["invoice_id"].str.starts_with("M-").any()
    assert csv["drift_rank"].cast(pl.Int64).is_sorted()  # worst first
    assert whole.note == "Attached: findings.csv.gz, the 9,000 findings (every class but match), worst first."

    cut = findings_attachment(findings, 40_000)
    assert cut is not None and len(cut.data) <= 40_000
    kept = pl.read_csv(
        io.BytesIO(gzip.decompress(cut.data)) if cut.filename.endswith(".gz") else io.BytesIO(cut.data),
        infer_schema=False,
    )
    assert 0 < kept.height < 9_000
    assert kept["invoice_id"].to_list() == csv["invoice_id"].head(kept.height).to_list()  # the worst ones
    assert f"the worst {kept.height:,} of 9,000 findings" in cut.note
    assert "RECONCILE_EMAIL_MAX_ATTACHMENT_BYTES" in cut.note and "findings.csv in the run folder" in cut.note

    small = findings_attachment(frame(rows[:60]), 5_000_000)
    assert small is not None and small.filename == "findings.csv" and small.subtype == "csv"
    assert findings_attachment(frame(rows[:50]), 5_000_000) is None  # nothing but matches
    assert findings_attachment(findings, 0) is None


def test_recipients_with_display_names_are_parsed_like_a_mail_client_does(
    plain_smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    inbox, port = plain_smtp
    report, attachment, _ = report_and_csv(tmp_path)
    settings = settings_for(
        port, starttls=False, to='Finance Team <finance@example.test>, "Ops, Night" <ops@example.test>'
    )
    assert settings.alert_email_to == (
        "Finance Team <finance@example.test>",
        '"Ops, Night" <ops@example.test>',
    )
    outcome = send_email(settings, build_email(settings, report, facts(), attachment))
    assert outcome.status == "sent", outcome.detail
    assert sorted(inbox.envelopes[0].rcpt_tos) == ["finance@example.test", "ops@example.test"]
    assert (
        inbox.only_message()["To"] == 'Finance Team <finance@example.test>, "Ops, Night" <ops@example.test>'
    )
    with pytest.raises(ConfigError, match="ALERT_EMAIL_TO"):
        load_settings({}, {"ALERT_EMAIL_TO": "Finance Team"})


def test_header_values_cannot_inject_headers(tmp_path: Path) -> None:
    report, attachment, _ = report_and_csv(tmp_path)
    settings = settings_for(free_port(), starttls=False)
    message = _reparsed(
        build_email(settings, report, facts(run_id="r1\nBcc: victim@example.com"), attachment)
    )
    assert message["Bcc"] is None
    assert message["X-Reconcile-Run-Id"] == "r1 Bcc: victim@example.com"


def test_no_secret_reaches_an_artifact_the_email_or_the_log(
    plain_smtp: tuple[Inbox, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox, port = plain_smtp
    db_password = "db-pa55-w0rd"
    settings = load_settings(
        {
            "database_url": f"postgresql://audit:{db_password}@db.internal/ledger",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_starttls": False,
            "smtp_user": USER,
            "alert_email_to": "ops@example.com",
        },
        {"SMTP_PASSWORD": PASSWORD},
    )
    leak = f"connect to postgresql://audit:{db_password}@db.internal failed; smtp login {PASSWORD}"
    failed = facts(status="failed", failure_message=leak, persist_error=leak, delivery_notes=(leak,))
    report = render_report(None, None, failed, redact=settings.redact)
    summary = RunSummary.from_run(failed, report.counts, report, redact=settings.redact)
    registry = build_registry(RunMetricsInput(success=False, finished_at_epoch=1.0, duration_seconds=1.0))
    paths = write_artifacts(tmp_path, None, report, summary, registry)
    outcome = send_email(settings, build_email(settings, report, failed, None))
    assert outcome.status == "sent", outcome.detail

    received = inbox.envelopes[0].original_content or b""
    texts = [p.read_bytes() for p in tmp_path.iterdir()] + [received, caplog.text.encode()]
    for secret in (db_password, PASSWORD):
        assert all(secret.encode() not in text for text in texts), secret
    assert b"postgresql://audit:***@db.internal" in paths.summary_json.read_bytes()
