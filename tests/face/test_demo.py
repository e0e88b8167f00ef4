"""The demo: planted data of every class and flag, replayed history, and `reconcile-audit demo`."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from reconcile_audit.compute import db
from reconcile_audit.compute.schemas import CLASSES, FLAGS
from reconcile_audit.face import demo
from reconcile_audit.face.cli import app

# kind -> (class, flag that must be set or None)
EXPECTED = {
    "mismatch_db_over": ("mismatch", None),
    "mismatch_chain_over": ("mismatch", None),
    "mismatch_new_large": ("mismatch", None),
    "invoice_id_mismatch": ("mismatch", None),
    "missing_instance": ("missing_on_chain", None),
    "no_escrow": ("missing_on_chain", None),
    "unlinked": ("unlinked", None),
    "bad_checksum": ("error", None),
    "invalid_invoice_id": ("error", None),
    "hostile_invoice_id": ("error", None),
    "unknown_decimals": ("error", None),
    "archived": ("match", "archived"),
    "ttl_expiring": ("match", "ttl_expiring"),
    "duplicate_summary": ("match", "duplicate_summary"),
    "null_total": ("match", "null_total"),
    "no_summary": ("mismatch", "null_total"),
    "mapped_address": ("match", None),
    "wrong_token": ("mismatch", None),
    "balance_short": ("mismatch", None),
    "balance_surplus": ("match", "balance_surplus"),
    "balance_unread": ("match", "balance_unread"),
    "balance_archived": ("match", "balance_archived"),
    "balance_ttl_expiring": ("match", "balance_ttl_expiring"),
    "withdrawn": ("match", None),
    "cancelled_refunded": ("match", None),
    "record_only": ("match", None),
    "released_mismatch": ("mismatch", None),
    "db_stale": ("match", "db_stale"),
    "settled_during_run": ("match", "settled_during_run"),
    "changed_during_run": ("mismatch", "changed_during_run"),
}


def test_every_kind_is_planted_and_earlier_nights_differ():
    data = demo.build_dataset(60, history_nights=2)
    assert set(EXPECTED) == set(demo.PLANTED_KINDS)
    assert all(data.planted[kind] for kind in demo.PLANTED_KINDS)
    assert data.invoices.get_column("invoice_id").is_unique().all()
    tonight = {spec.contract_id: spec.funded_amount for spec in data.ledger_state(0).escrows}
    for night in (1, 2):
        earlier = data.ledger_state(night)
        assert earlier.latest_ledger == data.latest_ledger - night * demo.LEDGERS_PER_DAY
        changed = {s.contract_id for s in earlier.escrows if s.funded_amount != tonight[s.contract_id]}
        assert len(changed) >= 4  # a few plain drifts that night, plus tonight's new ones still matching
    mapping = json.loads(data.escrow_addr_by_invoice)["mappings"]
    assert [m["invoiceId"] for m in mapping] == list(data.planted["mapped_address"])


def test_same_seed_same_data():
    first, second = demo.build_dataset(55, seed=3), demo.build_dataset(55, seed=3)
    assert first.invoices.equals(second.invoices) and first.escrows == second.escrows


def test_refuses_too_few_invoices():
    with pytest.raises(ValueError, match="at least 50"):
        demo.build_dataset(10)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """`reconcile-audit demo` twice into the same folder: the second must replace, not pile up."""
    out = tmp_path_factory.mktemp("demo")
    args = ["demo", "--invoices", "120", "--history-runs", "2", "--output-dir", str(out)]
    env = {"DATABASE_URL": "", "ALERT_EMAIL_TO": "", "PUSHGATEWAY_URL": "", "RECONCILE_TENANT_ID": ""}
    results = [CliRunner().invoke(app, args, env=env, catch_exceptions=False) for _ in range(2)]
    return out, results


@pytest.mark.slow
def test_demo_exits_1_and_prints_the_report(demo_runs):
    out, results = demo_runs
    for result in results:
        assert result.exit_code == 1, result.output
        assert "report: " in result.output and "report.html" in result.output
    runs = sorted(p for p in out.iterdir() if p.is_dir() and p.name != "demo")
    assert len(runs) == 2


@pytest.mark.slow
def test_demo_findings_cover_every_class_and_flag(demo_runs):
    out, _ = demo_runs
    latest = sorted(p for p in out.iterdir() if p.is_dir() and p.name != "demo")[-1]
    summary = json.loads((latest / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "findings"
    assert all(summary["counts"][name] > 0 for name in CLASSES), summary["counts"]
    results = pl.read_parquet(latest / "results.parquet")
    assert set(results.get_column("flags").explode().drop_nulls()) == set(FLAGS)
    data = demo.build_dataset(120, history_nights=2)
    by_id = {row["invoice_id"]: row for row in results.iter_rows(named=True)}
    for kind, (klass, flag) in EXPECTED.items():
        for invoice_id in data.planted[kind]:
            row = by_id[invoice_id]
            assert row["class"] == klass, (kind, row["reason"])
            if flag:
                assert flag in row["flags"], (kind, row["flags"])
    mapped = by_id[data.planted["mapped_address"][0]]
    assert mapped["address_source"] == "escrow_addr_by_invoice"
    # The demo configures RECONCILE_CURRENCY_TOKENS: the escrow in the wrong asset is named by symbol.
    wrong = by_id[data.planted["wrong_token"][0]]
    assert wrong["reason_code"] == "token_mismatch"
    assert "funded in EURC (" in wrong["reason"] and "must be funded in USDC (" in wrong["reason"]
    assert "funding token checked for EURC, LGCY, USDC, WUSD" in (latest / "report.txt").read_text(
        encoding="utf-8"
    )
    # What the escrows hold: the short one ranks first in the report, the others hold what they must.
    short = by_id[data.planted["balance_short"][0]]
    assert short["reason_code"] == "balance_short" and " short of the " in short["reason"]
    assert by_id[data.planted["record_only"][0]]["custodial"] is False
    assert by_id[data.planted["withdrawn"][0]]["chain_balance_base_units"] == "0"
    assert by_id[data.planted["released_mismatch"][0]]["reason_code"] == "released_mismatch"
    assert "The database last synced at ledger" in by_id[data.planted["db_stale"][0]]["reason"]
    worst = (latest / "report.txt").read_text(encoding="utf-8").split("FINDINGS, WORST FIRST", 1)[1]
    assert worst.index(data.planted["balance_short"][0]) < worst.index(data.planted["mismatch_new_large"][0])
    # Out of scope: the deleted invoice's escrow and the repaid one's dust, outside the five classes.
    stranded = pl.read_parquet(latest / "stranded.parquet")
    assert (
        sorted(stranded.get_column("invoice_id").to_list())
        == sorted(data.stranded)
        == ["SKIP_001", "SKIP_003"]
    )
    assert summary["stranded"] == 2 and summary["total"] == 120
    assert not set(data.stranded) & set(by_id)
    text = (latest / "report.txt").read_text(encoding="utf-8")
    section = text.split("ESCROWS OUTSIDE THE AUDIT THAT STILL HOLD FUNDS (2)", 1)[1]
    assert "SKIP_003 (tenant " in section and "holds 0.37" in section
    assert "2 of 3 out-of-scope invoices' escrows still hold or owe funds" in text
    assert 'escrow_reconciliation_stranded_escrows{tenant="all"} 2.0' in (latest / "metrics.prom").read_text()


@pytest.mark.slow
def test_demo_history_shows_persisting_new_and_resolved(demo_runs):
    out, _ = demo_runs
    latest = sorted(p for p in out.iterdir() if p.is_dir() and p.name != "demo")[-1]
    results = pl.read_parquet(latest / "results.parquet")
    data = demo.build_dataset(120, history_nights=2)
    state = {row["invoice_id"]: row for row in results.iter_rows(named=True)}
    persisting = state[data.planted["mismatch_db_over"][0]]
    assert persisting["finding_state"] == "persisting" and persisting["age_days"] == 2
    assert state[data.planted["mismatch_chain_over"][0]]["finding_state"] == "new"
    text = (latest / "report.txt").read_text(encoding="utf-8").lower()
    assert "resolved" in text and "persisting" in text
    # The rebuilt demo database holds the replayed nights and tonight, once each.
    url = f"duckdb://{(out / 'demo' / demo.DEMO_DATABASE).resolve()}"
    with db.connect(url) as conn:
        keys = [row[0] for row in conn.rows("SELECT run_key FROM reconciliation_runs ORDER BY started_at")]
    assert len(keys) == 3 and len(set(keys)) == 3


def test_demo_database_is_replaced(tmp_path: Path):
    url = demo.fresh_duckdb(tmp_path / "demo.duckdb")
    demo.write_source_database(url, demo.build_dataset(50))
    again = demo.fresh_duckdb(tmp_path / "demo.duckdb")
    assert again == url and not (tmp_path / "demo.duckdb").exists()


@pytest.mark.slow
def test_demo_deliver_emails_the_report_with_the_environments_smtp(tmp_path, monkeypatch):
    from tests.services import running_smtp

    with running_smtp("demo-smtp-pw") as (inbox, port):
        for name, value in {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(port),
            "SMTP_USER": "reconcile",
            "SMTP_PASSWORD": "demo-smtp-pw",
            "SMTP_STARTTLS": "false",
            "ALERT_EMAIL_TO": "Finance Team <finance@example.test>",
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/not-used-by-the-demo",
        }.items():
            monkeypatch.setenv(name, value)
        outcome = demo.run_demo(invoices=60, output_dir=tmp_path, history_runs=0, deliver=True)
        assert outcome.exit_code == 1, outcome.message
        message = inbox.only_message()
    assert message["To"] == "Finance Team <finance@example.test>"
    assert [part.get_filename() for part in message.iter_attachments()] == ["findings.csv"]
    summary = json.loads(next(p for p in tmp_path.glob("*/summary.json")).read_text(encoding="utf-8"))
    assert any(note.startswith("email sent") for note in summary["delivery"])


@pytest.mark.slow
def test_demo_drifts_say_why_from_the_chain_and_one_stays_unexplained(demo_runs):
    out, _ = demo_runs
    latest = sorted(p for p in out.iterdir() if p.is_dir() and p.name != "demo")[-1]
    results = pl.read_parquet(latest / "results.parquet")
    data = demo.build_dataset(120, history_nights=2)
    why = {row["invoice_id"]: row["explanation"] for row in results.iter_rows(named=True)}
    missed_fund = why[data.planted["mismatch_chain_over"][0]]
    assert "explains 12.34 USDC of 12.34 USDC" in missed_fund
    assert "fund of 12.34 USDC in tx " in missed_fund and "but the database marks it failed" in missed_fund
    unfund, failed_fund = data.planted["mismatch_db_over"][:2]
    assert "unfund of " in why[unfund] and "but the database marks it pending" in why[unfund]
    assert "failed on chain at ledger" in why[failed_fund] and "marks it completed" in why[failed_fund]
    assert "refund of " in why[data.planted["released_mismatch"][0]]
    assert "withdraw of " in why[data.planted["balance_short"][0]]
    assert why[data.planted["mismatch_new_large"][0]].startswith("unexplained: no escrow event since")
    # Set-up faults are not looked up on chain, and matches carry nothing.
    assert why[data.planted["wrong_token"][0]] is None
    assert (
        results.filter(pl.col("class") == "match").get_column("explanation").null_count()
        == results.filter(pl.col("class") == "match").height
    )
    events = pl.read_parquet(latest / "drift_events.parquet")
    assert set(events.get_column("event")) >= {
        "escrow_funded",
        "escrow_unfunded",
        "investor_refunded_evt",
        "sme_withdrew",
        "fund",
    }
    summary = json.loads((latest / "summary.json").read_text(encoding="utf-8"))
    assert summary["explained"]["explained"] >= 5 and summary["explained"]["unexplained"] >= 1
    text = (latest / "report.txt").read_text(encoding="utf-8")
    assert "Why: " in text and "| ledger " in text
    assert (
        'escrow_reconciliation_explained_findings{outcome="explained",tenant="all"}'
        in (latest / "metrics.prom").read_text()
    )
