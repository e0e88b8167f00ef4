"""One run, several emails (aiosmtpd): the operator's whole report, each tenant's own, and a
first screen that holds only what needs a person."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconcile_audit.compute.history import compare_with_history
from reconcile_audit.compute.lifecycle import AckAction
from reconcile_audit.compute.persist import acks as acks_store
from reconcile_audit.compute.result import AuditResult
from reconcile_audit.compute.settings import load_settings
from reconcile_audit.errors import ExitCode
from reconcile_audit.face.run import RunContext, StageClock
from tests import factories
from tests.services import running_smtp

PASSWORD = "tenant-smtp-pa55"
USER = "reconcile"


def drift(invoice_id: str, tenant: str, chain: int = 12_000_000_000) -> dict[str, object]:
    return factories.finding(
        invoice_id,
        "mismatch",
        tenant_id=tenant,
        reason_code="db_over_chain",
        reason=f"drift on {invoice_id}",
        chain_funded_base_units=str(chain),
        delta_base_units=str(12_500_000_000 - chain),
        drift_rank=1,
    )


ROWS = [
    drift("ACME-1", "acme"),
    drift("ACME-2", "acme", 12_100_000_000),
    factories.finding("ACME-3", tenant_id="acme"),
    drift("GLOBEX-1", "globex"),
    factories.finding("GLOBEX-2", tenant_id="globex"),
    drift("INITECH-1", "initech"),
]


def run_night(tmp_path: Path, port: int, night: int, max_new: int = 200) -> tuple[RunContext, object]:
    state = f"duckdb:///{tmp_path / 'state.duckdb'}"
    settings = load_settings(
        {
            "database_url": state,
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_starttls": False,
            "smtp_user": USER,
            "alert_email_to": "ops@example.com",
            "tenant_recipients": json.dumps(
                {"acme": "finance@acme.example", "globex": ["ap@globex.example"]}
            ),
            "email_max_new": max_new,
        },
        {"SMTP_PASSWORD": PASSWORD},
    )
    clock = StageClock(started_at=datetime(2026, 11, 1, 2, tzinfo=UTC) + timedelta(days=night))
    context = RunContext.create(
        settings, run_key=f"all:{night}", out_dir=tmp_path / f"night-{night}", clock=clock
    )
    context.out_dir.mkdir()
    result = AuditResult.of(factories.frame(ROWS))
    comparison = compare_with_history(result, settings, run_key=context.run_key, now=context.started_at)
    persisted = context.persist(result, comparison)
    assert persisted.ok, persisted.error
    facts, rendered = context.render(result, comparison, persisted)
    delivered = context.deliver(
        result, report=rendered, facts=facts, persisted=persisted, comparison=comparison, send=True
    )
    return context, delivered


def test_each_tenant_gets_its_own_report_and_the_operator_gets_all(tmp_path: Path) -> None:
    with running_smtp(PASSWORD, user=USER) as (inbox, port):
        _, delivered = run_night(tmp_path, port, 0)
        by_recipient = {envelope.rcpt_tos[0]: envelope for envelope in inbox.envelopes}
    assert set(by_recipient) == {"ops@example.com", "finance@acme.example", "ap@globex.example"}
    notes = "\n".join(delivered.notes)  # type: ignore[attr-defined]
    assert "email to tenant acme sent" in notes and "email to tenant globex sent" in notes

    def body(address: str) -> str:
        return (by_recipient[address].original_content or b"").decode("utf-8", "replace")

    everything = body("ops@example.com")
    assert all(invoice in everything for invoice in ("ACME-1", "GLOBEX-1", "INITECH-1"))
    acme = body("finance@acme.example")
    assert "ACME-1" in acme and "ACME-2" in acme
    assert "GLOBEX" not in acme and "INITECH" not in acme
    assert "2 mismatch of 3 invoices (tenant acme)" in acme  # the subject counts its own invoices
    globex = body("ap@globex.example")
    assert "GLOBEX-1" in globex and "ACME" not in globex and "INITECH" not in globex


def test_the_first_screen_holds_what_needs_a_person_and_acknowledged_ones_are_a_count(tmp_path: Path) -> None:
    with running_smtp(PASSWORD, user=USER) as (inbox, port):
        context, _ = run_night(tmp_path, port, 0)
        at = context.started_at + timedelta(hours=1)
        judged = acks_store.findings_with_acks(context.state_url, at, sla_days=7)
        acks_store.record(
            context.state_url,
            acks_store.targets(judged, finding_or_invoice="ACME-1"),
            acks_store.Acknowledgement(AckAction.ACK, "ana", "bank transfer in flight", at),
        )
        inbox.envelopes.clear()
        _, delivered = run_night(tmp_path, port, 1, max_new=2)
        operator = next(e for e in inbox.envelopes if e.rcpt_tos == ["ops@example.com"])
    from email import message_from_bytes, policy

    message = message_from_bytes(operator.original_content or b"", policy=policy.default)
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    # The first screen: right under the banner, before the run's facts and the counts.
    assert html.index("Needs a person") < html.index("Ledger range") < html.index("Invoices by class")
    attention = html[html.index("Needs a person") : html.index("Ledger range")]
    acknowledged = html[html.index("Acknowledged (") : html.index("Resolved since")]
    assert "Needs a person (3)" in attention
    assert "ACME-1" not in attention  # acknowledged: not on the first screen
    assert "Persisting, not acknowledged (3)" in attention
    assert attention.count("drift on ") == 2  # RECONCILE_EMAIL_MAX_NEW=2 itemised, the rest a line
    assert "1 more not itemised" in attention
    assert "Acknowledged (1)" in acknowledged and "ACME-1" not in acknowledged
    summary = delivered.summary  # type: ignore[attr-defined]
    assert (summary.unacknowledged, summary.acknowledged, summary.overdue) == (3, 1, 0)
    assert ExitCode.for_status(summary.status, needs_a_person=summary.needs_a_person) == ExitCode.FINDINGS
    report_file = (context.out_dir.parent / "night-1" / "report.html").read_text(encoding="utf-8")
    assert "Acknowledged by ana" in report_file and "bank transfer in flight" in report_file
    assert report_file.index("Invoices by class") < report_file.index("Needs a person")


def test_a_failed_run_emails_the_operator_only(tmp_path: Path) -> None:
    with running_smtp(PASSWORD, user=USER) as (inbox, port):
        context, _ = run_night(tmp_path, port, 0)
        inbox.envelopes.clear()
        summary = context.record_failure("the RPC is down", send=True)
        recipients = [envelope.rcpt_tos for envelope in inbox.envelopes]
    assert recipients == [["ops@example.com"]]
    assert any("email to tenant acme skipped: the run has no result" in note for note in summary.delivery)
